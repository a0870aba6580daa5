"""Tests for core.run_dir."""

import json

import numpy as np
import pytest

from core import run_dir
from core.errors import ConfigError, DataError


def test_collect_versions_has_expected_keys():
    versions = run_dir.collect_versions()
    for key in ('python', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
                'platform', 'device_kind', 'device_count', 'process_count', 'hostname',
                'glibc_tunables'):
        assert key in versions, key
    assert versions['jax'] and versions['device_count'] >= 1
    json.dumps(versions)


def test_write_run_config_writes_json(tmp_path):
    config = {'lr': np.float32(0.5), 'steps': 10, 'model': {'width': 64}, 'path': tmp_path}
    run_dir.write_run_config(tmp_path, config, {'jax': '0.10.2'})
    stored = json.loads((tmp_path / 'config.json').read_text())
    assert stored == {'lr': 0.5, 'steps': 10, 'model': {'width': 64}, 'path': str(tmp_path)}
    assert json.loads((tmp_path / 'versions.json').read_text()) == {'jax': '0.10.2'}
    assert run_dir.read_run_config(tmp_path) == stored
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_resume_with_same_or_allowed_changes(tmp_path):
    config = {'lr': 0.1, 'num_steps': 100, 'model': {'width': 64}}
    run_dir.write_run_config(tmp_path, config, {})
    run_dir.write_run_config(tmp_path, dict(config), {})
    run_dir.write_run_config(tmp_path, {**config, 'num_steps': 200}, {},
                             allow_changed=['num_steps'])
    assert run_dir.read_run_config(tmp_path)['num_steps'] == 200


def test_resume_with_changed_config_raises_listing_keys(tmp_path):
    config = {'lr': 0.1, 'num_steps': 100, 'model': {'width': 64}}
    run_dir.write_run_config(tmp_path, config, {})
    changed = {'lr': 0.2, 'num_steps': 300, 'model': {'width': 32}, 'new_flag': True}
    with pytest.raises(ConfigError) as info:
        run_dir.write_run_config(tmp_path, changed, {}, allow_changed=('num_steps',))
    message = str(info.value)
    assert 'lr' in message and 'model.width' in message and 'new_flag' in message
    assert 'num_steps' not in message
    # The stored config is untouched.
    assert run_dir.read_run_config(tmp_path) == config


def test_allow_changed_prefix_covers_nested_keys(tmp_path):
    run_dir.write_run_config(tmp_path, {'eval': {'every': 10, 'n': 5}}, {})
    run_dir.write_run_config(tmp_path, {'eval': {'every': 20, 'n': 6}}, {},
                             allow_changed={'eval'})


def test_a_key_added_since_the_run_started_compares_with_its_value_before(tmp_path):
    run_dir.write_run_config(tmp_path, {'lr': 0.1, 'net': 'conv4'}, {})  # written by old code
    before = {'resize': 'lanczos', 'pool': lambda stored: 'mean' if stored['net'] == 'conv4'
              else 'flatten'}
    with pytest.raises(ConfigError, match=r"resize: 'lanczos' -> 'binary'"):
        run_dir.write_run_config(tmp_path, {'lr': 0.1, 'net': 'conv4', 'resize': 'binary',
                                            'pool': 'mean'}, {}, values_before=before)
    with pytest.raises(ConfigError, match=r"pool: 'mean' -> 'flatten'"):
        run_dir.write_run_config(tmp_path, {'lr': 0.1, 'net': 'conv4', 'resize': 'lanczos',
                                            'pool': 'flatten'}, {}, values_before=before)
    with pytest.raises(ConfigError, match=r"resize: '<absent>' -> 'lanczos'"):
        run_dir.write_run_config(tmp_path, {'lr': 0.1, 'net': 'conv4', 'resize': 'lanczos',
                                            'pool': 'mean'}, {})  # no value before: refused
    new = {'lr': 0.1, 'net': 'conv4', 'resize': 'lanczos', 'pool': 'mean'}
    run_dir.write_run_config(tmp_path, new, {}, values_before=before)
    assert run_dir.read_run_config(tmp_path) == new


def test_corrupt_config_raises_data_error(tmp_path):
    (tmp_path / 'config.json').write_text('{"lr": ')
    with pytest.raises(DataError):
        run_dir.write_run_config(tmp_path, {'lr': 1}, {})


def test_write_results_atomic_and_readable(tmp_path):
    run_dir.write_results(tmp_path, {'accuracy': np.float64(0.75), 'ci95': 0.01})
    assert run_dir.read_results(tmp_path) == {'accuracy': 0.75, 'ci95': 0.01}
    run_dir.write_results(tmp_path, {'accuracy': 0.8})
    assert run_dir.read_results(tmp_path) == {'accuracy': 0.8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']


def test_unserializable_value_raises_type_error(tmp_path):
    with pytest.raises(TypeError):
        run_dir.write_results(tmp_path, {'f': object()})
    assert not list(tmp_path.iterdir())
