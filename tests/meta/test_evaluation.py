"""Tests of the evaluation protocol's statistics and batching."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from core.datasets.episodes import Episode
from meta import evaluation


def test_summarize_uses_196_std_over_sqrt_n_per_step():
    rng = np.random.default_rng(0)
    values = rng.random((600, 4))
    out = evaluation.summarize(values, scale=100.0)
    np.testing.assert_allclose(out["per_step"], values.mean(0) * 100)
    np.testing.assert_allclose(out["per_step_ci95"], 1.96 * values.std(0) * 100 / math.sqrt(600))
    assert out["mean"] == out["per_step"][-1] and out["ci95"] == out["per_step_ci95"][-1]
    assert out["num_tasks"] == 600


def test_summarize_reports_diverged_tasks_and_robust_median():
    values = np.ones((5, 3))
    values[2, 2] = np.inf
    values[3, 2] = np.nan
    out = evaluation.summarize(values)
    assert out["per_step_diverged"] == [0, 0, 2]
    assert out["per_step_median"] == [1.0, 1.0, 1.0]
    assert not math.isfinite(out["per_step"][2])


def test_evaluate_draws_fixed_batches_and_drops_the_surplus():
    calls = []

    def batch_fn(index):
        calls.append(index)
        x = jnp.full((4, 1), float(index))
        return Episode(x, x, x, x)

    def eval_fn(params, state, tasks):
        # metric = batch index for every task, 3 inner steps.
        v = jnp.repeat(tasks.support_x, 3, axis=1)
        return {"mse": v, "loss": v}

    out = evaluation.evaluate(eval_fn, None, {}, batch_fn, num_tasks=10, batch_size=4,
                              metric="mse")
    assert calls == [0, 1, 2]
    # tasks 0-3 from batch 0, 4-7 from batch 1, 8-9 from batch 2: mean (0*4+1*4+2*2)/10
    assert out["per_step"] == pytest.approx([0.8, 0.8, 0.8])
    assert out["metric"] == "mse" and out["unit"] == ""
