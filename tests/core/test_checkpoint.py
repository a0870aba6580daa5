"""Tests for core.checkpoint."""

import logging
import os
import pathlib
import subprocess
import sys
import textwrap

from absl import logging as absl_logging
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core import checkpoint
from core.errors import ConfigError, DataError

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _state(seed: int):
    key = jax.random.PRNGKey(seed)
    params = {'dense': {'w': jax.random.normal(key, (3, 4)), 'b': jnp.zeros(4)},
              'scale': jnp.float32(1.0) / 3}
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda p: p * 0.1 + seed, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    return {'params': params, 'opt_state': opt_state, 'step': 7 + seed, 'lr': 0.1 * (seed + 1),
            'rng': jax.random.fold_in(key, 3), 'typed_key': jax.random.key(seed),
            'np_scalar': np.float32(1 / 7), 'np_array': np.arange(5, dtype=np.int64) * seed}


def _assert_same(expected, actual):
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
        assert type(e) is type(a), (type(e), type(a))
    # Typed keys: compare their raw data.
    unwrap = lambda x: jax.random.key_data(x) if jnp.issubdtype(  # noqa: E731
        getattr(x, 'dtype', np.float32), jax.dtypes.prng_key) else x
    chex.assert_trees_all_equal(jax.tree.map(unwrap, expected), jax.tree.map(unwrap, actual),
                                strict=True)


def test_round_trip_is_bit_exact(tmp_path):
    state = _state(1)
    with checkpoint.Checkpointer(tmp_path / 'ckpt') as ckpt:
        assert ckpt.latest_step() is None
        ckpt.save(10, state)
    with checkpoint.Checkpointer(tmp_path / 'ckpt') as ckpt:
        assert ckpt.latest_step() == 10
        restored = ckpt.restore(_state(0))
    _assert_same(state, restored)
    assert isinstance(restored['opt_state'][1][0], optax.ScaleByAdamState)


def test_max_to_keep_and_explicit_step(tmp_path):
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (1, 2, 3, 5):
            ckpt.save(step, _state(step), wait=step != 5)
        assert ckpt.latest_step() == 5
        assert ckpt.all_steps() == [3, 5]
        _assert_same(_state(3), ckpt.restore(_state(0), step=3))
        _assert_same(_state(5), ckpt.restore(_state(0)))
        with pytest.raises(DataError):
            ckpt.restore(_state(0), step=1)


def test_saving_an_earlier_step_discards_later_ones(tmp_path):
    with checkpoint.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, _state(step))
        ckpt.save(2, _state(9))
        assert ckpt.all_steps() == [1, 2]
        _assert_same(_state(9), ckpt.restore(_state(0)))


def test_leftover_tmp_dir_is_ignored_and_cleaned(tmp_path):
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _state(1))
    leftover = tmp_path / '2.orbax-checkpoint-tmp-1234567'
    (leftover / 'default').mkdir(parents=True)
    (leftover / 'default' / 'junk').write_bytes(b'half written')
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        _assert_same(_state(1), ckpt.restore(_state(0)))
        ckpt.save(2, _state(2))
        assert ckpt.latest_step() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['1', '2']


def test_sibling_checkpointers(tmp_path):
    with checkpoint.Checkpointer(tmp_path / 'checkpoints') as regular, \
            checkpoint.Checkpointer(tmp_path / 'best', max_to_keep=1) as best:
        for step in (1, 2, 3):
            regular.save(step, _state(step))
            if step != 2:
                best.save(step, _state(10 + step))
        assert regular.all_steps() == [2, 3]
        assert best.all_steps() == [3]
        _assert_same(_state(13), best.restore(_state(0)))
        _assert_same(_state(3), regular.restore(_state(0)))


def test_restore_errors(tmp_path):
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(DataError):
            ckpt.restore(_state(0))
        ckpt.save(1, {'w': jnp.ones((2, 3))})
        with pytest.raises(ConfigError):
            ckpt.restore({'w': jnp.ones((4, 3))})
        with pytest.raises(ConfigError):
            ckpt.restore({'v': jnp.ones((2, 3))})


def test_orbax_info_logs_are_hidden(tmp_path):
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    absl_logger = logging.getLogger('absl')
    old_verbosity = absl_logging.get_verbosity()
    absl_logger.addHandler(handler)
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        with checkpoint.Checkpointer(tmp_path) as ckpt:
            ckpt.save(1, {'w': jnp.ones(3)})
            ckpt.restore({'w': jnp.ones(3)})
        absl_logging.info('a message of the caller')
    finally:
        absl_logger.removeHandler(handler)
        absl_logging.set_verbosity(old_verbosity)
    messages = [r.getMessage() for r in records]
    assert messages == ['a message of the caller'], messages[:5]


_SHARDED_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from core import checkpoint
    directory, mode = sys.argv[1], sys.argv[2]
    assert jax.device_count() == 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ('data',))
    sharded = NamedSharding(mesh, P('data'))
    replicated = NamedSharding(mesh, P())
    def make(seed):
        w = jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3) / (seed + 7)
        return {'w': jax.device_put(w, sharded), 'b': jax.device_put(w[0] * seed, replicated)}
    ckpt = checkpoint.Checkpointer(directory)
    if mode == 'save':
        ckpt.save(1, make(1))
        big = {'x': jax.device_put(jnp.ones((2, 2_000_000)), sharded)}
        ckpt.save(2, big, wait=False)
        while not any('tmp' in name for name in os.listdir(directory)):
            pass
        os.kill(os.getpid(), signal.SIGKILL)  # Killed mid-save.
    template = make(0)
    restored = ckpt.restore(template, step=1)
    for name in ('w', 'b'):
        assert restored[name].sharding == template[name].sharding, name
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(make(1)[name]))
    # Restore onto a different sharding (sharded -> replicated).
    other = {k: jax.device_put(v, replicated) for k, v in template.items()}
    assert ckpt.restore(other, step=1)['w'].sharding == replicated
    assert ckpt.all_steps() == [1]
    ckpt.close()
    print('OK')
''')


def test_sharded_state_and_kill_during_save(tmp_path):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
               JAX_PLATFORMS='cpu', PYTHONPATH=str(_REPO))
    script = tmp_path / 'script.py'
    script.write_text(_SHARDED_SCRIPT)
    directory = tmp_path / 'ckpt'
    saved = subprocess.run([sys.executable, str(script), str(directory), 'save'], env=env,
                           capture_output=True, text=True, timeout=120)
    assert saved.returncode == -9, saved.stderr[-2000:]
    names = sorted(p.name for p in directory.iterdir())
    assert names[0] == '1' and names[1].startswith('2.orbax-checkpoint-tmp'), names
    restored = subprocess.run([sys.executable, str(script), str(directory), 'restore'],
                              env=env, capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert 'OK' in restored.stdout
    assert not [p for p in directory.iterdir() if 'tmp' in p.name]
