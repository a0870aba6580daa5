"""The meta-step and the evaluation step trace once per configuration, not once per batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from core import networks
from core import train_state
from core.datasets import sinusoid
from core.losses import regression_loss, split_variables
from meta import evaluation
from meta import maml


def test_meta_step_and_evaluation_compile_once():
    model = networks.sinusoid_mlp()
    loss_fn = regression_loss(model)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(0), jnp.zeros((5, 1))))
    optimizer = maml.outer_optimizer(1e-3)
    state = train_state.create(params, model_state, optimizer)
    sample = lambda i: sinusoid.sample_tasks(jax.random.PRNGKey(i), 4, 5, 5)

    step = jax.jit(chex.assert_max_traces(
        maml.make_meta_train_step(loss_fn, optimizer, maml.MamlConfig(inner_lr=0.01)), n=1))
    for i in range(5):
        state, _ = step(state, sample(i))
    assert step._cache_size() == 1

    eval_fn = jax.jit(chex.assert_max_traces(evaluation.make_adaptation_eval(
        loss_fn, inner_lr=0.01, steps=3, metric="mse"), n=1))
    out = evaluation.evaluate(eval_fn, state.params, model_state, sample, num_tasks=14,
                              batch_size=4, metric="mse")
    out_again = evaluation.evaluate(eval_fn, state.params, model_state, sample, num_tasks=14,
                                    batch_size=4, metric="mse")
    assert eval_fn._cache_size() == 1
    assert out["per_step"] == out_again["per_step"] and np.isfinite(out["mean"])
