"""The multi-task train step: every method on 1 and 4 devices, the Jacobian, MGDA-UB."""

import jax
import numpy as np
import pytest

from core import mesh as mesh_lib
from core import networks
from core import supervised
from core import train_state
from core.losses import split_variables
from mtl import methods as methods_lib
from mtl import step as step_lib
from mtl.tasks import Task

TASKS = {"a": Task("a", "classification", 3), "b": Task("b", "regression", 1),
         "c": Task("c", "regression", 1, loss="l1")}
OPTIONS = {"weights": (), "dwa_temperature": 2.0, "weighting_lr": 1e-2, "gradnorm_alpha": 1.5,
           "famo_lr": 0.025, "famo_gamma": 1e-3, "cagrad_c": 0.5, "mgda_normalization": "none"}


def _problem(batch_size=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, 5)).astype(np.float32)
    y = {"a": rng.integers(0, 3, batch_size).astype(np.int32),
         "b": rng.normal(size=batch_size).astype(np.float32),
         "c": rng.normal(size=batch_size).astype(np.float32)}
    model = networks.TrunkAndHeads(networks.MLPTrunk(hidden=(6,)), {"a": 3, "b": 1, "c": 1})
    params, model_state = split_variables(model.init(jax.random.PRNGKey(0), x))
    return model, params, model_state, {"x": x, "y": y}


def _run(name, devices, steps=2):
    model, params, model_state, batch = _problem()
    method = methods_lib.make_method(name, num_tasks=3, steps_per_epoch=1, task_indexed=False,
                                     options=OPTIONS)
    optimizer = supervised.make_optimizer(supervised.SupervisedConfig(workdir="w",
                                                                      learning_rate=1e-2))
    extra = method.init_state(3)
    mesh = mesh_lib.make_mesh(devices)
    state = mesh_lib.put_replicated(train_state.create(params, model_state, optimizer, extra),
                                    mesh)
    step = train_state.jit_step(step_lib.make_train_step(model, TASKS, method, optimizer, 0),
                                mesh)
    for _ in range(steps):
        state, metrics = step(state, mesh_lib.put_batch(batch, mesh))
    return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", methods_lib.METHODS)
def test_four_devices_give_the_one_device_result(name):
    one, m1 = _run(name, jax.devices()[:1])
    four, m4 = _run(name, jax.devices()[:4])
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    assert int(one.step) == 2 and np.isfinite(m1["loss"])


def test_the_jacobian_mean_equals_equal_weighting_on_the_shared_trunk():
    # Jacobian-descent Mean: (1/k) Σ ∇L_k on the trunk, the own task's gradient on each head.
    model, params, model_state, batch = _problem()
    tx = supervised.make_optimizer(supervised.SupervisedConfig(workdir="w", optimizer="sgd",
                                                               learning_rate=1.0))
    results = {}
    for name in ("mean", "equal"):
        method = methods_lib.make_method(name, num_tasks=3, steps_per_epoch=1,
                                         task_indexed=False, options=OPTIONS)
        extra = method.init_state(3)
        state = train_state.create(params, model_state, tx, extra)
        new, _ = jax.jit(step_lib.make_train_step(model, TASKS, method, tx, 0))(state, batch)
        results[name] = jax.tree.map(lambda a, b: a - b, new.params, params)
    np.testing.assert_allclose(results["mean"]["trunk"]["dense0"]["kernel"],
                               results["equal"]["trunk"]["dense0"]["kernel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results["mean"]["heads"]["a"]["kernel"],
                               3 * results["equal"]["heads"]["a"]["kernel"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,weights", [("mean", ()), ("constant", (0.0, 2.0, 0.5))])
def test_fixed_weights_need_no_jacobian_and_give_its_result(name, weights):
    # make_method gives `mean` / `constant` the one-backward path; the Method below, built
    # without fixed_weights, takes the Jacobian path. Both must give the same update.
    model, params, model_state, batch = _problem()
    tx = supervised.make_optimizer(supervised.SupervisedConfig(workdir="w", optimizer="sgd",
                                                               learning_rate=0.5))
    options = dict(OPTIONS, weights=weights)
    fast = methods_lib.make_method(name, num_tasks=3, steps_per_epoch=1, task_indexed=False,
                                   options=options)
    assert fast.fixed_weights is not None
    jacobian = methods_lib.Method(name=name, aggregator=fast.aggregator)
    results = []
    for method in (fast, jacobian):
        state = train_state.create(params, model_state, tx, method.init_state(3))
        step = jax.jit(step_lib.make_train_step(model, TASKS, method, tx, 0))
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append((state.params, metrics))
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for task in TASKS:
        np.testing.assert_allclose(results[0][1][f"weight/{task}"],
                                   results[1][1][f"weight/{task}"], rtol=1e-6)


def test_mgda_ub_is_refused_for_task_indexed_data():
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="mgda_ub.*same input"):
        methods_lib.make_method("mgda_ub", num_tasks=3, steps_per_epoch=1, task_indexed=True,
                                options=OPTIONS)


@pytest.mark.parametrize("name, options, message", [
    ("adamw", {}, "unknown --method='adamw'; loss weightings: static"),
    ("static", {"weights": (1.0, -1.0, 1.0)}, "static"),
    ("static", {"weights": (1.0, 1.0)}, "--weights has 2 values for 3 tasks"),
    ("upgrad", {"weights": (1.0, 1.0, 1.0)}, "--weights is only used by"),
])
def test_bad_methods_give_one_clear_error(name, options, message):
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        methods_lib.make_method(name, num_tasks=3, steps_per_epoch=1, task_indexed=False,
                                options=dict(OPTIONS, **options))
