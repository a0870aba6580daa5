"""The interface every multi-task loss weighting implements, and its helpers.

A loss weighting turns the vector of per-task losses L = (L_1, ..., L_K)
into the one scalar a train step differentiates. It is a `LossWeighting`
of pure functions, in the style of an optax transformation:

    state = weighting.init(num_tasks)
    total, weights, state = weighting.update(losses, state, key=key, aux=aux)
    state = weighting.observe(losses_after, state)      # optional, see below

The calling convention of a train step (weighting state in `TrainState.extra`)::

    def loss_fn(params):
        losses = task_losses(params, batch)                  # [K], differentiable
        total, weights, extra = weighting.update(losses, state.extra, key=key, aux=aux)
        return total, (losses, weights, extra)

    (_, (losses, weights, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = train_state.apply_gradients(state, grads, optimizer, extra=extra)
    # Optional, for weightings with "observe" in `requires` (FAMO's exact variant):
    # the losses of the same batch after the model step.
    state = state.replace(extra=weighting.observe(task_losses(state.params, batch),
                                                  state.extra))

* `total` is differentiable with respect to whatever `losses` depends on;
  `weights[k] = ∂ total / ∂ L_k` (evaluated, stop-gradient), the coefficient
  of ∇L_k in ∇total, for logging.
* Learnable loss weights (UW's log-variances, GradNorm's weights, FAMO's
  logits) are *not* parameters of the caller: they live in the state with
  their own optax optimizer state and are updated inside `update` (or
  `observe`) from the stop-gradient losses and `aux`. For UW this is the same
  as optimising them jointly with the model under a separate optimizer
  (their gradient depends only on the current losses); for GradNorm and FAMO
  the weights have their own objective anyway. The caller's parameter
  gradients always use the weights *before* this step's weight update.
* Every state is a NamedTuple of jax arrays with a fixed structure (counters
  are int32 arrays, flags bool arrays), so it can sit in `TrainState.extra`,
  be donated, and be checkpointed and restored bit-for-bit.
* Step counters (DWA's epochs, GradNorm's first step) are kept in the
  state, not taken from the caller, so a restored state continues exactly.
* Randomised weightings (RLW) take `key`; derive it from the run's seed and
  the step with `weighting_key(seed, step)` so a resumed run draws the same
  weights.

`requires` tells the caller what a weighting needs beyond the losses:
"key" (a PRNG key), `TASK_GRAD_NORMS` (aux["task_grad_norms"], the norms
‖∇_W L_k‖ with respect to the last shared layer W, see `task_gradient_norms`)
and "observe" (the weighting can use `observe` for its exact variant).
"""

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from core import supervised

State = Any
Aux = Mapping[str, jax.Array]
InitFn = Callable[[int], State]
UpdateFn = Callable[..., tuple[jax.Array, jax.Array, State]]
ObserveFn = Callable[[jax.Array, State], State]

TASK_GRAD_NORMS = "task_grad_norms"
KEY = "key"
OBSERVE = "observe"

# Folded into the dropout key so that weighting draws and dropout masks differ.
_WEIGHTING_KEY_TAG = 0x6D746C


def no_observe(losses_after: jax.Array, state: State) -> State:
    """The `observe` of weightings that do not use post-step losses: the identity."""
    del losses_after
    return state


class LossWeighting(NamedTuple):
    """A loss weighting: pure functions over an explicit state.

    Attributes:
      init: `init(num_tasks) -> state`.
      update: `update(losses, state, *, key=None, aux=None) -> (total, weights,
        new_state)`; jit-able, `losses` of shape [num_tasks].
      observe: `observe(losses_after, state) -> state`, fed the losses of the
        same batch after the model step; the identity unless "observe" is in
        `requires`.
      requires: what the caller must (or, for "observe", may) supply: a subset
        of {"key", "task_grad_norms", "observe"}.
    """

    init: InitFn
    update: UpdateFn
    observe: ObserveFn = no_observe
    requires: frozenset = frozenset()


def weighting_key(seed: int, step: jax.Array) -> jax.Array:
    """The PRNG key of a randomised weighting at training step `step`.

    A pure function of (seed, step), derived like `core.supervised.dropout_key`
    and folded with a fixed tag so it differs from the dropout key.
    """
    return jax.random.fold_in(supervised.dropout_key(seed, step), _WEIGHTING_KEY_TAG)


def task_gradient_norms(losses_fn: Callable[[Any], jax.Array],
                        shared_params: Any) -> tuple[jax.Array, jax.Array]:
    """Per-task gradient norms g_k = ‖∇_W L_k‖₂ for GradNorm.

    One forward pass and K vector-Jacobian products (vmapped), so the cost is
    that of K backward passes through the part of the network after W.

    Args:
      losses_fn: `W -> losses [K]`, the task losses as a function of the
        last shared layer's parameters W (the rest of the model closed over).
      shared_params: W, any pytree.

    Returns:
      (losses [K], norms [K]), both stop-gradient.
    """
    losses, vjp = jax.vjp(losses_fn, shared_params)
    num_tasks = losses.shape[0]
    (per_task,) = jax.vmap(vjp)(jnp.eye(num_tasks, dtype=losses.dtype))
    squares = sum(jnp.sum(jnp.reshape(g, (num_tasks, -1)) ** 2, axis=1)
                  for g in jax.tree.leaves(per_task))
    return jax.lax.stop_gradient(losses), jax.lax.stop_gradient(jnp.sqrt(squares))


def check_losses(losses: jax.Array, num_tasks: int | None = None) -> jax.Array:
    """`losses` as an array of shape [num_tasks] (checked at trace time).

    Raises:
      ValueError: if `losses` is not a vector, or not of length `num_tasks`.
    """
    losses = jnp.asarray(losses)
    if losses.ndim != 1 or losses.shape[0] == 0:
        raise ValueError(f"losses must be a non-empty vector [num_tasks], got shape "
                         f"{losses.shape}.")
    if num_tasks is not None and losses.shape[0] != num_tasks:
        raise ValueError(f"losses has {losses.shape[0]} tasks but the weighting state was "
                         f"initialised for {num_tasks}.")
    return losses


def require_aux(aux: Aux | None, name: str, num_tasks: int, method: str) -> jax.Array:
    """`aux[name]`, a stop-gradient vector [num_tasks].

    Raises:
      ValueError: if the caller did not supply it or its shape is wrong.
    """
    if aux is None or name not in aux or aux[name] is None:
        raise ValueError(f"The {method!r} loss weighting needs aux[{name!r}] (shape "
                         f"[{num_tasks}]); see LossWeighting.requires.")
    value = jnp.asarray(aux[name])
    if value.shape != (num_tasks,):
        raise ValueError(f"aux[{name!r}] must have shape ({num_tasks},), got {value.shape}.")
    return jax.lax.stop_gradient(value)


def linear_total(losses: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ_k w_k L_k, w) with the weights w held constant (stop-gradient)."""
    weights = jax.lax.stop_gradient(weights).astype(losses.dtype)
    return jnp.sum(weights * losses), weights


def optimizer_step(optimizer: optax.GradientTransformation, params: jax.Array, opt_state: Any,
                   grads: jax.Array) -> tuple[jax.Array, Any]:
    """One optax update of a weighting's own parameters."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def tree_select(predicate: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise `jnp.where(predicate, on_true, on_false)` of two like pytrees."""
    return jax.tree.map(lambda a, b: jnp.where(predicate, a, b), on_true, on_false)
