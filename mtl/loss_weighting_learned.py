"""Loss weightings with learned weights: UW, GradNorm, FAMO.

Each factory returns a `mtl.loss_weighting_base.LossWeighting`. The learned
weights are not parameters of the caller's model: they live in the
weighting's state next to the state of the weighting's own optax optimizer,
and `update` (FAMO: also `observe`) takes one optimizer step on them from
the stop-gradient losses. The total returned by `update` always uses the
weights from before that step, so the caller's parameter gradient and the
weight step are taken at the same point, as in joint training.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.errors import ConfigError
from mtl import loss_weighting_base as base
from mtl.loss_weighting_base import LossWeighting


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


class UwState(NamedTuple):
    """State of `uw`: the log-variances s [K] and their optimizer's state."""

    log_vars: jax.Array
    opt_state: optax.OptState


def uw(lr: float = 1e-3, init_log_var: float = -0.5,
       optimizer: optax.GradientTransformation | None = None) -> LossWeighting:
    """Uncertainty weighting (Kendall, Gal & Cipolla 2018, eq. 7 with s_k = log σ_k²).

        L = Σ_k [ L_k / (2 exp(s_k)) + s_k / 2 ],   ∂L/∂s_k = 1/2 − L_k / (2 exp(s_k))

    so for constant losses s_k → log L_k (the fixed point exp(s_k) = L_k).
    The same form is used for every task type (as LibMTL does). `update`
    returns that L (weights 1 / (2 exp(s_k))) and takes one step of
    `optimizer` on s with the gradient above.

    Args:
      lr: learning rate of the default optimizer, Adam. LibMTL trains s with
        the model's optimizer: pass the model's learning rate to match it.
      init_log_var: s_k at step 0 (LibMTL: −0.5).
      optimizer: overrides Adam(lr).
    """
    if optimizer is None:
        optimizer = optax.adam(_positive("uw lr", lr))
    init_log_var = float(init_log_var)

    def init(num_tasks: int) -> UwState:
        log_vars = jnp.full((num_tasks,), init_log_var, jnp.float32)
        return UwState(log_vars=log_vars, opt_state=optimizer.init(log_vars))

    def objective(log_vars, losses):
        return jnp.sum(losses / (2.0 * jnp.exp(log_vars)) + log_vars / 2.0)

    def update(losses, state: UwState, *, key=None, aux=None):
        del key, aux
        losses = base.check_losses(losses, state.log_vars.shape[0])
        log_vars = jax.lax.stop_gradient(state.log_vars)
        total = objective(log_vars.astype(losses.dtype), losses)
        weights = jax.lax.stop_gradient(1.0 / (2.0 * jnp.exp(log_vars)))
        grads = jax.grad(objective)(log_vars, jax.lax.stop_gradient(losses).astype(jnp.float32))
        new_log_vars, opt_state = base.optimizer_step(optimizer, log_vars, state.opt_state, grads)
        return total, weights, UwState(new_log_vars, opt_state)

    return LossWeighting(init, update)


class GradNormState(NamedTuple):
    """State of `gradnorm`.

    Attributes:
      weights: w [K], Σ_k w_k = K.
      opt_state: the state of the optimizer of w.
      initial_losses: L_k(0), the losses of the first update [K].
      count: number of updates done (int32).
    """

    weights: jax.Array
    opt_state: optax.OptState
    initial_losses: jax.Array
    count: jax.Array


def gradnorm(alpha: float = 1.5, lr: float = 1e-3,
             optimizer: optax.GradientTransformation | None = None) -> LossWeighting:
    """GradNorm (Chen et al. 2018, eqs. 1-2) on caller-supplied gradient norms.

    With g_k = ‖∇_W L_k‖₂ for the last shared layer W (aux["task_grad_norms"],
    see `loss_weighting_base.task_gradient_norms`), so G_k = ‖∇_W w_k L_k‖ = w_k g_k:

        Ḡ = mean_k G_k,   L̃_k = L_k(t) / L_k(0),   r_k = L̃_k / mean_j L̃_j
        L_grad(w) = Σ_k | w_k g_k − Ḡ · r_k^α |      (target Ḡ · r_k^α held constant)
        w ← step of `optimizer` on ∇_w L_grad;  w ← max(w, 0);  w ← K w / Σ_k w

    `update` returns L = Σ_k w_k L_k with the weights before the step (w = 1
    at step 0). Clipping at 0 before renormalising keeps every task's
    gradient sign; the paper does not say what to do with a negative weight.

    Args:
      alpha: α, the restoring-force strength (LibMTL: 1.5; toy ports: 0.12).
      lr: learning rate of the default optimizer, Adam (ports use 1e-4 to
        1e-3; LibMTL uses the model's optimizer).
      optimizer: overrides Adam(lr).
    """
    alpha = _non_negative("gradnorm alpha", alpha)
    if optimizer is None:
        optimizer = optax.adam(_positive("gradnorm lr", lr))

    def init(num_tasks: int) -> GradNormState:
        weights = jnp.ones((num_tasks,), jnp.float32)
        return GradNormState(weights=weights, opt_state=optimizer.init(weights),
                             initial_losses=jnp.ones((num_tasks,), jnp.float32),
                             count=jnp.zeros((), jnp.int32))

    def update(losses, state: GradNormState, *, key=None, aux=None):
        del key
        num_tasks = state.weights.shape[0]
        losses = base.check_losses(losses, num_tasks)
        norms = base.require_aux(aux, base.TASK_GRAD_NORMS, num_tasks, "gradnorm")
        norms = norms.astype(jnp.float32)
        current = jax.lax.stop_gradient(losses).astype(jnp.float32)
        initial = jnp.where(state.count == 0, current, state.initial_losses)
        weights = jax.lax.stop_gradient(state.weights)
        total, _ = base.linear_total(losses, weights)
        ratios = current / initial
        rates = ratios / jnp.mean(ratios)
        target = jnp.mean(weights * norms) * rates ** alpha

        def grad_loss(w):
            return jnp.sum(jnp.abs(w * norms - target))

        new_weights, opt_state = base.optimizer_step(optimizer, weights, state.opt_state,
                                                     jax.grad(grad_loss)(weights))
        new_weights = jnp.maximum(new_weights, 0.0)
        new_weights = num_tasks * new_weights / jnp.sum(new_weights)
        new_state = GradNormState(weights=new_weights, opt_state=opt_state,
                                  initial_losses=initial, count=state.count + 1)
        return total, weights, new_state

    return LossWeighting(init, update, requires=frozenset({base.TASK_GRAD_NORMS}))


class FamoState(NamedTuple):
    """State of `famo`.

    Attributes:
      logits: ξ [K]; the task distribution is z = softmax(ξ).
      opt_state: the state of the optimizer of ξ.
      prev_log_d: log D of the losses of the last `update` [K].
      pending: whether `prev_log_d` still waits for its ξ step (bool).
    """

    logits: jax.Array
    opt_state: optax.OptState
    prev_log_d: jax.Array
    pending: jax.Array


def famo(w_lr: float = 0.025, gamma: float = 1e-3, min_losses: float | Sequence[float] = 0.0,
         optimizer: optax.GradientTransformation | None = None) -> LossWeighting:
    """FAMO, fast adaptive multitask optimization (Liu et al. 2023; Cranial-XIX/FAMO famo.py).

        z = softmax(ξ),  D = L − L_min + 1e-8,  c = Σ_k z_k / D_k        (c constant)
        L_FAMO = Σ_k (z_k / c) log D_k,  so  ∇L_FAMO = Σ_k z_k / (c D_k) ∇L_k
        after the model step:  δ = log D(before) − log D(after)
        ξ.grad = J_softmax(ξ)ᵀ δ;   ξ ← Adam(lr = w_lr, L2 weight decay γ)

    (γ is added to the gradient before Adam, like torch's Adam weight_decay.)
    `update` returns L_FAMO with weights z_k / (c D_k), which sum to 1.

    Timing of the ξ step, which needs the losses *after* the model step:

    * exact (as the reference): after the model step, evaluate the task
      losses of the same batch with the new parameters and call
      `observe(losses_after, state)`; it takes the ξ step with δ =
      log D(before) − log D(after). One extra forward pass per step.
    * lagged (no `observe` call, O(1) extra cost): the next `update` uses its
      own losses (new parameters, next batch) as the "after" values and takes
      the ξ step before weighting them. With full-batch training both give
      the same trajectory; with minibatches δ also holds the batch-to-batch
      change of the losses.

    The state's `pending` flag makes the two compose: `observe` consumes the
    last `update`'s log D, and `update` steps ξ only if it is still pending.

    Args:
      w_lr: learning rate of ξ (0.025 in LibMTL and every FAMO run.sh).
      gamma: γ, the weight decay of ξ (1e-3; 0 on the 2-D toy).
      min_losses: L_min, a scalar or one value per task (0: losses ≥ 0).
      optimizer: overrides chain(add_decayed_weights(γ), adam(w_lr)).
    """
    if optimizer is None:
        optimizer = optax.chain(optax.add_decayed_weights(_non_negative("famo gamma", gamma)),
                                optax.adam(_positive("famo w_lr", w_lr)))
    minimum = np.asarray(min_losses, np.float32)
    if minimum.ndim > 1 or not np.all(np.isfinite(minimum)):
        raise ConfigError(f"famo min_losses must be a finite number or one per task, got "
                          f"{min_losses!r}.")

    def min_for(num_tasks: int) -> jax.Array:
        if minimum.ndim == 1 and minimum.size != num_tasks:
            raise ConfigError(f"famo min_losses has {minimum.size} values for {num_tasks} "
                              f"tasks.")
        return jnp.broadcast_to(jnp.asarray(minimum), (num_tasks,))

    def log_d(losses):
        return jnp.log(losses - min_for(losses.shape[0]) + 1e-8)

    def logit_step(state: FamoState, delta):
        _, softmax_vjp = jax.vjp(jax.nn.softmax, state.logits)
        (grads,) = softmax_vjp(delta)
        return base.optimizer_step(optimizer, state.logits, state.opt_state, grads)

    def init(num_tasks: int) -> FamoState:
        min_for(num_tasks)
        logits = jnp.zeros((num_tasks,), jnp.float32)
        return FamoState(logits=logits, opt_state=optimizer.init(logits),
                         prev_log_d=jnp.zeros((num_tasks,), jnp.float32),
                         pending=jnp.zeros((), jnp.bool_))

    def update(losses, state: FamoState, *, key=None, aux=None):
        del key, aux
        losses = base.check_losses(losses, state.logits.shape[0])
        current = log_d(jax.lax.stop_gradient(losses).astype(jnp.float32))
        stepped = logit_step(state, state.prev_log_d - current)
        logits, opt_state = base.tree_select(state.pending, stepped,
                                             (state.logits, state.opt_state))
        z = jax.nn.softmax(logits).astype(losses.dtype)
        d = losses - min_for(losses.shape[0]).astype(losses.dtype) + 1e-8
        c = jax.lax.stop_gradient(jnp.sum(z / d))
        total = jnp.sum(z / c * jnp.log(d))
        weights = jax.lax.stop_gradient(z / (c * d))
        new_state = FamoState(logits=logits, opt_state=opt_state, prev_log_d=current,
                              pending=jnp.ones((), jnp.bool_))
        return total, weights, new_state

    def observe(losses_after, state: FamoState) -> FamoState:
        losses_after = base.check_losses(losses_after, state.logits.shape[0])
        after = log_d(jax.lax.stop_gradient(losses_after).astype(jnp.float32))
        logits, opt_state = base.tree_select(
            state.pending, logit_step(state, state.prev_log_d - after),
            (state.logits, state.opt_state))
        return state._replace(logits=logits, opt_state=opt_state,
                              pending=jnp.zeros((), jnp.bool_))

    return LossWeighting(init, update, observe, requires=frozenset({base.OBSERVE}))
