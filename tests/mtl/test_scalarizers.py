"""Tests for the multi-task loss weightings (mtl.loss_weighting and its modules)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core.checkpoint import Checkpointer
from core.errors import ConfigError
from mtl import loss_weighting as lw

K = 3
LOSSES = np.array([0.5, 2.0, 4.0], np.float32)
NORMS = np.array([1.0, 3.0, 0.5], np.float32)
HYPER = {"static": {"weights": [1.0, 0.5, 2.0]}, "dwa": {"steps_per_epoch": 2}}


def _kwargs(step) -> dict:
    """The key and aux of step `step` (call inside jit: it builds jax values)."""
    return {"key": lw.weighting_key(0, step),
            "aux": {lw.TASK_GRAD_NORMS: NORMS * (1.0 + 0.1 * step)}}


@pytest.mark.parametrize("name", sorted(lw.LOSS_WEIGHTINGS))
def test_every_weighting_jits_and_weights_are_the_loss_gradient(name):
    weighting = lw.make_loss_weighting(name, K, **HYPER.get(name, {}))
    state = weighting.init(K)

    @jax.jit
    def check(losses, state):
        kwargs = _kwargs(0)
        total, weights, new_state = weighting.update(losses, state, **kwargs)
        grad = jax.grad(lambda l: weighting.update(l, state, **kwargs)[0])(losses)
        no_grad = jax.grad(lambda l: jnp.sum(weighting.update(l, state, **kwargs)[1]))(losses)
        return total, weights, new_state, grad, no_grad, weighting.observe(losses / 2, new_state)

    total, weights, new_state, grad, no_grad, observed = check(LOSSES, state)
    assert total.shape == () and weights.shape == (K,)
    assert np.isfinite(total) and np.all(np.isfinite(weights))
    # weights[k] = d total / d L_k, and they carry no gradient themselves.
    np.testing.assert_allclose(weights, grad, rtol=1e-6)
    np.testing.assert_array_equal(no_grad, 0.0)
    # The state keeps its structure, shapes and dtypes (jit/donation/checkpoint safe).
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(observed, state)
    if lw.OBSERVE not in weighting.requires:
        chex.assert_trees_all_equal(observed, new_state)


def test_closed_forms_of_the_simple_weightings():
    def run(name, **hyper):
        weighting = lw.make_loss_weighting(name, **hyper)
        total, weights, _ = jax.jit(weighting.update)(LOSSES, weighting.init(K))
        return float(total), np.asarray(weights)

    total, weights = run("equal")
    np.testing.assert_allclose((total, *weights), (6.5 / 3, 1 / 3, 1 / 3, 1 / 3), rtol=1e-6)
    total, weights = run("sum")
    np.testing.assert_allclose((total, *weights), (6.5, 1, 1, 1), rtol=1e-6)
    total, weights = run("scale_invariant")
    np.testing.assert_allclose((total, *weights), (np.log(4.0), 2.0, 0.5, 0.25), rtol=1e-6)
    total, weights = run("static", weights=[1.0, 0.5, 2.0])
    np.testing.assert_allclose((total, *weights), (9.5, 1.0, 0.5, 2.0), rtol=1e-6)


def test_gls_is_the_geometric_mean():
    losses = np.array([0.3, 1.7, 5.0, 0.02], np.float32)
    weighting = lw.gls()
    total, weights, _ = jax.jit(weighting.update)(losses, weighting.init(4))
    expected = np.prod(losses.astype(np.float64)) ** (1 / 4)
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    np.testing.assert_allclose(weights, expected / (4 * losses), rtol=1e-5)


@pytest.mark.parametrize("weights", [[1.0, -0.1, 1.0], [1.0, float("nan"), 1.0], [], [0, 0, 0],
                                     "abc", [[1.0, 2.0]]])
def test_static_rejects_bad_weights(weights):
    with pytest.raises(ConfigError):
        lw.make_loss_weighting("static", weights=weights)


def test_static_rejects_a_wrong_number_of_weights():
    with pytest.raises(ConfigError, match="2 static loss weights given for 3 tasks"):
        lw.make_loss_weighting("static", num_tasks=3, weights=[1.0, 2.0])
    weighting = lw.static([1.0, 2.0])
    with pytest.raises(ConfigError):
        weighting.init(3)
    with pytest.raises(ConfigError):
        jax.jit(weighting.update)(LOSSES, weighting.init(2))


def test_registry_errors_name_the_known_choices():
    with pytest.raises(ConfigError, match="known: dwa, equal, famo, gls, gradnorm, rlw, "
                                          "scale_invariant, static, sum, uw"):
        lw.make_loss_weighting("nash_mtl")
    with pytest.raises(ConfigError, match="it accepts: alpha, lr, optimizer"):
        lw.make_loss_weighting("gradnorm", alhpa=1.0)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        lw.make_loss_weighting("dwa")
    for name, bad in [("dwa", {"steps_per_epoch": 0}), ("dwa", {"steps_per_epoch": 2,
                                                               "temperature": 0.0}),
                      ("uw", {"lr": -1.0}), ("gradnorm", {"alpha": -1.0}),
                      ("famo", {"w_lr": 0.0}), ("famo", {"gamma": -1.0})]:
        with pytest.raises(ConfigError):
            lw.make_loss_weighting(name, **bad)
    with pytest.raises(ConfigError, match="min_losses has 2 values for 3 tasks"):
        lw.make_loss_weighting("famo", num_tasks=3, min_losses=[0.0, 0.0])


def test_missing_key_or_grad_norms_is_reported():
    rlw, gradnorm = lw.rlw(), lw.gradnorm()
    assert rlw.requires == {lw.KEY} and gradnorm.requires == {lw.TASK_GRAD_NORMS}
    with pytest.raises(ValueError, match="needs a PRNG key"):
        rlw.update(LOSSES, rlw.init(K))
    with pytest.raises(ValueError, match="task_grad_norms"):
        gradnorm.update(LOSSES, gradnorm.init(K))
    with pytest.raises(ValueError, match="initialised for 3"):
        gradnorm.update(LOSSES[:2], gradnorm.init(K), aux={lw.TASK_GRAD_NORMS: NORMS[:2]})


def test_rlw_weights_sum_to_one_and_depend_only_on_the_key():
    weighting = lw.rlw()

    @jax.jit
    def weights_at(losses, seed, step):
        key = lw.weighting_key(seed, step)
        return weighting.update(losses, weighting.init(5), key=key)[1], jax.random.normal(key, (5,))

    losses = np.arange(1.0, 6.0, dtype=np.float32)
    weights, z = weights_at(losses, 7, 12)
    np.testing.assert_allclose(np.sum(weights), 1.0, rtol=1e-6)
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights, np.exp(z) / np.sum(np.exp(z)), rtol=1e-5)
    chex.assert_trees_all_equal(weights, weights_at(losses ** 2 + 3, 7, 12)[0])
    assert not np.allclose(weights, weights_at(losses, 7, 13)[0])
    assert not np.allclose(weights, weights_at(losses, 8, 12)[0])


def test_uw_with_constant_losses_drives_log_variances_to_log_losses():
    losses = np.array([0.05, 1.0, 20.0], np.float32)

    def final_log_vars(weighting, steps):
        def body(state, _):
            return weighting.update(losses, state)[2], None
        return jax.jit(lambda s: jax.lax.scan(body, s, length=steps)[0])(
            weighting.init(K)).log_vars

    np.testing.assert_allclose(final_log_vars(lw.uw(lr=0.05), 1500), np.log(losses), atol=0.05)
    np.testing.assert_allclose(final_log_vars(lw.uw(optimizer=optax.sgd(0.5)), 200),
                               np.log(losses), atol=1e-4)


def test_dwa_weights_are_one_for_two_epochs_then_the_softmax_of_loss_ratios():
    spe, temperature = 3, 2.0
    weighting = lw.dwa(steps_per_epoch=spe, temperature=temperature)
    update = jax.jit(weighting.update)
    rng = np.random.default_rng(0)
    history = rng.uniform(0.5, 3.0, size=(5 * spe, K)).astype(np.float32)
    state = weighting.init(K)
    for step, losses in enumerate(history):
        _, weights, state = update(losses, state)
        epoch = step // spe
        if epoch < 2:
            np.testing.assert_array_equal(weights, 1.0)
            continue
        means = history.reshape(5, spe, K).mean(axis=1)
        ratio = means[epoch - 1] / means[epoch - 2]
        expected = K * np.exp(ratio / temperature) / np.sum(np.exp(ratio / temperature))
        np.testing.assert_allclose(weights, expected, rtol=1e-5)
    assert int(state.count) == 5 * spe


def _tanh_toy(rng, sigmas, dim_in=8, dim_out=4, n=128):
    """A small version of the GradNorm toy: f_i(x) = σ_i tanh((B + ε_i) x)."""
    b = 10.0 * rng.standard_normal((dim_out, dim_in))
    eps = 3.5 * rng.standard_normal((len(sigmas), dim_out, dim_in))
    x = rng.standard_normal((n, dim_in))
    y = np.stack([s * np.tanh(x @ (b + e).T) for s, e in zip(sigmas, eps)])
    return x.astype(np.float32), y.astype(np.float32)


def test_gradnorm_moves_weight_to_the_low_sigma_task_and_keeps_their_sum():
    sigmas = (1.0, 100.0)
    rng = np.random.default_rng(0)
    x, y = _tanh_toy(rng, sigmas)

    def glorot(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2 / sum(shape[-2:]))).astype(np.float32)

    params = {"w1": glorot(8, 16), "w2": glorot(16, 16), "heads": glorot(2, 16, 4)}

    def task_losses(params, w2):
        h = jax.nn.relu(jax.nn.relu(x @ params["w1"]) @ w2)
        return jnp.mean((jnp.einsum("nh,thd->tnd", h, params["heads"]) - y) ** 2, axis=(1, 2))

    weighting = lw.gradnorm(alpha=0.12, lr=0.01)
    model_opt = optax.adam(1e-3)

    def step(carry, _):
        params, opt_state, wstate = carry
        _, norms = lw.task_gradient_norms(lambda w2: task_losses(params, w2), params["w2"])

        def loss_fn(params):
            total, weights, new_wstate = weighting.update(
                task_losses(params, params["w2"]), wstate, aux={lw.TASK_GRAD_NORMS: norms})
            return total, (weights, new_wstate)

        (_, (weights, wstate)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = model_opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, wstate), weights

    carry = (params, model_opt.init(params), weighting.init(2))
    (_, _, wstate), history = jax.jit(lambda c: jax.lax.scan(step, c, length=100))(carry)
    np.testing.assert_allclose(np.sum(history, axis=1), 2.0, rtol=1e-5)
    np.testing.assert_allclose(np.sum(wstate.weights), 2.0, rtol=1e-5)
    np.testing.assert_array_equal(history[0], 1.0)
    assert history[-1, 0] > 1.5 > 0.5 > history[-1, 1]
    assert np.all(np.diff(history[:50, 0]) > 0)        # w_1 grows steadily at first


def test_gradnorm_step_is_the_paper_update():
    lr, alpha = 0.1, 1.5
    weighting = lw.gradnorm(alpha=alpha, optimizer=optax.sgd(lr))
    update = jax.jit(lambda l, s, g: weighting.update(l, s, aux={lw.TASK_GRAD_NORMS: g}))
    losses = np.array([[1.0, 4.0, 0.5], [0.6, 3.8, 0.5]], np.float32)
    norms = np.array([[2.0, 0.5, 1.0], [1.5, 0.6, 1.0]], np.float32)
    state, w = weighting.init(K), np.ones(K)
    for step in range(2):
        total, weights, state = update(losses[step], state, norms[step])
        np.testing.assert_allclose(weights, w, rtol=1e-6)
        np.testing.assert_allclose(total, np.dot(w, losses[step]), rtol=1e-6)
        ratio = losses[step] / losses[0]
        target = np.mean(w * norms[step]) * (ratio / ratio.mean()) ** alpha
        w = np.maximum(w - lr * np.sign(w * norms[step] - target) * norms[step], 0)
        w = K * w / w.sum()
        np.testing.assert_allclose(state.weights, w, rtol=1e-5)
    np.testing.assert_array_equal(state.initial_losses, losses[0])


def test_task_gradient_norms_match_the_jacobian():
    w = {"a": np.arange(6.0, dtype=np.float32).reshape(2, 3) / 5,
         "b": np.array([0.3, -0.2], np.float32)}

    def losses_fn(w):
        v = jnp.concatenate([w["a"].ravel(), w["b"]])
        return jnp.stack([jnp.sum(v ** 2), jnp.sum(jnp.sin(v)), v[0] * v[-1]])

    (losses, norms), jac, direct = jax.jit(
        lambda w: (lw.task_gradient_norms(losses_fn, w), jax.jacrev(losses_fn)(w),
                   losses_fn(w)))(w)
    flat = np.concatenate([np.reshape(jac["a"], (3, -1)), jac["b"]], axis=1)
    np.testing.assert_allclose(losses, direct, rtol=1e-6)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=1e-5)


def _famo_reference(before, after, w_lr=0.025, gamma=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """§2.5.3 in float64 numpy: weights used at each step and the logits after it."""
    w = np.zeros(before.shape[1])
    m, v = np.zeros_like(w), np.zeros_like(w)
    used = []
    for t, (prev, curr) in enumerate(zip(before, after), start=1):
        z = np.exp(w) / np.sum(np.exp(w))
        d = prev + 1e-8
        used.append(z / d / np.sum(z / d))
        delta = np.log(prev + 1e-8) - np.log(curr + 1e-8)
        g = z * (delta - np.dot(z, delta)) + gamma * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        w = w - w_lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return np.array(used), w


def test_famo_observe_is_the_exact_reference_update():
    rng = np.random.default_rng(3)
    before = rng.uniform(0.5, 2.0, size=(6, 4))
    after = before * rng.uniform(0.7, 1.1, size=before.shape)
    weighting = lw.famo()
    update, observe = jax.jit(weighting.update), jax.jit(weighting.observe)
    state = weighting.init(4)
    used = []
    for prev, curr in zip(before, after):
        _, weights, state = update(prev.astype(np.float32), state)
        state = observe(curr.astype(np.float32), state)
        used.append(weights)
    expected_used, expected_logits = _famo_reference(before, after)
    np.testing.assert_allclose(np.array(used), expected_used, rtol=1e-5)
    np.testing.assert_allclose(state.logits, expected_logits, atol=1e-6)


def _famo_regression(exact: bool, num_tasks=10, n=200, dim=20, steps=100):
    """§2.5.3 with fewer tasks and points: Linear(dim, K) fit to noise with Adam."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = rng.standard_normal((n, num_tasks)).astype(np.float32)
    bound = 1 / np.sqrt(dim)     # torch.nn.Linear's initialisation
    params = {"w": rng.uniform(-bound, bound, (dim, num_tasks)).astype(np.float32),
              "b": rng.uniform(-bound, bound, (num_tasks,)).astype(np.float32)}
    weighting, model_opt = lw.famo(), optax.adam(1e-2)

    def task_losses(params):
        return jnp.mean((y - x @ params["w"] - params["b"]) ** 2, axis=0)

    def step(carry, _):
        params, opt_state, wstate = carry

        def loss_fn(params):
            losses = task_losses(params)
            total, weights, new_wstate = weighting.update(losses, wstate)
            return total, (losses, weights, new_wstate)

        (_, (losses, weights, wstate)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = model_opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if exact:
            wstate = weighting.observe(task_losses(params), wstate)
        return (params, opt_state, wstate), (losses, weights, jax.nn.softmax(wstate.logits))

    carry = (params, model_opt.init(params), weighting.init(num_tasks))
    (params, _, _), history = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))(carry)
    return task_losses(params), history


def test_famo_reduces_every_task_loss_and_keeps_weights_a_softmax():
    final, (losses, weights, z) = _famo_regression(exact=False)
    assert np.all(final < 0.97 * losses[0])
    np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sum(z, axis=1), 1.0, rtol=1e-5)
    assert np.all(weights > 0) and np.all(z > 0)
    assert np.ptp(np.log(z[-1])) > 1e-3     # the logits did move
    # Full batch: the one-step-lagged update is the exact one.
    final_exact, (_, weights_exact, z_exact) = _famo_regression(exact=True)
    np.testing.assert_allclose(z_exact[:-1], z[1:], rtol=1e-4)
    np.testing.assert_allclose(weights_exact, weights, rtol=1e-4)
    np.testing.assert_allclose(final_exact, final, rtol=1e-4)


STATEFUL = {
    "uw": ("uw", {"lr": 0.1}, False),
    "dwa": ("dwa", {"steps_per_epoch": 2}, False),
    "gradnorm": ("gradnorm", {"lr": 0.1}, False),
    "famo_lagged": ("famo", {}, False),
    "famo_exact": ("famo", {}, True),
}


@pytest.mark.parametrize("config", sorted(STATEFUL))
def test_checkpoint_resume_is_bit_identical(config, tmp_path):
    name, hyper, exact = STATEFUL[config]
    chex.clear_trace_counter()
    weighting = lw.make_loss_weighting(name, K, **hyper)
    rng = np.random.default_rng(1)
    losses = rng.uniform(0.2, 3.0, size=(8, K)).astype(np.float32)
    after = losses * 0.9

    @jax.jit
    @chex.assert_max_traces(n=1)      # a restored state must not retrace the step
    def step(state, losses, after, t):
        out = weighting.update(losses, state, **_kwargs(t))
        state = weighting.observe(after, out[2]) if exact else out[2]
        return state, out

    def run(state, steps):
        outputs = []
        for t in steps:
            state, out = step(state, losses[t], after[t], np.int32(t))
            outputs.append(out)
        return state, outputs

    straight, outputs = run(weighting.init(K), range(8))
    half, first = run(weighting.init(K), range(4))
    with Checkpointer(tmp_path / config) as checkpoints:
        checkpoints.save(4, half)
    with Checkpointer(tmp_path / config) as checkpoints:
        restored = checkpoints.restore(weighting.init(K))
    chex.assert_trees_all_equal(restored, half, strict=True)
    resumed, second = run(restored, range(4, 8))
    chex.assert_trees_all_equal(resumed, straight, strict=True)
    chex.assert_trees_all_equal(first + second, outputs, strict=True)
    assert not np.array_equal(jax.tree.leaves(straight)[0], jax.tree.leaves(half)[0])
