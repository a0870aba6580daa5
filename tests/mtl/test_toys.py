"""The CAGrad / Nash-MTL / FAMO two-task toy: the Pareto set and who reaches it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl import loss_weighting
from mtl import methods as methods_lib
from mtl import toys
from mtl.methods import Method

OPTIONS = {"weights": (), "dwa_temperature": 2.0, "weighting_lr": 1e-3, "gradnorm_alpha": 1.5,
           "famo_lr": 0.025, "famo_gamma": 0.0, "cagrad_c": 0.5, "mgda_normalization": "none"}


def _method(name):
    return methods_lib.make_method(name, num_tasks=2, steps_per_epoch=1, task_indexed=False,
                                   options=OPTIONS)


def test_the_pareto_set_is_where_the_reference_says():
    # On x2 = -8.3552 the two gradients are opposed along x1 for -7 < x1 < 7.
    for x1 in (-5.0, 0.0, 5.0):
        jac = jax.jacrev(toys.toy_losses)(jnp.array([x1, toys.PARETO_X2]))
        assert jac[0, 0] * jac[1, 0] < 0
        assert abs(float(jac[0, 1])) < 0.05 and abs(float(jac[1, 1])) < 0.05
    # Each end of the set is one task's optimum; the two ends mirror each other.
    ends = [toys.toy_losses(jnp.array([x1, toys.PARETO_X2])) for x1 in (7.0, -7.0)]
    np.testing.assert_allclose(ends[0], ends[1][::-1], rtol=1e-6)
    assert float(ends[0][0]) < -19.9 and float(ends[0][0]) < float(ends[1][0])


def _famo():
    # FAMO needs L - L_min > 0; the toy's minima are about -21 (x scale for L1), as in FAMO's code.
    return Method("famo", weighting=loss_weighting.make_loss_weighting(
        "famo", num_tasks=2, gamma=0.0, min_losses=[-21 * 0.1, -21]))


@pytest.mark.parametrize("start", [toys.STARTS[0], toys.STARTS[2]])
@pytest.mark.parametrize("name", ["mgda", "nash_mtl", "famo"])
def test_methods_that_should_reach_the_pareto_set_do(name, start):
    # Nash-MTL / FAMO trainers: scale 0.1, Adam 1e-3, 35,000 steps, published starts.
    method = _famo() if name == "famo" else _method(name)
    end = toys.descend(method, start, steps=35000, scale=0.1)["x"]
    assert toys.on_pareto_set(end), (name, start, end)


def test_equal_weighting_stalls_off_the_pareto_set_from_9_9():
    # From (9, 9) equal weighting is still at x2 ≈ 4 after 35,000 steps, far from the set.
    end = toys.descend(_method("equal"), toys.STARTS[2], steps=35000, scale=0.1)["x"]
    assert not toys.on_pareto_set(end), end
    assert float(end[1]) > 0


def test_gradnorm_toy_moves_weight_to_the_small_scale_task():
    # Chen et al. (2018) §4, σ = (1, 100): equal weighting lets the σ = 1 task's loss ratio
    # stall above its start while GradNorm (toy α = 0.12) raises that task's weight, Σ w = 2.
    data = toys.gradnorm_toy_data((1.0, 100.0), num_examples=500)
    options = {"weights": (), "dwa_temperature": 2.0, "weighting_lr": 1e-3,
               "gradnorm_alpha": 0.12, "famo_lr": 0.025, "famo_gamma": 1e-3, "cagrad_c": 0.4,
               "mgda_normalization": "none"}
    runs = {}
    for name in ("equal", "gradnorm"):
        method = methods_lib.make_method(name, num_tasks=2, steps_per_epoch=1,
                                         task_indexed=False, options=options)
        runs[name] = toys.train_gradnorm_toy(method, data, steps=150)
    assert runs["equal"]["loss_ratios"][-1, 0] > 1.0
    assert runs["equal"]["loss_ratios"][-1, 1] < 1.0
    weights = runs["gradnorm"]["weights"]
    assert weights[-1, 0] > 1.2 > 0.8 > weights[-1, 1]
    np.testing.assert_allclose(weights.sum(axis=1), 2.0, rtol=1e-5)
