"""Tests of `transfer.param_groups`: labelling, per-group learning rates on a known SGD
step, frozen groups (no movement, no optimizer state, no gradient), layer-wise decay in
closed form and the L2-SP gradient."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core.errors import ConfigError
from transfer import param_groups as pg
from transfer.params import flatten

BLOCKS = ["trunk/block0", "trunk/block1", "trunk/block2"]


def _params():
    """A three-block linear trunk and a linear head: x -> W0 -> W1 -> W2 -> (Wh, bh)."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape) / 2, jnp.float32)

    return {"trunk": {f"block{i}": {"kernel": arr(3, 3), "bias": arr(3)} for i in range(3)},
            "head": {"kernel": arr(3, 2), "bias": arr(2)}}


def _loss(params, x, y):
    h = x
    for i in range(3):
        block = params["trunk"][f"block{i}"]
        h = h @ block["kernel"] + block["bias"]
    out = h @ params["head"]["kernel"] + params["head"]["bias"]
    return jnp.mean(jnp.square(out - y))


X = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(2).normal(size=(4, 2)), jnp.float32)


def test_labels_first_match_wins_with_default():
    rules = [("trunk/block0", "low"), ("trunk/*", "mid"), ("trunk/block1", "never")]
    with pytest.raises(ConfigError, match="label no parameter: 'trunk/block1' -> never"):
        pg.label_params(_params(), rules, default="head")
    labels = flatten(pg.label_params(_params(), rules[:2], default="head"))
    assert labels["trunk/block0/kernel"] == "low" and labels["trunk/block1/bias"] == "mid"
    assert labels["trunk/block2/kernel"] == "mid" and labels["head/bias"] == "head"


def test_every_leaf_needs_a_rule_without_default():
    with pytest.raises(ConfigError, match="2 parameters match no group rule: head/kernel, "
                                          "head/bias"):
        pg.label_params(_params(), {"trunk": "trunk"})


def test_per_group_learning_rates_on_a_known_sgd_step():
    params = _params()
    labels = pg.label_params(params, [("trunk/block0", "low"), ("trunk", "mid")], default="head")
    rates = {"low": 0.01, "mid": 0.1, "head": 0.5}
    tx = pg.make_grouped_optimizer(labels, rates, optax.sgd)
    grads = jax.grad(_loss)(params, X, Y)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = flatten(optax.apply_updates(params, updates))
    old, g, group = flatten(params), flatten(grads), flatten(labels)
    for path in old:
        np.testing.assert_allclose(new[path], old[path] - rates[group[path]] * g[path],
                                   rtol=1e-6, atol=1e-7, err_msg=path)
    assert all(np.any(g[path] != 0) for path in g)   # every group really moved


def test_frozen_group_is_bit_identical_and_holds_no_optimizer_state():
    params = _params()
    labels = pg.label_params(params, pg.freeze_lowest_blocks(2, BLOCKS), default="trained")
    groups = {"frozen": None, "trained": 1e-2}
    tx = pg.make_grouped_optimizer(labels, groups, optax.adam)
    opt_state = tx.init(params)
    assert jax.tree.leaves(opt_state.inner_states["frozen"]) == []
    trained = [p for p, g in flatten(labels).items() if g == "trained"]
    mu = opt_state.inner_states["trained"].inner_state[0].mu
    with_state = ["/".join(k.key for k in path)
                  for path, _ in jax.tree_util.tree_leaves_with_path(mu)]
    assert sorted(with_state) == sorted(trained)   # moments only for the trained leaves

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = tx.update(jax.grad(_loss)(params, X, Y), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new = params
    for _ in range(4):
        new, opt_state = step(new, opt_state)
    before, after = flatten(params), flatten(new)
    for path, group in flatten(labels).items():
        same = np.array_equal(np.asarray(before[path]).view(np.uint32),
                              np.asarray(after[path]).view(np.uint32))
        assert same == (group == "frozen"), path


def test_split_trainable_differentiates_only_the_trainable_leaves():
    params = _params()
    labels = pg.label_params(params, pg.freeze_lowest_blocks(1, BLOCKS), default="trained")
    groups = {"frozen": 0.0, "trained": 0.1}
    trainable, frozen = pg.split_trainable(params, labels, pg.frozen_groups(groups))
    assert set(flatten(frozen)) == {"trunk/block0/kernel", "trunk/block0/bias"}
    assert "trunk/block0" not in flatten(trainable) and len(flatten(trainable)) == 6
    grads = jax.grad(lambda t: _loss(pg.merge(t, frozen), X, Y))(trainable)
    full = flatten(jax.grad(_loss)(params, X, Y))
    for path, g in flatten(grads).items():
        np.testing.assert_allclose(g, full[path], rtol=1e-6)
    grads = pg.merge(grads, jax.tree.map(jnp.zeros_like, frozen))   # the optimizer's tree
    tx = pg.make_grouped_optimizer(labels, groups, optax.sgd)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not np.any(updates["trunk"]["block0"]["kernel"])
    with pytest.raises(ConfigError, match="share paths: head/bias"):
        pg.merge(trainable, {"head": {"bias": 0}})


def test_freeze_lowest_blocks_rules_and_bounds():
    assert pg.freeze_lowest_blocks(2, BLOCKS) == [("trunk/block0", "frozen"),
                                                  ("trunk/block1", "frozen")]
    assert pg.freeze_lowest_blocks(0, BLOCKS) == []
    with pytest.raises(ConfigError, match="cannot freeze 4 blocks: give an integer from 0 to 3"):
        pg.freeze_lowest_blocks(4, BLOCKS)


def test_layerwise_scales_closed_form():
    assert pg.layerwise_lr_scales(BLOCKS, 0.5) == {"trunk/block0": 0.125, "trunk/block1": 0.25,
                                                   "trunk/block2": 0.5}
    assert pg.layerwise_lr_scales(BLOCKS, 1.0) == dict.fromkeys(BLOCKS, 1.0)
    with pytest.raises(ConfigError, match=r"layer decay must be in \(0, 1\]"):
        pg.layerwise_lr_scales(BLOCKS, 1.5)


def test_layer_decay_groups_drive_the_optimizer():
    params = _params()
    rules, groups = pg.layer_decay_groups(BLOCKS, 0.8, decay=0.5, num_frozen=1)
    assert groups == {"trunk/block0": None, "trunk/block1": 0.2, "trunk/block2": 0.4, "head": 0.8}
    labels = pg.label_params(params, rules, default="head")
    tx = pg.make_grouped_optimizer(labels, groups, optax.sgd)
    grads = jax.grad(_loss)(params, X, Y)
    updates = flatten(tx.update(grads, tx.init(params), params)[0])
    g = flatten(grads)
    for path, lr in [("trunk/block0/kernel", 0.0), ("trunk/block1/kernel", 0.2),
                     ("trunk/block2/bias", 0.4), ("head/kernel", 0.8)]:
        np.testing.assert_allclose(updates[path], -lr * g[path], rtol=1e-6, err_msg=path)


def test_group_configuration_errors():
    labels = pg.label_params(_params(), [], default="all")
    with pytest.raises(ConfigError, match="labelled with groups that have no learning rate: all"):
        pg.make_grouped_optimizer(labels, {"other": 0.1}, optax.sgd)
    with pytest.raises(ConfigError, match="group 'all' has learning rate -0.1"):
        pg.make_grouped_optimizer(labels, {"all": -0.1}, optax.sgd)


def test_l2_sp_value_and_gradient_closed_form():
    params, start = _params(), jax.tree.map(lambda p: p + 0.25, _params())
    params = jax.tree.map(lambda p, q: p - 0.5 * q, params, _params())
    labels = pg.label_params(params, [("trunk", "backbone")], default="head")
    backbone = pg.group_mask(labels, ["backbone"])
    start["head"] = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), start["head"])
    alpha, beta = 0.3, 0.7
    penalty = jax.jit(pg.l2_sp_penalty)
    value, grads = jax.value_and_grad(penalty)(params, start, backbone, alpha, beta)
    p, p0, g = flatten(params), flatten(start), flatten(grads)
    expected = 0.0
    for path in p:
        if path.startswith("trunk"):
            np.testing.assert_allclose(g[path], alpha * (p[path] - p0[path]), rtol=1e-5)
            expected += alpha / 2 * float(jnp.sum((p[path] - p0[path]) ** 2))
        else:
            np.testing.assert_allclose(g[path], beta * p[path], rtol=1e-5)
            expected += beta / 2 * float(jnp.sum(p[path] ** 2))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_describe_groups_is_the_json_record():
    labels = pg.label_params(_params(), pg.freeze_lowest_blocks(1, BLOCKS), default="trained")
    info = pg.describe_groups(labels, {"frozen": None, "trained": 0.1})
    assert info["trunk/block0/bias"] == {"group": "frozen", "frozen": True, "learning_rate": None}
    assert info["head/kernel"] == {"group": "trained", "frozen": False, "learning_rate": 0.1}
    assert len(info) == 8 and json.loads(json.dumps(info)) == info
