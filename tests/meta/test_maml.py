"""Tests of MAML's inner loop and meta-gradient against closed forms and finite differences."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core import networks
from core import train_state as train_state_lib
from core.datasets.episodes import Episode
from core.losses import regression_loss, split_variables
from meta import maml


def _quadratic_loss(params, model_state, x, y, train):
    """½ (θ − c)ᵀ M (θ − c) with M = x, c = y: gradient and Hessian are known."""
    d = params["theta"] - y
    loss = 0.5 * d @ x @ d
    return loss, (model_state, {"loss": loss, "mse": loss})


def _quadratic_task(seed, n=4):
    rng = np.random.default_rng(seed)
    def spd():
        m = rng.normal(size=(n, n))
        return m @ m.T / n + np.eye(n)
    return Episode(support_x=jnp.asarray(spd()), support_y=jnp.asarray(rng.normal(size=n)),
                   query_x=jnp.asarray(spd()), query_y=jnp.asarray(rng.normal(size=n)))


def test_first_order_differs_exactly_by_hessian_term():
    with jax.enable_x64(True):
        task = _quadratic_task(0)
        tasks = jax.tree.map(lambda a: a[None], task)
        theta = jnp.asarray(np.random.default_rng(1).normal(size=4))
        alpha = 0.1
        cfg2 = maml.MamlConfig(inner_lr=alpha)
        cfg1 = maml.MamlConfig(inner_lr=alpha, first_order=True)
        (_, _), g2 = maml.meta_gradient(_quadratic_loss, {"theta": theta}, {}, tasks, cfg2)
        (_, _), g1 = maml.meta_gradient(_quadratic_loss, {"theta": theta}, {}, tasks, cfg1)
        a_mat, a, b_mat, b = task.support_x, task.support_y, task.query_x, task.query_y
        adapted = theta - alpha * a_mat @ (theta - a)
        query_grad = b_mat @ (adapted - b)
        # Closed forms: FOMAML = ∇L_q(θ'); MAML = (I − α ∇²L_s) ∇L_q(θ').
        np.testing.assert_allclose(g1["theta"], query_grad, rtol=1e-12)
        np.testing.assert_allclose(g2["theta"], query_grad - alpha * a_mat @ query_grad,
                                   rtol=1e-12)
        hessian_term = g2["theta"] - g1["theta"]
        np.testing.assert_allclose(hessian_term, -alpha * a_mat @ query_grad, rtol=1e-10)
        assert np.linalg.norm(hessian_term) > 1e-2  # the term is really there


def _tiny_mlp_problem(seed=0):
    model = networks.MLP(hidden=(8, 8), outputs=1)
    loss_fn = regression_loss(model)
    rng = np.random.default_rng(seed)
    tasks = Episode(support_x=jnp.asarray(rng.uniform(-2, 2, (3, 5, 1))),
                    support_y=jnp.asarray(rng.normal(size=(3, 5, 1))),
                    query_x=jnp.asarray(rng.uniform(-2, 2, (3, 6, 1))),
                    query_y=jnp.asarray(rng.normal(size=(3, 6, 1))))
    params, state = split_variables(model.init(jax.random.PRNGKey(seed), tasks.support_x[0]))
    return loss_fn, params, state, tasks


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_second_order_gradient_matches_central_differences(inner_steps):
    """Tolerance: |analytic − numeric| <= 1e-6·(1 + |numeric|) in float64 with h = 1e-5."""
    with jax.enable_x64(True):
        loss_fn, params, state, tasks = _tiny_mlp_problem()
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        cfg = maml.MamlConfig(inner_lr=0.05, inner_steps=inner_steps)
        (_, _), grads = maml.meta_gradient(loss_fn, params, state, tasks, cfg)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        f = jax.jit(lambda v: maml.meta_loss(loss_fn, unravel(v), state, tasks, cfg)[0])
        h = 1e-5
        eye = np.eye(flat.size)
        numeric = np.array([(f(flat + h * e) - f(flat - h * e)) / (2 * h) for e in eye])
        analytic = np.asarray(jax.flatten_util.ravel_pytree(grads)[0])
        np.testing.assert_allclose(analytic, numeric, atol=1e-6, rtol=1e-6)
        # And the first-order gradient is measurably different on this problem.
        fo = maml.MamlConfig(inner_lr=0.05, inner_steps=inner_steps, first_order=True)
        (_, _), g1 = maml.meta_gradient(loss_fn, params, state, tasks, fo)
        assert np.abs(np.asarray(jax.flatten_util.ravel_pytree(g1)[0]) - numeric).max() > 1e-4


def test_inner_loop_trajectory_is_sgd():
    loss_fn, params, state, tasks = _tiny_mlp_problem()
    x, y = tasks.support_x[0], tasks.support_y[0]
    traj = maml.inner_loop(loss_fn, params, state, x, y, inner_lr=0.1, steps=2)
    assert len(traj) == 3
    g0 = jax.grad(lambda p: loss_fn(p, state, x, y, True)[0])(params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, g0)
    chex.assert_trees_all_close(traj[1], expected, rtol=1e-6)
    assert float(loss_fn(traj[2], state, x, y, True)[0]) < float(loss_fn(params, state, x, y, True)[0])


@pytest.mark.parametrize("variant", [dict(remat=True), dict(scan=True),
                                     dict(scan=True, remat=True),
                                     dict(scan=True, first_order=True)])
def test_remat_and_scan_give_the_same_meta_gradient(variant):
    loss_fn, params, state, tasks = _tiny_mlp_problem()
    first_order = variant.get("first_order", False)
    plain = maml.MamlConfig(inner_lr=0.05, inner_steps=3, first_order=first_order)
    other = maml.MamlConfig(inner_lr=0.05, inner_steps=3, **variant)
    grad = jax.jit(lambda p, cfg: maml.meta_gradient(loss_fn, p, state, tasks, cfg)[1],
                   static_argnums=1)
    chex.assert_trees_all_close(grad(params, plain), grad(params, other), rtol=1e-5, atol=1e-7)


def test_meta_train_step_reduces_meta_loss_and_counts_steps():
    loss_fn, params, state, tasks = _tiny_mlp_problem()
    optimizer = maml.outer_optimizer(1e-2)
    cfg = maml.MamlConfig(inner_lr=0.05)
    train_state = train_state_lib.create(params, state, optimizer)
    step = jax.jit(maml.make_meta_train_step(loss_fn, optimizer, cfg))
    before = float(maml.meta_loss(loss_fn, params, state, tasks, cfg)[0])
    for _ in range(100):
        train_state, metrics = step(train_state, tasks)
    after = float(maml.meta_loss(loss_fn, train_state.params, state, tasks, cfg)[0])
    assert int(train_state.step) == 100
    assert after < 0.75 * before
    assert set(metrics) >= {"loss", "mse", "grad_norm"}


def test_gradient_clipping_clips_each_entry():
    optimizer = maml.outer_optimizer(1.0, clip_value=10.0)
    params = {"w": jnp.zeros(3)}
    opt_state = optimizer.init(params)
    clipped = optax.clip(10.0).update({"w": jnp.array([100.0, -50.0, 3.0])}, None)[0]
    np.testing.assert_array_equal(clipped["w"], [10.0, -10.0, 3.0])
    updates, _ = optimizer.update({"w": jnp.array([100.0, -50.0, 3.0])}, opt_state, params)
    assert np.all(np.isfinite(updates["w"]))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="inner_steps"):
        maml.MamlConfig(inner_lr=0.1, inner_steps=0)
    with pytest.raises(ValueError, match="inner_lr"):
        maml.MamlConfig(inner_lr=0.0)


def _xla_temp_bytes(inner_steps, remat):
    model = networks.MLP(hidden=(64, 64), outputs=1)
    rng = np.random.default_rng(0)
    draw = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    tasks = Episode(draw(4, 512, 1), draw(4, 512, 1), draw(4, 512, 1), draw(4, 512, 1))
    loss_fn = regression_loss(model)
    params, state = split_variables(model.init(jax.random.PRNGKey(0), tasks.support_x[0]))
    cfg = maml.MamlConfig(inner_lr=0.01, inner_steps=inner_steps, remat=remat)
    compiled = jax.jit(lambda p: maml.meta_gradient(loss_fn, p, state, tasks, cfg)[1]
                       ).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_keeps_memory_flat_in_inner_steps(xla_optimizations):
    """XLA's buffers for the second-order meta-gradient: flat with remat, growing without."""
    with_remat = [_xla_temp_bytes(k, remat=True) for k in (1, 8)]
    without = [_xla_temp_bytes(k, remat=False) for k in (1, 8)]
    assert with_remat[1] <= 1.2 * with_remat[0], with_remat
    assert without[1] >= 2 * without[0], without
