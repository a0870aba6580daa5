"""Cross-stitch, hierarchical and MMoE networks: parameter paths, shapes, where gradients flow."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from core import networks
from mtl import architectures as arch

TASKS = {2: {"left": 3, "right": 1}, 3: {"left": 3, "right": 1, "extra": 2}}


def _random(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _numpy_variables(model, *args, seed=0, **kwargs):
    """Variables of `model` from NumPy draws: no PRNG kernels to compile (slow on a busy CPU)."""
    shapes = jax.eval_shape(lambda key: model.init(key, *args, **kwargs), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1),
                              s.dtype), shapes)


def _shapes(tree):
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(tree, sep="/").items()}


def _dense(p, x):
    return x.reshape(x.shape[0], -1) @ p["kernel"] + p["bias"]


def _cross_stitch(outputs, **kwargs):
    return arch.CrossStitch((arch.ConvBlock(4), arch.DenseBlock(6)), outputs, **kwargs)


def _hierarchical(task_kinds=None, **kwargs):
    return arch.Hierarchical((8, 6, 5), {"low": 3, "mid": 1, "high": 2},
                             {"low": 0, "mid": 1, "high": 2},
                             task_kinds={"mid": "regression", **(task_kinds or {})}, **kwargs)


def _set_alpha(params, alpha):
    return {**params, **{name: {"alpha": jnp.asarray(alpha, jnp.float32)}
                         for name in params if name.startswith("stitch")}}


def _grad(model, params, x, task):
    """The gradient of sum(output[task]^2), jitted: one compilation, not one per operation."""
    def loss(p):
        return jnp.sum(jnp.square(model.apply({"params": p}, x, train=False)[task]))

    return jax.jit(jax.grad(loss))(params)


def test_cross_stitch_parameter_paths_and_balanced_alpha():
    x = _random((2, 8, 8, 1))
    params = _numpy_variables(_cross_stitch(TASKS[3]), x)["params"]
    expected = {"stitch0/alpha": (3, 3), "stitch1/alpha": (3, 3)}
    for task, width in TASKS[3].items():
        expected.update({f"columns/{task}/block0/conv/kernel": (3, 3, 1, 4),
                         f"columns/{task}/block0/conv/bias": (4,),
                         f"columns/{task}/block1/dense/kernel": (4 * 4 * 4, 6),
                         f"columns/{task}/block1/dense/bias": (6,),
                         f"heads/{task}/kernel": (6, width), f"heads/{task}/bias": (width,)})
    assert _shapes(params) == expected
    xs = [x, x + 1, x + 2]
    alpha = arch.CrossStitchUnit().init(jax.random.PRNGKey(0), xs)["params"]["alpha"]
    np.testing.assert_allclose(alpha, [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]],
                               rtol=1e-6)
    two = arch.CrossStitchUnit(channel_wise=True).init(jax.random.PRNGKey(0), xs[:2])
    assert two["params"]["alpha"].shape == (2, 2, 1)
    np.testing.assert_allclose(two["params"]["alpha"][..., 0], [[0.9, 0.1], [0.1, 0.9]])


@pytest.mark.parametrize("num_tasks", [2, 3])
@pytest.mark.parametrize("name", ["cross_stitch", "hierarchical", "mmoe"])
def test_every_architecture_returns_one_output_per_task(name, num_tasks):
    outputs = TASKS[num_tasks]
    models = {"cross_stitch": _cross_stitch(outputs),
              "hierarchical": arch.Hierarchical((8, 6), outputs,
                                                {t: i % 2 for i, t in enumerate(outputs)}),
              "mmoe": arch.MMoE(outputs, num_experts=3, expert_hidden=(5,), tower_hidden=(4,))}
    model = models[name]
    x = _random((2, 8, 8, 1))
    out = model.apply(_numpy_variables(model, x), x, train=False)
    assert list(out) == list(outputs)
    assert {task: y.shape for task, y in out.items()} == {t: (2, w) for t, w in outputs.items()}


def test_cross_stitch_with_identity_alpha_is_independent_single_task_networks():
    model, x = _cross_stitch(TASKS[3]), _random((2, 8, 8, 1))
    params = _set_alpha(_numpy_variables(model, x)["params"], np.eye(3))
    out = model.apply({"params": params}, x, train=False)
    for task in TASKS[3]:
        column = params["columns"][task]
        h = arch.ConvBlock(4).apply({"params": column["block0"]}, x, train=False)
        h = arch.DenseBlock(6).apply({"params": column["block1"]}, h, train=False)
        np.testing.assert_allclose(out[task], _dense(params["heads"][task], h),
                                   rtol=1e-5, atol=1e-6, err_msg=task)
    stitched = model.apply({"params": _set_alpha(params, np.full((3, 3), 1 / 3))}, x, train=False)
    assert not np.allclose(stitched["left"], out["left"])


def test_cross_stitch_gradients_cross_columns_only_through_alpha():
    model, x = _cross_stitch(TASKS[2]), _random((2, 8, 8, 1))
    params = _set_alpha(_numpy_variables(model, x)["params"], np.eye(2))
    grads = _grad(model, params, x, "left")
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        if "/right/" in f"/{path}":
            assert not np.any(g), path  # column and head of the other task: untouched
        elif not path.startswith("stitch"):
            assert np.any(g), path
    for b in (0, 1):
        g = grads[f"stitch{b}"]["alpha"]
        # d x̃_left / d α_left,right = x_right: the one way across columns. Row 'right' is not
        # used by the loss of 'left'.
        assert g[0, 1] != 0 and g[0, 0] != 0 and not np.any(g[1]), (b, g)
    balanced = _grad(model, _set_alpha(params, [[0.9, 0.1], [0.1, 0.9]]), x, "left")
    assert np.any(balanced["columns"]["right"]["block0"]["conv"]["kernel"])


def test_channel_wise_alpha_with_equal_channels_equals_one_alpha():
    x = _random((2, 8, 8, 1))
    plain, per_channel = _cross_stitch(TASKS[2]), _cross_stitch(TASKS[2], channel_wise=True)
    params = _numpy_variables(per_channel, x)["params"]
    assert params["stitch0"]["alpha"].shape == (2, 2, 4)
    assert params["stitch1"]["alpha"].shape == (2, 2, 6)
    alpha = np.array([[0.7, 0.3], [0.2, 0.8]])
    for b, channels in ((0, 4), (1, 6)):
        params[f"stitch{b}"] = {"alpha": jnp.asarray(np.repeat(alpha[..., None], channels, -1))}
    ours = per_channel.apply({"params": params}, x, train=False)
    theirs = plain.apply({"params": _set_alpha(params, alpha)}, x, train=False)
    for task in TASKS[2]:
        np.testing.assert_allclose(ours[task], theirs[task], rtol=1e-5, atol=1e-6)


def test_hierarchical_parameter_paths_with_a_conv_trunk():
    model = _hierarchical(trunk=arch.ConvBlock(2))
    x = _random((2, 8, 8, 1))
    assert _shapes(_numpy_variables(model, x)["params"]) == {
        "trunk/conv/kernel": (3, 3, 1, 2), "trunk/conv/bias": (2,),
        "block0/dense/kernel": (4 * 4 * 2, 8), "block0/dense/bias": (8,),
        "block1/dense/kernel": (8 + 3, 6), "block1/dense/bias": (6,),  # + low's 3 outputs
        "block2/dense/kernel": (6 + 1, 5), "block2/dense/bias": (5,),  # + mid's 1 output
        "heads/low/kernel": (8, 3), "heads/low/bias": (3,),
        "heads/mid/kernel": (6, 1), "heads/mid/bias": (1,),
        "heads/high/kernel": (5, 2), "heads/high/bias": (2,)}


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_hierarchical_higher_task_learns_through_the_lower_head_unless_stopped(stop_gradient):
    model, x = _hierarchical(feed_stop_gradient=stop_gradient), _random((3, 10))
    params = _numpy_variables(model, x)["params"]
    high = _grad(model, params, x, "high")
    assert np.any(high["heads"]["low"]["kernel"]) != stop_gradient
    assert np.any(high["heads"]["mid"]["kernel"]) != stop_gradient
    assert np.any(high["block0"]["dense"]["kernel"])  # through the features either way
    low = _grad(model, params, x, "low")
    assert not np.any(low["block1"]["dense"]["kernel"])  # lower tasks never see higher blocks
    assert not np.any(low["heads"]["high"]["kernel"])


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_hierarchical_feeds_probabilities_of_classes_and_raw_regression_values(kind):
    model, x = _hierarchical(task_kinds={"low": kind}), _random((3, 10))
    params = _numpy_variables(model, x)["params"]
    out = model.apply({"params": params}, x, train=False)
    # A constant added to every logit leaves the softmax, and so what is fed, unchanged.
    shifted = jax.tree.map(lambda a: a, params)
    shifted["heads"]["low"]["bias"] = params["heads"]["low"]["bias"] + 5.0
    out_shifted = model.apply({"params": shifted}, x, train=False)
    assert not np.allclose(out_shifted["low"], out["low"])
    fed_unchanged = np.allclose(out_shifted["mid"], out["mid"], rtol=1e-5, atol=1e-6)
    assert fed_unchanged == (kind == "classification")


@pytest.mark.parametrize("kwargs, match", [
    ({"task_depth": {"low": 0, "mid": 1}}, "exactly the tasks"),
    ({"task_depth": {"low": 0, "mid": 1, "high": 3}}, "not a block index"),
    ({"task_kinds": {"low": "ranking"}}, "task_kinds"),
    ({"task_kinds": {"other": "regression"}}, "task_kinds"),
    ({"task_kinds": {}}, "softmax is constant")])
def test_hierarchical_rejects_bad_depths_and_kinds(kwargs, match):
    args = {"widths": (8, 6, 5), "outputs": {"low": 3, "mid": 1, "high": 2},
            "task_depth": {"low": 0, "mid": 1, "high": 2},
            "task_kinds": {"mid": "regression"}, **kwargs}
    with pytest.raises(ValueError, match=match):
        arch.Hierarchical(**args)


def test_mmoe_paths_and_gated_mixture_of_experts():
    model, x = arch.MMoE(TASKS[2], num_experts=3, expert_hidden=(5,)), _random((4, 6))
    params = _numpy_variables(model, x)["params"]
    expected = {"gate_left/kernel": (6, 3), "gate_right/kernel": (6, 3),
                "heads/left/kernel": (5, 3), "heads/left/bias": (3,),
                "heads/right/kernel": (5, 1), "heads/right/bias": (1,)}
    for e in range(3):
        expected.update({f"expert{e}/dense0/kernel": (6, 5), f"expert{e}/dense0/bias": (5,)})
    assert _shapes(params) == expected
    out, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"])
    gates = {task: state["intermediates"][f"gates_{task}"][0] for task in TASKS[2]}
    experts = [networks.MLPTrunk((5,)).apply({"params": params[f"expert{e}"]}, x)
               for e in range(3)]
    for task, gate in gates.items():
        assert gate.shape == (4, 3) and np.all(gate > 0)
        np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-6)
        mixed = sum(gate[:, e:e + 1] * experts[e] for e in range(3))
        np.testing.assert_allclose(out[task], _dense(params["heads"][task], mixed),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(gates["left"], gates["right"])


def test_mmoe_with_one_expert_is_a_shared_bottom_network():
    model, x = arch.MMoE(TASKS[3], num_experts=1, expert_hidden=(6, 5)), _random((4, 7))
    params = _numpy_variables(model, x)["params"]
    shared = networks.TrunkAndHeads(networks.MLPTrunk((6, 5)), TASKS[3])
    expected = shared.apply({"params": {"trunk": params["expert0"], "heads": params["heads"]}}, x)
    out = model.apply({"params": params}, x, train=False)
    for task in TASKS[3]:
        np.testing.assert_allclose(out[task], expected[task], rtol=1e-5, atol=1e-6)
    assert not np.any(_grad(model, params, x, "left")["gate_left"]["kernel"])


def test_copies_of_a_block_template_start_from_different_weights():
    x = _random((2, 6))
    stitch = arch.CrossStitch((arch.DenseBlock(4),), TASKS[2]).init(jax.random.PRNGKey(0), x)
    columns = stitch["params"]["columns"]
    assert not np.allclose(columns["left"]["block0"]["dense"]["kernel"],
                           columns["right"]["block0"]["dense"]["kernel"])
    mmoe = arch.MMoE(TASKS[2], num_experts=2, expert=arch.DenseBlock(4), trunk=arch.DenseBlock(6))
    params = mmoe.init(jax.random.PRNGKey(0), x)["params"]
    assert set(params) == {"trunk", "expert0", "expert1", "gate_left", "gate_right", "heads"}
    assert params["expert0"]["dense"]["kernel"].shape == (6, 4)
    assert not np.allclose(params["expert0"]["dense"]["kernel"],
                           params["expert1"]["dense"]["kernel"])


def test_dropout_under_jit_follows_its_key_and_is_off_at_test_time():
    x = _random((4, 8, 8, 1))
    models = [arch.CrossStitch((arch.ConvBlock(3, dropout_rate=0.5), arch.DenseBlock(5)),
                               TASKS[2]),
              arch.Hierarchical((6, 5), TASKS[2], {"left": 0, "right": 1}, dropout_rate=0.5),
              arch.MMoE(TASKS[2], num_experts=2, expert_hidden=(5,), dropout_rate=0.5)]
    for model in models:
        variables = _numpy_variables(model, x, train=False)
        apply = jax.jit(lambda v, key, m=model: m.apply(v, x, train=True, rngs={"dropout": key}))
        a, b = apply(variables, jax.random.PRNGKey(1)), apply(variables, jax.random.PRNGKey(1))
        c = apply(variables, jax.random.PRNGKey(2))
        test = model.apply(variables, x, train=False)
        for task in TASKS[2]:
            np.testing.assert_array_equal(a[task], b[task])
            assert not np.allclose(a[task], c[task]) and not np.allclose(a[task], test[task])
        np.testing.assert_array_equal(test["left"], model.apply(variables, x, train=False)["left"])
        with pytest.raises(flax.errors.InvalidRngError):
            model.apply(variables, x, train=True)


def test_cross_stitch_and_mmoe_reject_bad_configurations():
    with pytest.raises(ValueError, match="at least two tasks"):
        arch.CrossStitch((arch.DenseBlock(4),), {"only": 2})
    with pytest.raises(ValueError, match="block modules"):
        arch.CrossStitch((), TASKS[2])
    with pytest.raises(ValueError, match="block modules"):
        arch.CrossStitch((arch.DenseBlock,), TASKS[2])
    with pytest.raises(ValueError, match="num_experts"):
        arch.MMoE(TASKS[2], num_experts=0)
    with pytest.raises(ValueError, match="task name"):
        arch.MMoE({"a/b": 2}, num_experts=2)
