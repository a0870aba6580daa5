"""The train and eval steps of a transfer run: grouped updates, LP-FT's two phases, L2-SP.

Every step differentiates only the trainable part of the parameters
(`param_groups.split_trainable`): masking a frozen group's update would
still compute its gradient (optax#477). The frozen leaves are merged back
unchanged, so they stay bit-identical to what was loaded, and the optimizer
(one `optax.partition` over the groups) sees zeros for them and keeps no
state for them.

Gradient clipping, when asked for, is one global norm over the trainable
gradients, before the groups' optimizers: clipping each group separately, or
counting frozen gradients, would change the effective learning rates.

LP-FT (Kumar et al., 2022) is one run with one checkpoint timeline. The
phase is a function of the step (`step < lp_steps`: linear probing, the trunk
frozen; afterwards every per-block group trains) chosen inside the jitted
step by `lax.cond`, and the train state always holds both phases' optimizer
states ({'probe': ..., 'finetune': ...}; each is updated only in its phase).
The state's layout never changes at the switch, so a run killed on either
side of it resumes from its checkpoint bit-identically.

The logits come from `logits_fn(params, x, train, rng)`: the whole network
on images, or only the head on cached features (feature extraction).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from core import supervised
from core import train_state
from transfer import param_groups as pg
from transfer.data import LABEL
from transfer.networks import Classifier
from transfer.strategies import Groups

LogitsFn = Callable[[Any, jax.Array, bool, jax.Array | None], jax.Array]
Penalty = Callable[[Any, Any], jax.Array]


def logits_fn(model: Classifier, on_features: bool) -> LogitsFn:
    """The logits of `model` on images, or of its head alone on cached features."""
    if on_features:
        return lambda params, x, train, rng: model.apply({"params": params}, x,
                                                         method=Classifier.classify)

    def on_images(params, x, train, rng):
        rngs = {"dropout": rng} if rng is not None else {}
        return model.apply({"params": params}, x, train=train, rngs=rngs)

    return on_images


def grouped_optimizer(config: supervised.SupervisedConfig,
                      groups: Groups) -> optax.GradientTransformation:
    """The run's optimizer per group at the group's rate; frozen groups still and stateless."""

    def at_rate(rate: float) -> optax.GradientTransformation:
        return supervised.make_optimizer(dataclasses.replace(
            config, learning_rate=rate, grad_clip_norm=None))

    grouped = pg.make_grouped_optimizer(groups.labels, groups.rates, at_rate)
    if config.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), grouped)
    return grouped


def l2_sp(backbone: Any, alpha: float, beta: float) -> Penalty:
    """L2-SP's penalty of (params, state.extra), anchored at extra['l2_sp_anchor']."""
    return lambda params, extra: pg.l2_sp_penalty(params, extra["l2_sp_anchor"], backbone,
                                                  alpha, beta)


def _update(logits: LogitsFn, groups: Groups, optimizer: optax.GradientTransformation,
            penalty: Penalty | None, params, opt_state, extra, batch, rng):
    """One update of the trainable groups: (params, opt_state, metrics)."""
    trainable, frozen = pg.split_trainable(params, groups.labels, groups.frozen)
    labels = batch["y"][LABEL]

    def loss_fn(trained):
        full = pg.merge(trained, frozen)
        out = logits(full, batch["x"], True, rng)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
        metrics = {"accuracy": jnp.mean(jnp.argmax(out, -1) == labels)}
        loss = cross_entropy
        if penalty is not None:
            metrics["cross_entropy"] = cross_entropy
            metrics["penalty"] = penalty(full, extra)
            loss = cross_entropy + metrics["penalty"]
        return loss, dict(metrics, loss=loss)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    all_grads = pg.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt_state = optimizer.update(all_grads, opt_state, params)
    trained_updates, _ = pg.split_trainable(updates, groups.labels, groups.frozen)
    params = pg.merge(optax.apply_updates(trainable, trained_updates), frozen)
    return params, opt_state, dict(metrics, grad_norm=optax.tree.norm(grads))


def make_train_step(logits: LogitsFn, groups: Groups, optimizer: optax.GradientTransformation,
                    seed: int, penalty: Penalty | None = None) -> train_state.StepFn:
    """One grouped update per step (every strategy but LP-FT); for `train_state.jit_step`."""

    def step(state: train_state.TrainState, batch):
        rng = supervised.dropout_key(seed, state.step)
        params, opt_state, metrics = _update(logits, groups, optimizer, penalty, state.params,
                                             state.opt_state, state.extra, batch, rng)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def lp_ft_state(params, probe_optimizer: optax.GradientTransformation,
                finetune_optimizer: optax.GradientTransformation) -> train_state.TrainState:
    """LP-FT's initial state: both phases' optimizer states, so its layout never changes."""
    state = train_state.create(params, {}, optax.identity())
    return state.replace(opt_state={"probe": probe_optimizer.init(params),
                                    "finetune": finetune_optimizer.init(params)})


def make_lp_ft_step(logits: LogitsFn, probe: tuple[Groups, optax.GradientTransformation],
                    finetune: tuple[Groups, optax.GradientTransformation], lp_steps: int,
                    seed: int) -> train_state.StepFn:
    """LP-FT's step: the probe's update while `step < lp_steps`, then fine-tuning's.

    Args:
      logits: the network's logits on images.
      probe: (head-only groups, their optimizer), for steps 0..lp_steps-1.
      finetune: (per-block groups, their optimizer), from step lp_steps on.
      lp_steps: steps of linear probing.
      seed: the run's seed (dropout keys).
    """

    def phase(name: str, groups: Groups, optimizer: optax.GradientTransformation, probing):
        def run(operands):
            params, opt_states, extra, batch, rng = operands
            params, opt_state, metrics = _update(logits, groups, optimizer, None, params,
                                                 opt_states[name], extra, batch, rng)
            metrics = dict(metrics, probing=jnp.float32(probing))
            return params, dict(opt_states, **{name: opt_state}), metrics
        return run

    def step(state: train_state.TrainState, batch):
        rng = supervised.dropout_key(seed, state.step)
        params, opt_state, metrics = jax.lax.cond(
            state.step < lp_steps, phase("probe", *probe, 1.0), phase("finetune", *finetune, 0.0),
            (state.params, state.opt_state, state.extra, batch, rng))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_eval_step(logits: LogitsFn) -> Callable[[Any, Any], dict[str, jax.Array]]:
    """Per-example accuracy and cross-entropy, for `core.evaluate.evaluate`."""

    def eval_step(state, batch):
        out = logits(state.params, batch["x"], False, None)
        labels = batch["y"][LABEL]
        return {"accuracy": (jnp.argmax(out, -1) == labels).astype(jnp.float32),
                "loss": optax.softmax_cross_entropy_with_integer_labels(out, labels)}

    return eval_step
