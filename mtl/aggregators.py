"""Aggregators: the k x n Jacobian J of the task losses -> one update direction (n,).

Row i of J is the flattened gradient of task i's loss w.r.t. the shared parameters (e.g.
`jax.flatten_util.ravel_pytree` of each task's gradient, stacked). Most methods are
Gramian-based, `A(J) = w(J J^T)^T J`: their `Aggregator` carries the `weighting` (a pure
`fn(gramian, key=None)` from `mtl.weightings`) so a caller who can form the Gramian
without J uses it directly. ConFIG and GradDrop need J itself (`gramian_based=False`).

Build every method from the one registry, by name and hyper-parameters:

    agg = make_aggregator("upgrad")            # or "cagrad", c=0.5; "constant", weights=[1, 2]
    update, weights = jax.jit(agg)(jacobian, key)   # weights is None for config / graddrop

Everything is pure and jit-able with static hyper-parameters and fixed shapes; random
methods (pcgrad, graddrop, random) take their PRNG key explicitly.
"""

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from core.errors import ConfigError
from mtl import weightings as wt
from mtl.weighting_utils import as_float, check_weights, preference, require_key

Update = tuple[jax.Array, jax.Array | None]


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A built aggregator: `update, weights = agg(jacobian [k, n], key=None)`.

    Attributes:
      name: registry name.
      gramian_based: True when `update = weights @ jacobian` with
        `weights = weighting(jacobian @ jacobian.T, key)`.
      weighting: the Gramian -> weights function (None when not `gramian_based`).
      direct: the Jacobian -> (update, weights) function of the other methods.
      random: whether a PRNG key is required.
    """

    name: str
    gramian_based: bool
    weighting: Callable[..., jax.Array] | None = None
    direct: Callable[..., Update] | None = None
    random: bool = False

    def __call__(self, jacobian: jax.Array, key: jax.Array | None = None) -> Update:
        jacobian = jnp.asarray(jacobian)
        if jacobian.ndim != 2:
            raise ConfigError(
                f"{self.name} needs a [k, n] Jacobian (one row per task), got shape "
                f"{jacobian.shape}"
            )
        if not self.gramian_based:
            return self.direct(jacobian, key)
        j = as_float(jacobian)
        weights = self.weighting(j @ j.T, key)
        return (weights @ j).astype(jacobian.dtype), weights


def _gramian(name, weighting, random=False) -> Aggregator:
    return Aggregator(name=name, gramian_based=True, weighting=weighting, random=random)


def _config_update(jacobian, values):
    """ConFIG (Liu et al. 2024, Eq. 2), as in TorchJD:

        u_i = g_i / ||g_i||,   d = U^+ p  (p = pref, default ones),   e = d / ||d||
        A(J) = (sum_i <g_i, e>) e

    When U has full row rank, `U d = p`: the cosines between e and the task gradients are
    proportional to p (all equal by default); the length is the sum of the projections.
    """
    j = as_float(jacobian)
    norms = jnp.linalg.norm(j, axis=1, keepdims=True)
    units = jnp.where(norms > 0.0, j / jnp.where(norms > 0.0, norms, 1.0), 0.0)
    p = jnp.ones(j.shape[0], j.dtype) if values is None else preference(
        "config pref", values, j.shape[0], j.dtype
    )
    direction = jnp.linalg.pinv(units) @ p
    unit = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-12)
    return (jnp.sum(j @ unit) * unit).astype(jacobian.dtype), None


def config_aggregator(pref=None) -> Aggregator:
    """ConFIG: a conflict-free direction equally inclined to every task (needs J)."""
    values = check_weights("config pref", pref)
    return Aggregator("config", False, direct=lambda j, key=None: _config_update(j, values))


def _graddrop_update(jacobian, key, leak, purity_fn):
    """GradDrop (Chen et al. 2020, Alg. 1 lines 10-15), as in TorchJD:

        P = 1/2 (1 + sum_i J_i / sum_i |J_i|)   per coordinate (1/2 where every J_i is 0)
        U ~ Uniform(0, 1)^n from `key`
        M_i = [f(P) > U] [J_i > 0] + [f(P) < U] [J_i < 0]
        A(J) = sum_i (l_i + (1 - l_i) M_i) J_i
    """
    key = require_key("graddrop", key)
    j = as_float(jacobian)
    k, n = j.shape
    total, mass = jnp.sum(j, axis=0), jnp.sum(jnp.abs(j), axis=0)
    purity = 0.5 * (1.0 + jnp.where(mass > 0.0, total / jnp.where(mass > 0.0, mass, 1.0), 0.0))
    f_p = purity if purity_fn is None else purity_fn(purity)
    draw = jax.random.uniform(key, (n,), dtype=j.dtype)
    mask = (f_p > draw) & (j > 0.0) | (f_p < draw) & (j < 0.0)
    lk = jnp.zeros((k,), j.dtype) if leak is None else preference("graddrop leak", leak, k, j.dtype)
    keep = lk[:, None] + (1.0 - lk[:, None]) * mask.astype(j.dtype)
    return jnp.sum(keep * j, axis=0).astype(jacobian.dtype), None


def graddrop_aggregator(leak=None, purity_fn: Callable | None = None) -> Aggregator:
    """GradDrop: random sign-consistent masking of the coordinates (needs J and a key).

    Args:
      leak: per-task leak l_i in [0, 1] (default 0: no leak).
      purity_fn: monotonically increasing f applied to the sign purity P (default identity).
    """
    values = check_weights("graddrop leak", leak)
    if values is not None and any(v > 1.0 for v in values):
        raise ConfigError(f"graddrop leak values must lie in [0, 1], got {list(values)}")
    if purity_fn is not None and not callable(purity_fn):
        raise ConfigError(f"graddrop purity_fn must be callable, got {purity_fn!r}")
    return Aggregator(
        "graddrop",
        False,
        direct=lambda j, key=None: _graddrop_update(j, key, values, purity_fn),
        random=True,
    )


AGGREGATORS: dict[str, Callable[..., Aggregator]] = {
    "mean": lambda: _gramian("mean", wt.mean_weighting()),
    "sum": lambda: _gramian("sum", wt.sum_weighting()),
    "constant": lambda weights=None: _gramian("constant", wt.constant_weighting(weights)),
    "mgda": lambda **hp: _gramian("mgda", wt.mgda_weighting(**hp)),
    "pcgrad": lambda shuffle=True: _gramian("pcgrad", wt.pcgrad_weighting(shuffle), shuffle),
    "upgrad": lambda **hp: _gramian("upgrad", wt.upgrad_weighting(**hp)),
    "dualproj": lambda **hp: _gramian("dualproj", wt.dualproj_weighting(**hp)),
    "imtl_g": lambda: _gramian("imtl_g", wt.imtl_g_weighting()),
    "aligned_mtl": lambda **hp: _gramian("aligned_mtl", wt.aligned_mtl_weighting(**hp)),
    "cagrad": lambda **hp: _gramian("cagrad", wt.cagrad_weighting(**hp)),
    "nash_mtl": lambda **hp: _gramian("nash_mtl", wt.nash_mtl_weighting(**hp)),
    "config": config_aggregator,
    "graddrop": graddrop_aggregator,
    "random": lambda: _gramian("random", wt.random_weighting(), random=True),
}

# The hyper-parameters each name accepts, from the factory that defines them.
_SIGNATURES = {
    "mgda": wt.mgda_weighting,
    "upgrad": wt.upgrad_weighting,
    "dualproj": wt.dualproj_weighting,
    "aligned_mtl": wt.aligned_mtl_weighting,
    "cagrad": wt.cagrad_weighting,
    "nash_mtl": wt.nash_mtl_weighting,
}


def make_aggregator(name: str, **hyperparams) -> Aggregator:
    """Builds the aggregator registered as `name` with the given hyper-parameters.

    Raises:
      ConfigError: unknown name (the message lists the known ones), unknown
        hyper-parameter (the message lists the accepted ones) or invalid value.
    """
    if name not in AGGREGATORS:
        known = ", ".join(sorted(AGGREGATORS))
        raise ConfigError(f"unknown aggregator {name!r}; known aggregators: {known}")
    factory = AGGREGATORS[name]
    signature = inspect.signature(_SIGNATURES.get(name, factory))
    try:
        signature.bind(**hyperparams)
    except TypeError as err:
        accepted = ", ".join(signature.parameters) or "none"
        raise ConfigError(
            f"aggregator {name!r}: bad hyper-parameters {sorted(hyperparams)} ({err}); "
            f"accepted: {accepted}"
        ) from err
    return factory(**hyperparams)


MGDA_NORMALIZATIONS = ("l2", "loss", "loss+", "none")


def mgda_normalize(jacobian: jax.Array, losses: jax.Array, mode: str) -> jax.Array:
    """MGDA's gradient normalisation (Sener & Koltun 2018; `gradient_normalizers`).

        g_i <- g_i / n_i,   n_i = ||g_i|| ("l2"), L_i ("loss"), L_i ||g_i|| ("loss+"), 1 ("none")

    The reference solves MGDA on the normalised gradients but applies the resulting
    weights to the raw losses, i.e. `update = w(normalised J)^T J`. A zero n_i leaves
    its row unchanged (the reference would divide by zero).

    Args:
      jacobian: [k, n] task gradients.
      losses: [k] task losses (used by "loss" and "loss+").
      mode: one of "l2", "loss", "loss+", "none".
    """
    if mode not in MGDA_NORMALIZATIONS:
        raise ConfigError(
            f"unknown MGDA normalisation {mode!r}; known: {', '.join(MGDA_NORMALIZATIONS)}"
        )
    jacobian = jnp.asarray(jacobian)
    if mode == "none":
        return jacobian
    norms = jnp.linalg.norm(jacobian, axis=1)
    losses = jnp.asarray(losses, dtype=norms.dtype)
    scale = {"l2": norms, "loss": losses, "loss+": losses * norms}[mode]
    scale = jnp.where(scale != 0.0, scale, 1.0)
    return jacobian / scale[:, None].astype(jacobian.dtype)
