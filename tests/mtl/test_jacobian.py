"""The two Jacobians of `mtl.jacobian` agree, batch statistics and dropout included."""

import jax
import numpy as np

from core import networks
from core.losses import split_variables
from mtl import jacobian as jacobian_lib
from mtl import step as step_lib
from mtl.tasks import Task

TASKS = {"a": Task("a", "classification", 3), "b": Task("b", "regression", 1),
         "c": Task("c", "regression", 1, loss="l1")}


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    batch = {"x": x, "y": {"a": rng.integers(0, 3, 16).astype(np.int32),
                           "b": rng.normal(size=16).astype(np.float32),
                           "c": rng.normal(size=16).astype(np.float32)}}
    trunk = networks.MLPTrunk(hidden=(8, 6), batch_norm=True, bn_mode="running",
                              dropout_rate=0.3)
    model = networks.TrunkAndHeads(trunk, {"a": 3, "b": 1, "c": 1}, head_hidden=(4,))
    variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                           x)
    params, model_state = split_variables(variables)
    return model, params, model_state, batch


def test_trunk_and_heads_jacobian_equals_the_whole_model_one():
    model, params, model_state, batch = _problem()
    assert model_state  # running batch statistics are updated by both
    rng = jax.random.PRNGKey(7)

    def losses_fn(p):
        out, new_state = model.apply({"params": p, **model_state}, batch["x"], train=True,
                                     rngs={"dropout": rng}, mutable=list(model_state))
        return step_lib.losses_from_outputs(TASKS, out, batch), dict(new_state)

    l1, j1, s1 = jax.jit(jacobian_lib.jacobian_by_vjp, static_argnums=0)(losses_fn, params)
    l2, j2, s2 = jax.jit(lambda p: jacobian_lib.trunk_and_heads_jacobian(
        model, p, model_state, batch["x"], rng,
        lambda out: step_lib.losses_from_outputs(TASKS, out, batch)))(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Shared rows are per task; a head's contributions sum to its own task's gradient.
    for a, b in zip(jax.tree.leaves(j1["trunk"]), jax.tree.leaves(j2["trunk"])):
        assert a.shape == b.shape and a.shape[0] == 3
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(j1["heads"]), jax.tree.leaves(j2["heads"])):
        np.testing.assert_allclose(a.sum(0), b.sum(0), rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(jax.tree.leaves(j2["trunk"])[0])).max()) > 0


def test_trunk_features_draw_the_whole_models_dropout_masks():
    # MGDA-UB weighs the tasks on these features, then steps on the whole model's losses:
    # both must see the same masks (a standalone trunk.apply would draw others).
    model, params, model_state, batch = _problem()
    rng = jax.random.PRNGKey(3)
    z, _ = jacobian_lib.trunk_features(model, params, model_state, batch["x"], rng)
    heads = networks.Heads(model.heads, hidden=model.head_hidden)
    from_z = heads.apply({"params": params["heads"]}, z)
    whole, _ = model.apply({"params": params, **model_state}, batch["x"], train=True,
                           rngs={"dropout": rng}, mutable=list(model_state))
    for name in TASKS:
        np.testing.assert_allclose(from_z[name], whole[name], rtol=1e-6)
    trunk_state = {c: v["trunk"] for c, v in model_state.items()}
    alone, _ = model.trunk.apply({"params": params["trunk"], **trunk_state}, batch["x"],
                                 train=True, rngs={"dropout": rng}, mutable=list(model_state))
    assert not np.allclose(alone, z)
