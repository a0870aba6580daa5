"""Loss weightings without learned parameters: static, EW/LS, GLS, RLW, DWA.

Each factory returns a `mtl.loss_weighting_base.LossWeighting`; see that module
for the calling convention. `weights` is always ∂ total / ∂ L_k.

| name            | total                          | weights w_k                    |
|-----------------|--------------------------------|--------------------------------|
| static          | Σ_k c_k L_k                    | c_k (user constants, ≥ 0)      |
| equal           | (1/K) Σ_k L_k                  | 1/K                            |
| sum             | Σ_k L_k                        | 1                              |
| scale_invariant | Σ_k log L_k                    | 1/L_k                          |
| gls             | (Π_k L_k)^{1/K}                | (Π_j L_j)^{1/K} / (K L_k)      |
| rlw             | Σ_k softmax(z)_k L_k, z~N(0,I) | softmax(z)_k (sum to 1)        |
| dwa             | Σ_k w_k L_k                    | K softmax(r/T)_k, r = ratio of |
|                 |                                | the last two epoch means       |

`scale_invariant` and `gls` take logarithms: the losses must be positive.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.errors import ConfigError
from mtl import loss_weighting_base as base
from mtl.loss_weighting_base import LossWeighting


def _stateless(total_and_weights, requires: frozenset = frozenset()) -> LossWeighting:
    """A `LossWeighting` whose state is `optax.EmptyState()`."""

    def init(num_tasks: int) -> optax.EmptyState:
        del num_tasks
        return optax.EmptyState()

    def update(losses, state, *, key=None, aux=None):
        del aux
        total, weights = total_and_weights(base.check_losses(losses), key)
        return total, jax.lax.stop_gradient(weights), state

    return LossWeighting(init, update, requires=requires)


def static(weights: Sequence[float]) -> LossWeighting:
    """Fixed user weights: L = Σ_k c_k L_k.

    Args:
      weights: c, one non-negative finite weight per task, not all zero.

    Raises:
      ConfigError: if `weights` is not such a list, or (at `init`/`update`)
        its length is not the number of tasks.
    """
    try:
        values = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"static loss weights must be a list of numbers, got {weights!r}.") from e
    if values.ndim != 1 or values.size == 0:
        raise ConfigError(f"static loss weights must be a non-empty list, one per task; got "
                          f"{weights!r}.")
    if not np.all(np.isfinite(values)) or np.any(values < 0) or not np.any(values > 0):
        raise ConfigError(f"static loss weights must be finite and >= 0, not all zero; got "
                          f"{weights!r}.")
    count = values.size

    def check_count(num_tasks: int) -> None:
        if num_tasks != count:
            raise ConfigError(f"{count} static loss weights given for {num_tasks} tasks; give "
                              f"one weight per task.")

    def total_and_weights(losses, key):
        del key
        check_count(losses.shape[0])
        return base.linear_total(losses, jnp.asarray(values, losses.dtype))

    weighting = _stateless(total_and_weights)

    def init(num_tasks: int) -> optax.EmptyState:
        check_count(num_tasks)
        return optax.EmptyState()

    return weighting._replace(init=init)


def equal() -> LossWeighting:
    """Equal weighting (EW): L = (1/K) Σ_k L_k."""
    return _stateless(lambda losses, key: base.linear_total(
        losses, jnp.full(losses.shape, 1.0 / losses.shape[0], losses.dtype)))


def sum_() -> LossWeighting:
    """Linear scalarisation (LS): L = Σ_k L_k."""
    return _stateless(lambda losses, key: base.linear_total(losses, jnp.ones_like(losses)))


def scale_invariant() -> LossWeighting:
    """Scale-invariant LS: L = Σ_k log L_k, so ∇L = Σ_k ∇L_k / L_k (needs L_k > 0)."""

    def total_and_weights(losses, key):
        del key
        return jnp.sum(jnp.log(losses)), 1.0 / losses

    return _stateless(total_and_weights)


def gls() -> LossWeighting:
    """Geometric loss strategy (Chennupati et al. 2019): L = (Π_k L_k)^{1/K}.

    Computed as exp(mean_k log L_k) (needs L_k > 0), whose gradient is
    Σ_k L / (K L_k) ∇L_k.
    """

    def total_and_weights(losses, key):
        del key
        total = jnp.exp(jnp.mean(jnp.log(losses)))
        return total, total / (losses.shape[0] * losses)

    return _stateless(total_and_weights)


def rlw() -> LossWeighting:
    """Random loss weighting (Lin et al. 2022): w = softmax(z), z ~ N(0, I_K), fresh each step.

    `update` needs `key` (e.g. `weighting_key(seed, step)`); the weights are a
    function of the key only.
    """

    def total_and_weights(losses, key):
        if key is None:
            raise ValueError("The 'rlw' loss weighting needs a PRNG key: "
                             "update(losses, state, key=weighting_key(seed, step)).")
        z = jax.random.normal(key, losses.shape, losses.dtype)
        return base.linear_total(losses, jax.nn.softmax(z))

    return _stateless(total_and_weights, requires=frozenset({base.KEY}))


class DwaState(NamedTuple):
    """State of `dwa`.

    Attributes:
      count: number of updates done (int32).
      epoch_sum: Σ of the stop-gradient losses of the current epoch [K].
      last_mean: L̄(e − 1), the mean losses of the last complete epoch [K].
      before_last_mean: L̄(e − 2) [K].
    """

    count: jax.Array
    epoch_sum: jax.Array
    last_mean: jax.Array
    before_last_mean: jax.Array


def dwa(steps_per_epoch: int, temperature: float = 2.0) -> LossWeighting:
    """Dynamic weight average (Liu, Johns & Davison 2019, eq. 3).

        r_k(e − 1) = L̄_k(e − 1) / L̄_k(e − 2),   w_k(e) = K softmax_k(r(e − 1) / T)

    with L̄_k(e) the mean training loss of task k over epoch e (0-based); w = 1
    during epochs 0 and 1. Epoch e is updates [e·steps_per_epoch,
    (e + 1)·steps_per_epoch) of this state's own counter, so every epoch must
    have exactly `steps_per_epoch` steps (drop the last partial batch).

    Args:
      steps_per_epoch: updates per epoch (static).
      temperature: T.

    Raises:
      ConfigError: if `steps_per_epoch` < 1 or `temperature` <= 0.
    """
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, (int, np.integer)) \
            or steps_per_epoch < 1:
        raise ConfigError(f"dwa steps_per_epoch must be an integer >= 1, got "
                          f"{steps_per_epoch!r}.")
    if not temperature > 0:
        raise ConfigError(f"dwa temperature must be > 0, got {temperature!r}.")
    steps_per_epoch = int(steps_per_epoch)

    def init(num_tasks: int) -> DwaState:
        # Separate buffers: a train step donates its state, and XLA refuses to
        # donate one buffer twice.
        zeros = lambda: jnp.zeros((num_tasks,), jnp.float32)
        return DwaState(count=jnp.zeros((), jnp.int32), epoch_sum=zeros(), last_mean=zeros(),
                        before_last_mean=zeros())

    def update(losses, state: DwaState, *, key=None, aux=None):
        del key, aux
        num_tasks = state.epoch_sum.shape[0]
        losses = base.check_losses(losses, num_tasks)
        epoch = state.count // steps_per_epoch
        ratio = state.last_mean / jnp.where(epoch >= 2, state.before_last_mean, 1.0)
        weights = jnp.where(epoch >= 2, num_tasks * jax.nn.softmax(ratio / temperature), 1.0)
        total, weights = base.linear_total(losses, weights)
        epoch_sum = state.epoch_sum + jax.lax.stop_gradient(losses).astype(jnp.float32)
        ends = (state.count + 1) % steps_per_epoch == 0
        new_state = DwaState(
            count=state.count + 1,
            epoch_sum=jnp.where(ends, 0.0, epoch_sum),
            last_mean=jnp.where(ends, epoch_sum / steps_per_epoch, state.last_mean),
            before_last_mean=jnp.where(ends, state.last_mean, state.before_last_mean))
        return total, weights, new_state

    return LossWeighting(init, update)
