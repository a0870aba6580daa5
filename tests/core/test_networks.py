"""Shapes, parameter names and batch-norm modes of the few-shot networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import networks
from core.losses import classification_loss, split_variables


def test_omniglot_conv4_shapes_and_impl_independent_params():
    x = jnp.zeros((5, 28, 28, 1))
    a = networks.omniglot_conv4(5, conv_impl="xla")
    b = networks.omniglot_conv4(5, conv_impl="im2col")
    va, vb = a.init(jax.random.PRNGKey(0), x), b.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(va) == jax.tree.structure(vb)
    assert va["params"]["Conv2D_0"]["kernel"].shape == (3, 3, 1, 64)
    assert va["params"]["Dense_0"]["kernel"].shape == (64, 5)  # mean-pooled head
    xr = jnp.asarray(np.random.default_rng(0).random((5, 28, 28, 1)), jnp.float32)
    np.testing.assert_allclose(a.apply(va, xr), b.apply(va, xr), rtol=1e-4, atol=1e-4)
    flat = networks.omniglot_conv4(5, spatial_pool="flatten")
    assert flat.init(jax.random.PRNGKey(0), x)["params"]["Dense_0"]["kernel"].shape == (256, 5)


def test_miniimagenet_conv4_shapes():
    model = networks.miniimagenet_conv4(5)
    x = jnp.zeros((2, 84, 84, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert variables["params"]["Dense_0"]["kernel"].shape == (5 * 5 * 32, 5)
    assert model.apply(variables, x).shape == (2, 5)


def test_transductive_bn_uses_batch_statistics_at_test_time():
    model = networks.omniglot_conv4(3, bn_mode="transductive")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((4, 28, 28, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert set(variables) == {"params"}
    # With batch statistics, an example's output depends on the rest of the batch.
    alone = model.apply(variables, x[:2], train=False)
    together = model.apply(variables, x, train=False)[:2]
    assert not np.allclose(alone, together)


def test_running_bn_updates_statistics_in_training_and_uses_them_at_test():
    model = networks.omniglot_conv4(3, bn_mode="running")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((4, 28, 28, 1)) * 3 + 1, jnp.float32)
    params, state = split_variables(model.init(jax.random.PRNGKey(0), x))
    assert set(state) == {"batch_stats"}
    loss_fn = classification_loss(model)
    y = jnp.array([0, 1, 2, 0])
    _, (new_state, _) = loss_fn(params, state, x, y, True)
    before = state["batch_stats"]["BatchNorm_0"]["mean"]
    after = new_state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(before, after)
    # At test time an example's output no longer depends on the rest of the batch.
    variables = {"params": params, **new_state}
    alone = model.apply(variables, x[:2], train=False)
    together = model.apply(variables, x, train=False)[:2]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)


def test_unknown_bn_mode_is_rejected():
    with pytest.raises(ValueError, match="batch-norm mode"):
        networks.omniglot_conv4(3, bn_mode="ghost").init(jax.random.PRNGKey(0),
                                                          jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize("fast_variance", [True, False])
def test_batch_norm_matches_flax_in_value_and_gradient(fast_variance):
    import flax.linen as nn

    rng = np.random.default_rng(1)
    # Channels with different offsets and spreads, as after a convolution.
    x = jnp.asarray(rng.normal(size=(6, 5, 5, 4)) * [0.5, 1.0, 2.0, 3.0] + [0.0, 1.0, -4.0, 8.0],
                    jnp.float32)
    ours = networks.BatchNorm(fast_variance=fast_variance)
    theirs = nn.BatchNorm(use_running_average=False, use_fast_variance=fast_variance,
                          epsilon=1e-5)
    v_ours = ours.init(jax.random.PRNGKey(0), x, True)
    v_theirs = theirs.init(jax.random.PRNGKey(0), x)
    params = {"scale": jnp.array([1.0, 0.5, 2.0, -1.0]), "bias": jnp.array([0.0, 0.1, -0.2, 3.0])}
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss_ours(p, x):
        return jnp.sum(weights * jnp.tanh(ours.apply({"params": p}, x, True)))

    def loss_theirs(p, x):
        y, _ = theirs.apply({"params": p, "batch_stats": v_theirs["batch_stats"]}, x,
                            mutable=["batch_stats"])
        return jnp.sum(weights * jnp.tanh(y))

    assert jax.tree.structure(v_ours["params"]) == jax.tree.structure(params)
    np.testing.assert_allclose(loss_ours(params, x), loss_theirs(params, x), rtol=1e-5)
    g_ours = jax.grad(loss_ours, argnums=(0, 1))(params, x)
    g_theirs = jax.grad(loss_theirs, argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_fast_variance_of_a_constant_channel_is_clipped_at_zero():
    # For a large constant channel E[x^2] - E[x]^2 rounds to -2.75 in float32;
    # unclipped, rsqrt would give NaN. Clipped, the output is what the
    # two-pass variance gives (both differ from 0 by the rounding of the mean).
    x = jnp.full((8, 3, 3, 2), 1234.567, jnp.float32)
    fast, exact = networks.BatchNorm(fast_variance=True), networks.BatchNorm(fast_variance=False)
    variables = fast.init(jax.random.PRNGKey(0), x, True)
    y = fast.apply(variables, x, True)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, exact.apply(variables, x, True), atol=0.01)
