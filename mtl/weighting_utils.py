"""Shared pieces of the weightings: dtype, hyper-parameter checks, preference vectors.

A *weighting* is a pure function `weights = fn(gramian, key=None)` mapping the k x k
Gramian of the task gradients to k weights (see `mtl.weightings`).
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from core.errors import ConfigError

Weighting = Callable[..., jax.Array]


def as_float(gramian: jax.Array) -> jax.Array:
    """The Gramian in a float dtype of at least 32 bits (bf16 Gramians lose the solvers)."""
    gramian = jnp.asarray(gramian)
    return gramian.astype(jnp.promote_types(gramian.dtype, jnp.float32))


def check_weights(name: str, weights: Sequence[float] | None) -> tuple[float, ...] | None:
    """Validates a constant weight / preference vector: finite and non-negative."""
    if weights is None:
        return None
    try:
        values = tuple(float(v) for v in weights)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a sequence of numbers, got {weights!r}") from err
    if not values:
        raise ConfigError(f"{name} must hold one weight per task, got an empty sequence")
    if any(not math.isfinite(v) or v < 0.0 for v in values):
        raise ConfigError(f"{name} must be finite and non-negative, got {list(values)}")
    return values


def weights_for(name: str, values: tuple[float, ...], k: int, dtype) -> jax.Array:
    """The constant vector as an array, after checking it has one entry per task."""
    if len(values) != k:
        raise ConfigError(
            f"{name} has {len(values)} weights but the Jacobian has {k} tasks (rows)"
        )
    return jnp.asarray(values, dtype=dtype)


def preference(name: str, values: tuple[float, ...] | None, k: int, dtype) -> jax.Array:
    """A preference vector: the given constants, or the mean weights 1/k when None."""
    if values is None:
        return jnp.full((k,), 1.0 / k, dtype=dtype)
    return weights_for(name, values, k, dtype)


def require_key(method: str, key) -> jax.Array:
    """The PRNG key of a random method, or a ConfigError saying how to pass one."""
    if key is None:
        raise ConfigError(f"{method} is random: call it with a PRNG key, fn(matrix, key)")
    return key
