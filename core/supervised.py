"""What every supervised family (multi-task, transfer) shares: config, optimizer, step.

`SupervisedConfig` adds to `RunConfig` the options of ordinary minibatch
training: batch sizes, the optimizer and its learning rate, decoupled weight
decay, gradient clipping, dropout and the size of the validation split carved
from the training set.

Weight decay is *decoupled* (Loshchilov & Hutter, 2019): the update is
`θ ← θ − lr · (u(g) + λ θ)`, where `u` is the optimizer's own transformation
of the gradient (Adam's normalised moment, SGD's identity), so the decay is
not rescaled by Adam's second moments the way an L2 term in the loss would
be. Only kernels (arrays of rank >= 2) decay; biases and normalisation scales
do not.

Dropout keys come from `(seed, step)` (`dropout_key`), never from a key
carried in Python, so a resumed run draws the same masks as an uninterrupted
one.

A family's loss function for `make_train_step` has the signature

    loss_fn(params, model_state, batch, train, rng) -> (loss, (new_model_state, metrics))

with `metrics` a dict of scalars that includes 'loss'.
"""

import dataclasses
from typing import Any, Callable

import jax
import optax

from core import train_state as train_state_lib
from core.errors import ConfigError
from core.experiment import RunConfig, option

OPTIMIZERS = ("adam", "sgd", "momentum")
SupervisedLossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisedConfig(RunConfig):
    """Options of minibatch training shared by the supervised families."""

    batch_size: int = option(128, "Training examples per step (split over the devices).",
                             minimum=1)
    eval_batch_size: int | None = option(None, "Examples per evaluation batch (default: "
                                               "--batch_size).", minimum=1, resumable=True)
    optimizer: str = option("adam", "The optimizer.", choices=OPTIMIZERS)
    learning_rate: float = option(1e-3, "Step size of the optimizer.")
    momentum: float = option(0.9, "Momentum of --optimizer=momentum.", minimum=0.0)
    weight_decay: float = option(0.0, "Decoupled weight decay λ on kernels: θ ← θ − lr·(u + λθ) "
                                      "(AdamW-style; 0: none).", minimum=0.0)
    grad_clip_norm: float | None = option(None, "Clip the gradient's global norm to this "
                                                "value (default: no clipping).")
    dropout: float = option(0.0, "Dropout rate on the trunk's hidden layers (0: none).",
                            minimum=0.0)
    val_size: int = option(5000, "Validation examples carved from the training set by a "
                                 "seeded permutation (never from the test set).", minimum=0)

    def validate(self) -> None:
        super().validate()
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if not self.dropout < 1:
            raise ConfigError(f"--dropout must be < 1, got {self.dropout}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(f"--grad_clip_norm must be > 0, got {self.grad_clip_norm}")

    def sharded_batch(self) -> tuple[str, int]:
        return "batch_size", self.batch_size

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


def decays(params: Any) -> Any:
    """The weight-decay mask: True for kernels (rank >= 2), False for biases and scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: SupervisedConfig) -> optax.GradientTransformation:
    """The optimizer of `config`, with decoupled weight decay and optional clipping.

    `chain(clip, u, add λθ on kernels, scale by −lr)`: with λ = 0 the decay is
    left out entirely, so the update is exactly the plain optimizer's.
    """
    direction = {"adam": optax.scale_by_adam(),
                 "sgd": optax.identity(),
                 "momentum": optax.trace(decay=config.momentum)}[config.optimizer]
    parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    parts.append(direction)
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=decays))
    parts.append(optax.scale_by_learning_rate(config.learning_rate))
    return optax.chain(*parts)


def dropout_key(seed: int, step: jax.Array) -> jax.Array:
    """The dropout PRNG key of training step `step`: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def make_train_step(loss_fn: SupervisedLossFn, optimizer: optax.GradientTransformation,
                    seed: int) -> train_state_lib.StepFn:
    """One minibatch update: gradient of `loss_fn`, then the optimizer.

    Args:
      loss_fn: see the module docstring; called with `train=True` and the
        step's dropout key.
      optimizer: the transformation of `state.opt_state`.
      seed: the run's seed (dropout keys are derived from it and the step).

    Returns:
      A pure `step(state, batch) -> (state, metrics)`, for `jit_step`; metrics
      are the loss function's plus the gradient norm.
    """

    def step(state: train_state_lib.TrainState, batch):
        rng = dropout_key(seed, state.step)
        (_, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, batch, True, rng)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return train_state_lib.apply_gradients(state, grads, optimizer,
                                               model_state=model_state), metrics

    return step
