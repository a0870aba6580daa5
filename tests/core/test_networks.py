"""Shapes, parameter paths, batch-norm modes, dropout, trunks and heads of the networks."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from core import networks
from core.losses import classification_loss, split_variables


def test_omniglot_conv4_shapes_and_impl_independent_params():
    x = jnp.zeros((5, 28, 28, 1))
    a = networks.omniglot_conv4(5, conv_impl="xla")
    b = networks.omniglot_conv4(5, conv_impl="im2col")
    va, vb = a.init(jax.random.PRNGKey(0), x), b.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(va) == jax.tree.structure(vb)
    assert va["params"]["trunk"]["block0"]["conv"]["kernel"].shape == (3, 3, 1, 64)
    assert va["params"]["head"]["kernel"].shape == (64, 5)  # mean-pooled head
    xr = jnp.asarray(np.random.default_rng(0).random((5, 28, 28, 1)), jnp.float32)
    np.testing.assert_allclose(a.apply(va, xr), b.apply(va, xr), rtol=1e-4, atol=1e-4)
    flat = networks.omniglot_conv4(5, spatial_pool="flatten")
    assert flat.init(jax.random.PRNGKey(0), x)["params"]["head"]["kernel"].shape == (256, 5)


def test_miniimagenet_conv4_shapes():
    model = networks.miniimagenet_conv4(5)
    x = jnp.zeros((2, 84, 84, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert variables["params"]["head"]["kernel"].shape == (5 * 5 * 32, 5)
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
    before = state["batch_stats"]["trunk"]["block0"]["bn"]["mean"]
    after = new_state["batch_stats"]["trunk"]["block0"]["bn"]["mean"]
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


def _paths(tree):
    return set(traverse_util.flatten_dict(tree, sep="/"))


def _random(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


def test_conv4_parameter_paths_are_the_named_ones():
    model = networks.Conv4(outputs=3, filters=4, bn_mode="running")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)))
    blocks = [f"trunk/block{i}" for i in range(4)]
    assert _paths(variables["params"]) == {
        *(f"{b}/conv/{leaf}" for b in blocks for leaf in ("kernel", "bias")),
        *(f"{b}/bn/{leaf}" for b in blocks for leaf in ("scale", "bias")),
        "head/kernel", "head/bias"}
    assert _paths(variables["batch_stats"]) == {f"{b}/bn/{s}" for b in blocks
                                                for s in ("mean", "var")}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_parameter_paths_are_the_named_ones(batch_norm):
    model = networks.MLP(hidden=(8, 6, 4), outputs=2, batch_norm=batch_norm)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((3, 2, 2)))["params"]
    expected = {f"trunk/dense{i}/{leaf}" for i in range(3) for leaf in ("kernel", "bias")}
    if batch_norm:
        expected |= {f"trunk/bn{i}/{leaf}" for i in range(3) for leaf in ("scale", "bias")}
    assert _paths(params) == expected | {"head/kernel", "head/bias"}
    assert params["trunk"]["dense0"]["kernel"].shape == (4, 8)  # inputs are flattened
    assert params["head"]["kernel"].shape == (4, 2)


@pytest.mark.parametrize("spatial_pool", ["mean", "flatten"])
def test_conv4_is_its_trunk_and_a_dense_head(spatial_pool):
    options = dict(filters=4, spatial_pool=spatial_pool, bn_mode="running")
    model = networks.Conv4(outputs=3, **options)
    x = _random((4, 16, 16, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    params, stats = variables["params"], variables["batch_stats"]
    trunk = networks.Conv4Trunk(**options)
    for train in (True, False):
        features = trunk.apply({"params": params["trunk"], "batch_stats": stats["trunk"]}, x,
                               train=train)
        by_hand = features @ params["head"]["kernel"] + params["head"]["bias"]
        np.testing.assert_allclose(model.apply(variables, x, train=train), by_hand,
                                   rtol=1e-6, atol=1e-6)


def test_mlp_is_its_trunk_and_a_dense_head():
    options = dict(hidden=(8, 6), batch_norm=True)
    model = networks.MLP(outputs=2, **options)
    x = _random((5, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    features = networks.MLPTrunk(**options).apply({"params": params["trunk"]}, x)
    assert features.shape == (5, 6)
    by_hand = features @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), by_hand, rtol=1e-6, atol=1e-6)


def test_lenet_trunk_shapes_and_conv_impls_agree():
    x = _random((2, 28, 28, 1))
    a, b = networks.LeNetTrunk(conv_impl="xla"), networks.LeNetTrunk(conv_impl="im2col")
    variables = a.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(b.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(variables)
    shapes = {path: leaf.shape
              for path, leaf in traverse_util.flatten_dict(variables["params"], sep="/").items()}
    assert shapes == {"conv0/kernel": (5, 5, 1, 6), "conv0/bias": (6,),
                      "conv1/kernel": (5, 5, 6, 16), "conv1/bias": (16,),
                      "dense0/kernel": (7 * 7 * 16, 120), "dense0/bias": (120,),
                      "dense1/kernel": (120, 84), "dense1/bias": (84,)}
    ya = a.apply(variables, x)
    assert ya.shape == (2, 84) and np.abs(ya).max() > 0
    np.testing.assert_allclose(b.apply(variables, x), ya, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="two convolutions"):
        networks.LeNetTrunk(filters=(6,)).init(jax.random.PRNGKey(0), x)


def test_heads_give_one_output_per_task_with_its_width():
    heads = networks.Heads({"digit": 10, "angle": 1})
    features = _random((3, 5))
    variables = heads.init(jax.random.PRNGKey(0), features)
    assert _paths(variables["params"]) == {"digit/kernel", "digit/bias",
                                           "angle/kernel", "angle/bias"}
    out = heads.apply(variables, features)
    assert set(out) == {"digit", "angle"}
    assert out["digit"].shape == (3, 10) and out["angle"].shape == (3, 1)
    angle = variables["params"]["angle"]
    np.testing.assert_allclose(out["angle"], features @ angle["kernel"] + angle["bias"],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("outputs, match", [
    ({"": 2}, "task name"), ({"a/b": 2}, "task name"), ({"1st": 2}, "task name"),
    ({3: 2}, "task name"), ({}, "at least one task"), ({"digit": 0}, "positive integer"),
    ({"digit": 2.0}, "positive integer")])
def test_bad_task_names_and_widths_are_rejected(outputs, match):
    with pytest.raises(ValueError, match=match):
        networks.Heads(outputs)
    with pytest.raises(ValueError, match=match):
        networks.TrunkAndHeads(networks.MLPTrunk(), outputs)


def test_trunk_and_heads_train_a_classification_and_a_regression_head_on_one_trunk():
    tasks = {"digit": 10, "angle": 1}
    model = networks.TrunkAndHeads(networks.LeNetTrunk(), tasks)
    assert hash(model) == hash(networks.TrunkAndHeads(networks.LeNetTrunk(), dict(tasks)))
    x = _random((4, 28, 28, 1))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert set(params) == {"trunk", "heads"}
    assert _paths(params["heads"]) == {"digit/kernel", "digit/bias", "angle/kernel", "angle/bias"}
    assert _paths(params["trunk"]) == _paths(
        networks.LeNetTrunk().init(jax.random.PRNGKey(0), x)["params"])
    out = model.apply({"params": params}, x)
    assert out["digit"].shape == (4, 10) and out["angle"].shape == (4, 1)
    features = networks.LeNetTrunk().apply({"params": params["trunk"]}, x)
    chex.assert_trees_all_close(
        out, networks.Heads(tasks).apply({"params": params["heads"]}, features), rtol=1e-6)

    labels, angles = jnp.array([0, 3, 7, 9]), _random((4, 1), seed=1)

    def task_losses(p):
        o = model.apply({"params": p}, x)
        return (optax.softmax_cross_entropy_with_integer_labels(o["digit"], labels).mean(),
                jnp.mean(jnp.square(o["angle"] - angles)))

    g_digit = jax.grad(lambda p: task_losses(p)[0])(params)
    g_angle = jax.grad(lambda p: task_losses(p)[1])(params)
    # Each head learns from its own task only; the shared trunk from both.
    assert np.any(g_digit["heads"]["digit"]["kernel"])
    assert not np.any(g_digit["heads"]["angle"]["kernel"])
    assert np.any(g_angle["heads"]["angle"]["kernel"])
    assert not np.any(g_angle["heads"]["digit"]["kernel"])
    assert np.any(g_digit["trunk"]["conv0"]["kernel"])
    assert np.any(g_angle["trunk"]["conv0"]["kernel"])


_DROPOUT_NETWORKS = {
    "conv4_trunk": (lambda rate: networks.Conv4Trunk(filters=4, dropout_rate=rate),
                    (4, 16, 16, 1)),
    "mlp_trunk": (lambda rate: networks.MLPTrunk(hidden=(16, 16), dropout_rate=rate), (4, 3)),
    "lenet_trunk": (lambda rate: networks.LeNetTrunk(dropout_rate=rate), (2, 28, 28, 1)),
    "conv4": (lambda rate: networks.Conv4(outputs=3, filters=4, dropout_rate=rate),
              (4, 16, 16, 1)),
    "mlp": (lambda rate: networks.MLP(hidden=(16, 16), outputs=2, dropout_rate=rate), (4, 3)),
}


@pytest.mark.parametrize("name", sorted(_DROPOUT_NETWORKS))
def test_dropout_is_off_at_rate_0_and_at_test_time_and_follows_its_key(name):
    make, shape = _DROPOUT_NETWORKS[name]
    x = _random(shape)
    plain, dropped = make(0.0), make(0.5)
    variables = plain.init(jax.random.PRNGKey(0), x)
    # Dropout has no parameters: the same variables serve both networks.
    assert (jax.tree.structure(dropped.init(jax.random.PRNGKey(0), x, train=False))
            == jax.tree.structure(variables))
    reference = plain.apply(variables, x, train=False)
    # Rate 0 adds no dropout layer: training needs no 'dropout' key and is deterministic.
    np.testing.assert_array_equal(plain.apply(variables, x, train=True), reference)
    np.testing.assert_array_equal(dropped.apply(variables, x, train=False), reference)
    key = jax.random.PRNGKey(1)
    y = dropped.apply(variables, x, train=True, rngs={"dropout": key})
    assert not np.allclose(y, reference)
    np.testing.assert_array_equal(dropped.apply(variables, x, train=True, rngs={"dropout": key}),
                                  y)
    other = dropped.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(other, y)
    with pytest.raises(flax.errors.InvalidRngError):
        dropped.apply(variables, x, train=True)


def test_sinusoid_mlp_starts_from_truncated_normal_kernels_and_zero_biases():
    params = networks.sinusoid_mlp().init(jax.random.PRNGKey(0), jnp.zeros((5, 1)))["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    assert set(flat) == {f"{layer}/{leaf}" for layer in ("trunk/dense0", "trunk/dense1", "head")
                         for leaf in ("kernel", "bias")}
    for path, leaf in flat.items():
        if path.endswith("bias"):
            np.testing.assert_array_equal(leaf, 0.0, err_msg=path)
        else:
            # A normal of standard deviation 0.01 truncated at 2 standard
            # deviations: |w| <= 0.02 and a standard deviation of about 0.0088
            # (lecun_normal would give 1 for the first layer, 0.16 for the others).
            assert np.abs(leaf).max() <= 0.02 + 1e-7, path
            assert 0.005 < np.std(leaf) < 0.012, path


def _numpy_variables(model, *args, seed=0, **kwargs):
    """Variables of `model` from NumPy draws: no PRNG kernels to compile (slow on a busy CPU)."""
    shapes = jax.eval_shape(lambda key: model.init(key, *args, **kwargs), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1),
                              s.dtype), shapes)


def test_heads_with_hidden_layers_are_mlp_heads_named_by_task():
    features = _random((3, 6))
    heads = networks.Heads({"left": 10, "right": 4}, hidden=[5])
    assert hash(heads) == hash(networks.Heads({"left": 10, "right": 4}, hidden=(5,)))
    params = _numpy_variables(heads, features)["params"]
    shapes = {path: leaf.shape
              for path, leaf in traverse_util.flatten_dict(params, sep="/").items()}
    assert shapes == {"left/dense0/kernel": (6, 5), "left/dense0/bias": (5,),
                      "left/out/kernel": (5, 10), "left/out/bias": (10,),
                      "right/dense0/kernel": (6, 5), "right/dense0/bias": (5,),
                      "right/out/kernel": (5, 4), "right/out/bias": (4,)}
    out = heads.apply({"params": params}, features)
    p = params["right"]
    hidden = jnp.maximum(features @ p["dense0"]["kernel"] + p["dense0"]["bias"], 0.0)
    np.testing.assert_allclose(out["right"], hidden @ p["out"]["kernel"] + p["out"]["bias"],
                               rtol=1e-6, atol=1e-6)
    mlp = networks.MLPHead((5,), 10)
    np.testing.assert_array_equal(mlp.apply({"params": params["left"]}, features), out["left"])
    # hidden=() keeps the single Dense per task.
    assert _paths(_numpy_variables(networks.Heads({"left": 10}, hidden=()), features)[
        "params"]) == {"left/kernel", "left/bias"}


def _flax_max_pool(x):
    import flax.linen as nn

    return nn.max_pool(x, (2, 2), (2, 2), padding="VALID")


def test_max_pool2x2_equals_flax_max_pool_in_value_and_gradient():
    from core.trunks import max_pool2x2

    for shape in ((2, 8, 8, 3), (1, 7, 9, 2)):
        x = _random(shape)
        np.testing.assert_array_equal(max_pool2x2(x), _flax_max_pool(x))
        weights = _random(_flax_max_pool(x).shape, seed=1)
        grads = [jax.grad(lambda x, pool=pool, w=weights: jnp.sum(pool(x) * w))(x)
                 for pool in (max_pool2x2, _flax_max_pool)]
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def _multilenet_by_hand(params, x):
    """The MGDA-UB MultiLeNet trunk written with flax.linen layers, for comparison."""
    import flax.linen as nn

    def conv(p, x):
        return nn.Conv(p["bias"].shape[0], (5, 5), padding="VALID").apply({"params": p}, x)

    x = nn.relu(_flax_max_pool(conv(params["conv0"], x)))
    x = nn.relu(_flax_max_pool(conv(params["conv1"], x)))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(x @ params["dense0"]["kernel"] + params["dense0"]["bias"])


def test_multilenet_trunk_is_the_mgda_ub_trunk_for_both_conv_impls():
    x = _random((3, 28, 28, 1))
    a = networks.MultiLeNetTrunk(conv_impl="xla")
    b = networks.MultiLeNetTrunk(conv_impl="im2col")
    variables = _numpy_variables(a, x, train=False)
    shapes = {path: leaf.shape
              for path, leaf in traverse_util.flatten_dict(variables["params"], sep="/").items()}
    assert shapes == {"conv0/kernel": (5, 5, 1, 10), "conv0/bias": (10,),
                      "conv1/kernel": (5, 5, 10, 20), "conv1/bias": (20,),
                      "dense0/kernel": (320, 50), "dense0/bias": (50,)}
    y = a.apply(variables, x, train=False)
    assert y.shape == (3, 50) and np.abs(y).max() > 0
    np.testing.assert_allclose(b.apply(variables, x, train=False), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_multilenet_by_hand(variables["params"], x), y,
                               rtol=1e-4, atol=1e-5)
    # Rate 0 adds no dropout layer: training needs no key and equals evaluation.
    np.testing.assert_array_equal(networks.MultiLeNetTrunk(dropout_rate=0.0).apply(
        variables, x, train=True), y)


def test_multilenet_dropout2d_drops_whole_channels_per_example():
    x = _random((8, 28, 28, 1))
    trunk = networks.MultiLeNetTrunk()
    variables = _numpy_variables(trunk, x, train=False)
    _, state = trunk.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)},
                           capture_intermediates=True, mutable=["intermediates"])
    conv1 = state["intermediates"]["conv1"]["__call__"][0]
    dropped = state["intermediates"]["dropout2d"]["__call__"][0]
    assert dropped.shape == conv1.shape == (8, 8, 8, 20)
    ratio = np.asarray(dropped / conv1)
    # Each (example, channel) map is either zeroed or scaled by 1 / (1 - 0.5), as a whole.
    mask = ratio[:, :1, :1, :]
    np.testing.assert_allclose(ratio, np.broadcast_to(mask, ratio.shape), rtol=1e-5)
    assert set(np.round(mask.ravel(), 4)) == {0.0, 2.0}
    assert not all(np.array_equal(mask[0], mask[i]) for i in range(1, 8))  # one mask per example
    with pytest.raises(flax.errors.InvalidRngError):
        trunk.apply(variables, x, train=True)


def test_trunk_and_heads_builds_the_multilenet_with_mlp_heads():
    model = networks.TrunkAndHeads(networks.MultiLeNetTrunk(), {"left": 10, "right": 10},
                                   head_hidden=(50,))
    x = _random((2, 28, 28, 1))
    params = _numpy_variables(model, x, train=False)["params"]
    assert _paths(params["heads"]) == {f"{task}/{layer}/{leaf}" for task in ("left", "right")
                                       for layer in ("dense0", "out")
                                       for leaf in ("kernel", "bias")}
    assert params["heads"]["left"]["dense0"]["kernel"].shape == (50, 50)
    out = jax.jit(lambda p, x, key: model.apply({"params": p}, x, rngs={"dropout": key}))(
        params, x, jax.random.PRNGKey(1))
    assert out["left"].shape == out["right"].shape == (2, 10)
