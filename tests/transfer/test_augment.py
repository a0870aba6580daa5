"""Tests of `transfer.augment`: pure jittable pipelines, keys of (seed, step), the wrapped
step, and the pipeline transferred by name from a source run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import experiment
from core import train_state
from core.errors import ConfigError, DataError
from tests.transfer.transfer_fixtures import make_config, train
from transfer import augment, config as config_lib, runner

IMAGES = jax.random.uniform(jax.random.PRNGKey(3), (4, 28, 28, 1))
KEY = jax.random.PRNGKey(7)


@pytest.mark.parametrize("name", list(augment.PIPELINES))
def test_every_pipeline_is_pure_jittable_and_keeps_shape_and_range(name):
    fn = jax.jit(augment.pipeline(name))
    out = fn(KEY, IMAGES)
    assert out.shape == IMAGES.shape and out.dtype == IMAGES.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    np.testing.assert_array_equal(out, fn(KEY, IMAGES))
    other = fn(jax.random.PRNGKey(8), IMAGES)
    if name == "none":
        np.testing.assert_array_equal(out, IMAGES)
    else:
        assert not np.array_equal(out, other)


def test_shift_moves_whole_pixels_by_at_most_the_maximum():
    dots = np.zeros((32, 12, 12, 1), np.float32)
    dots[:, 6, 6, 0] = 1.0
    out = np.asarray(augment.pipeline("shift")(KEY, jnp.asarray(dots)))
    assert np.all(out.reshape(32, -1).sum(-1) == 1.0)
    rows, cols = np.nonzero(out[..., 0].reshape(32, 12, 12))[1:]
    assert np.all(np.abs(rows - 6) <= augment.MAX_SHIFT) and np.all(
        np.abs(cols - 6) <= augment.MAX_SHIFT)
    assert len(set(zip(rows, cols))) > 1


def test_rotate_keeps_a_constant_image_and_the_centre():
    flat = jnp.full((3, 29, 29, 1), 0.25)
    np.testing.assert_allclose(augment.pipeline("rotate")(KEY, flat), flat, atol=1e-6)
    dot = np.zeros((3, 29, 29, 1), np.float32)
    dot[:, 14, 14, 0] = 1.0
    out = augment.pipeline("rotate")(KEY, jnp.asarray(dot))
    np.testing.assert_allclose(out[:, 14, 14, 0], 1.0, atol=1e-5)


def _state(step):
    return train_state.TrainState(step=jnp.int32(step), params={}, model_state={}, opt_state=(),
                                  extra={})


def test_the_wrapped_step_augments_by_seed_and_step_only():
    seen = lambda state, batch: (state, batch)
    assert augment.wrap_step(seen, "none", 0) is seen
    wrapped = jax.jit(augment.wrap_step(seen, "shift", 0, ("x", "target_x")))
    batch = {"x": IMAGES, "target_x": IMAGES, "y": {"label": jnp.zeros(4, jnp.int32)}}
    views = wrapped(_state(5), batch)[1]
    again = wrapped(_state(5), batch)[1]
    jax.tree.map(np.testing.assert_array_equal, views, again)
    assert not np.array_equal(views["x"], views["target_x"])
    assert not np.array_equal(views["x"], wrapped(_state(6), batch)[1]["x"])
    other_seed = jax.jit(augment.wrap_step(seen, "shift", 1))(_state(5), batch)[1]
    assert not np.array_equal(views["x"], other_seed["x"])
    np.testing.assert_array_equal(views["y"]["label"], batch["y"]["label"])
    assert not np.array_equal(augment.step_key(0, 5), jax.random.fold_in(
        jax.random.PRNGKey(0), 5)), "augmentation keys must not be the dropout keys"


def _run_dir(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_source_resolves_to_the_recorded_pipeline(tmp_path):
    run = _run_dir(tmp_path, augment="rotate")
    assert augment.resolve("source", ("source", run)) == (
        "rotate", {"pipeline": "rotate", "from": "source", "run": run})
    chained = _run_dir(tmp_path, augment="source", resolved_augment="noise")
    assert augment.resolve("source", ("teacher", chained))[0] == "noise"
    assert augment.resolve("shift", None) == ("shift", {"pipeline": "shift", "from": "flag"})


@pytest.mark.parametrize("config, origin, error, message", [
    ({"network": "mlp"}, True, ConfigError, "records no augmentation pipeline"),
    ({"augment": "cutout"}, True, DataError, "records the pipeline 'cutout'"),
    (None, True, DataError, "has no config.json"),
    (None, False, ConfigError, "reads no run directory"),
])
def test_a_source_without_a_usable_pipeline_is_one_clear_error(tmp_path, config, origin, error,
                                                              message):
    if config is not None:
        _run_dir(tmp_path, **config)
    with pytest.raises(error, match=message):
        augment.resolve("source", ("source", str(tmp_path)) if origin else None)


def test_a_resumed_run_cannot_switch_its_resolved_values(tmp_path):
    _run_dir(tmp_path, resolved_augment="shift", num_steps=4)
    config_lib.check_resumed(str(tmp_path), {"resolved_augment": "shift", "num_steps": 4})
    config_lib.check_resumed(str(tmp_path / "new"), {"resolved_augment": "rotate"})
    with pytest.raises(ConfigError, match="resolved_augment: 'shift' -> 'rotate'"):
        config_lib.check_resumed(str(tmp_path), {"resolved_augment": "rotate"})


def test_a_target_run_reuses_the_source_runs_pipeline_and_records_it(tmp_path, mnist_dir,
                                                                    source):
    config = make_config(tmp_path / "run", mnist_dir, strategy="keep_blocks", keep_blocks=2,
                         source_workdir=source, classes=(5, 6, 7, 8, 9), train_per_class=4,
                         augment="source")
    results = train(config)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (stored["augment"], stored["resolved_augment"]) == ("source", "shift")
    record = json.loads((tmp_path / "run" / runner.RECORD_FILE).read_text())
    assert record["augmentation"] == {"pipeline": "shift", "from": "source", "run": source}
    assert record["source"]["config"]["augment"] == "shift"
    assert 0 <= results["test"]["accuracy"] <= 1


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": "feature_extraction", "augment": "shift"}, "features cached once"),
    ({"strategy": "scratch", "source_workdir": None, "augment": "source"},
     "needs --source_workdir"),
    ({"strategy": "finetune", "augment": "flip"}, "unknown --augment='flip'"),
])
def test_bad_augmentation_flags_give_one_clear_error(tmp_path, mnist_dir, source, overrides,
                                                     message):
    options = dict(dict(source_workdir=source, classes=(5, 6, 7, 8, 9)), **overrides)
    with pytest.raises(ConfigError, match=message):
        experiment.train_and_evaluate(make_config(tmp_path / "run", mnist_dir, **options),
                                      runner.build)
