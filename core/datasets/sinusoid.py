"""The sinusoid regression task family of Finn et al. (2017, §5.1).

A task is y = A·sin(x − φ) with amplitude A ~ U[0.1, 5.0] and phase
φ ~ U[0, π]; inputs x ~ U[−5, 5] (cbfinn/maml data_generator.py). Tasks are
generated on the accelerator from a PRNG key, so batch `i` of a stream is a
pure function of (key, i): runs are reproducible and resumable without saving
any sampler state.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from core.datasets.episodes import Episode


@dataclasses.dataclass(frozen=True)
class SinusoidFamily:
    """Ranges of the sinusoid task distribution.

    Attributes:
      amplitude: (low, high) of A.
      phase: (low, high) of φ.
      x_range: (low, high) of the inputs.
    """

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)


def sample_tasks(key: jax.Array, batch_size: int, num_support: int, num_query: int,
                 family: SinusoidFamily = SinusoidFamily()) -> Episode:
    """Samples a meta-batch of sinusoid tasks.

    Args:
      key: PRNG key.
      batch_size: number of tasks B.
      num_support: K, support points per task.
      num_query: query points per task.
      family: the task distribution.

    Returns:
      An `Episode` with x and y of shape [B, K or Q, 1] (float32).
    """
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_amp, (batch_size, 1, 1), minval=family.amplitude[0],
                             maxval=family.amplitude[1])
    phase = jax.random.uniform(k_phase, (batch_size, 1, 1), minval=family.phase[0],
                               maxval=family.phase[1])
    x = jax.random.uniform(k_x, (batch_size, num_support + num_query, 1),
                           minval=family.x_range[0], maxval=family.x_range[1])
    y = amp * jnp.sin(x - phase)
    return Episode(support_x=x[:, :num_support], support_y=y[:, :num_support],
                   query_x=x[:, num_support:], query_y=y[:, num_support:])


def batch_key(seed_key: jax.Array, index: int | jax.Array) -> jax.Array:
    """The key of batch `index` of the stream started from `seed_key`."""
    return jax.random.fold_in(seed_key, index)
