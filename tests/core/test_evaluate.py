"""Tests for the supervised evaluator: exact example-weighted means, padding excluded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import mesh as mesh_lib
from core.datasets.arrays import Arrays
from core.datasets.arrays import eval_batches
from core.evaluate import evaluate
from core.evaluate import masked_mean
from core.errors import ConfigError

N, BATCH = 23, 4  # 6 batches, the last with 3 real examples and 1 padding row.


def _data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N, 5), dtype=np.uint8)
    return Arrays(x, {"label": rng.integers(0, 3, size=N).astype(np.int32),
                      "value": rng.normal(size=N).astype(np.float32)})


@jax.jit
def _eval_step(weights, batch):
    """Per-example metrics of a fixed linear model, one of them inf on zero rows."""
    logits = batch["x"] @ weights
    sq_error = (logits[:, 0] - batch["y"]["value"]) ** 2
    return {"accuracy": (jnp.argmax(logits, -1) == batch["y"]["label"]).astype(jnp.float32),
            "sq_error": sq_error,
            "inv_norm": 1.0 / jnp.sum(batch["x"], -1)}


def test_means_are_exact_over_unpadded_examples():
    data = _data()
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    result = evaluate(_eval_step, weights, eval_batches(data, BATCH, mesh))

    x = data.x.astype(np.float64) / 255
    logits = x @ np.asarray(weights, np.float64)
    expected = {"accuracy": np.mean(np.argmax(logits, -1) == data.y["label"]),
                "sq_error": np.mean((logits[:, 0] - data.y["value"]) ** 2),
                "inv_norm": np.mean(1 / x.sum(-1))}
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert isinstance(result[name], float)
        np.testing.assert_allclose(result[name], value, rtol=1e-5, err_msg=name)


def test_empty_split_is_a_config_error():
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    empty = eval_batches(_data().take([]), BATCH, mesh)
    with pytest.raises(ConfigError, match="empty split"):
        evaluate(_eval_step, jnp.zeros((5, 3)), empty)


def test_masked_mean():
    assert masked_mean([1.0, 2.0, np.nan, 100.0], [1, 1, 0, 0]) == 1.5
    assert masked_mean([1.0, 3.0], [1.0, 3.0]) == 2.5
    with pytest.raises(ConfigError, match="zero examples"):
        masked_mean([1.0], [0.0])


def test_wrong_value_shape_is_refused():
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    step = jax.jit(lambda state, batch: {"loss": jnp.sum(batch["x"])})
    with pytest.raises(ValueError, match="one value per example"):
        evaluate(step, None, eval_batches(_data(), BATCH, mesh))
