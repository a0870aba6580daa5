"""A tiny supervised family on generated arrays, to test the run skeleton.

It is what a real family supplies (`ToyConfig`, `build`), with two test
hooks: `nan_from_step` feeds NaN inputs from that step on (the loss guard
must fire), and `kill_at_step` SIGKILLs the process when that step's batch is
requested (a kill at a known point, without cleanup).
"""

import dataclasses
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core import evaluate
from core import experiment
from core import supervised
from core import train_state
from core.datasets import arrays
from core.experiment import option, override
from core.losses import split_variables


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(supervised.SupervisedConfig):
    num_steps: int = override(12)
    eval_every: int = override(4)
    checkpoint_every: int = override(3)
    log_every: int = override(2)
    batch_size: int = override(8)
    val_size: int = override(16)
    progress: bool = override(False)
    num_devices: int | None = override(1)
    examples: int = option(64, "Generated training examples.", minimum=1)
    nan_from_step: int | None = option(None, "Test hook: NaN inputs from this step on.")
    kill_at_step: int | None = option(None, "Test hook: SIGKILL when this step's batch is "
                                            "requested.", resumable=True)


class _Net(nn.Module):
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(2)(x)


def _blobs(n: int, seed: int) -> arrays.Arrays:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n).astype(np.int32)
    x = rng.normal(size=(n, 4)).astype(np.float32) + 1.5 * label[:, None]
    return arrays.Arrays(x=x, y={"label": label})


def build(config: ToyConfig, mesh) -> experiment.Program:
    model = _Net(config.dropout)
    train, val = arrays.split_validation(_blobs(config.examples, 0), config.val_size, seed=1)
    test = _blobs(32, 2)

    def loss_fn(params, model_state, batch, train_mode, rng):
        logits = model.apply({"params": params}, batch["x"], train=train_mode,
                             rngs={"dropout": rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]["label"])
        return loss.mean(), (model_state, {"loss": loss.mean()})

    def eval_step(state, batch):
        logits = model.apply({"params": state.params}, batch["x"], train=False)
        label = batch["y"]["label"]
        return {"accuracy": (jnp.argmax(logits, -1) == label).astype(jnp.float32),
                "loss": optax.softmax_cross_entropy_with_integer_labels(logits, label)}

    optimizer = supervised.make_optimizer(config)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(config.seed),
                                                     jnp.zeros((1, 4)), train=False))
    state = train_state.create(params, model_state, optimizer)
    batches = arrays.train_batch_fn(train, config.batch_size, config.seed, mesh)

    def batch_fn(step: int):
        if config.kill_at_step is not None and step == config.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        batch = batches(step)
        if config.nan_from_step is not None and step >= config.nan_from_step:
            batch = dict(batch, x=batch["x"] * jnp.nan)
        return batch

    eval_jit = jax.jit(eval_step)
    val_batches = arrays.eval_batches(val, config.resolved_eval_batch_size, mesh)
    test_batches = arrays.eval_batches(test, config.resolved_eval_batch_size, mesh)

    def test_fn(state):
        metrics = evaluate.evaluate(eval_jit, state, test_batches)
        return metrics, metrics

    return experiment.Program(
        state=state,
        train_step=train_state.jit_step(supervised.make_train_step(loss_fn, optimizer,
                                                                   config.seed), mesh),
        batch_fn=batch_fn, validate=lambda s, step: evaluate.evaluate(eval_jit, s, val_batches),
        test=test_fn, select_metric="accuracy", select_mode="max")
