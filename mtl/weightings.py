"""Weightings: the k x k Gramian `G = J J^T` of the task gradients -> task weights w (k,).

Row i of the Jacobian J (k x n) is the gradient of task i's loss w.r.t. the shared
parameters; a Gramian-based aggregator then returns `w^T J` (TorchJD's split). A caller who
can form G without J (e.g. with `G_ij = <g_i, g_j>` accumulated layer by layer) only needs
the weighting.

Each factory takes the method's hyper-parameters and returns a pure function
`weights = fn(gramian, key=None)`, jit-able with fixed shapes; `key` is a PRNG key for the
random methods (PCGrad, RLW) and is ignored by the others. Bad hyper-parameters raise
`core.errors.ConfigError`, at build time when they can be checked then, otherwise (a
weight vector of the wrong length for k) when the function is traced.

The methods that need an iterative solver (`mtl.solvers`) are defined in
`mtl.solver_weightings` and re-exported here; shared helpers are in `mtl.weighting_utils`.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from core.errors import ConfigError
from mtl.solver_weightings import (
    cagrad_weighting,
    dualproj_weighting,
    mgda_weighting,
    nash_mtl_weighting,
    upgrad_weighting,
)
from mtl.weighting_utils import (
    Weighting,
    as_float,
    check_weights,
    preference,
    require_key,
    weights_for,
)


def mean_weighting() -> Weighting:
    """Equal weights `w_i = 1/k`: `A(J) = (1/k) sum_i g_i` (EW / linear scalarisation)."""

    def weights(gramian, key=None):
        del key
        k = gramian.shape[0]
        return jnp.full((k,), 1.0 / k, dtype=as_float(gramian).dtype)

    return weights


def sum_weighting() -> Weighting:
    """Unit weights `w_i = 1`: `A(J) = sum_i g_i`, the gradient of the summed loss."""

    def weights(gramian, key=None):
        del key
        return jnp.ones((gramian.shape[0],), dtype=as_float(gramian).dtype)

    return weights


def constant_weighting(weights: Sequence[float]) -> Weighting:
    """Fixed weights `w = weights` (one non-negative number per task), whatever G is."""
    values = check_weights("constant weights", weights)
    if values is None:
        raise ConfigError("constant needs weights=[w_1, ..., w_k]")

    def fn(gramian, key=None):
        del key
        return weights_for("constant weights", values, gramian.shape[0], as_float(gramian).dtype)

    return fn


def random_weighting() -> Weighting:
    """RLW (Lin et al. 2022): `w = softmax(z)`, `z ~ N(0, I_k)` drawn from `key` each call."""

    def weights(gramian, key=None):
        key = require_key("random (RLW)", key)
        z = jax.random.normal(key, (gramian.shape[0],), dtype=as_float(gramian).dtype)
        return jax.nn.softmax(z)

    return weights


def _pcgrad_rows(gramian, orders):
    """Row i: the weights of g_i^PC after visiting the tasks `orders[i]` (j = i skipped),

        g_i^PC <- g_i^PC - min(<g_i^PC, g_j>, 0) / ||g_j||^2 * g_j     (Yu et al. 2020, Alg. 1)

    tracked in G-coordinates for all i at once: at step t row i visits j_i = orders[i, t].
    """
    k = gramian.shape[0]

    def step(t, w):
        pick = jax.nn.one_hot(orders[:, t], k, dtype=gramian.dtype)  # row i = e_{j_i}
        inner = jnp.sum((pick @ gramian) * w, axis=1)  # <g_i^PC, g_{j_i}>
        norm2 = pick @ jnp.diag(gramian)  # ||g_{j_i}||^2
        conflict = (inner < 0.0) & (orders[:, t] != jnp.arange(k)) & (norm2 > 0.0)
        coef = jnp.where(conflict, inner / jnp.where(norm2 > 0.0, norm2, 1.0), 0.0)
        return w - coef[:, None] * pick

    return jax.lax.fori_loop(0, k, step, jnp.eye(k, dtype=gramian.dtype))


def pcgrad_weighting(shuffle: bool = True) -> Weighting:
    """PCGrad (Yu et al. 2020) in Gramian form, as TorchJD defines it.

        g_i^PC <- g_i^PC - min(<g_i^PC, g_j>, 0) / ||g_j||^2 * g_j,   j over a random order
        A(J) = sum_i g_i^PC      (the sum, as in the paper and TorchJD, not the mean)

    Each task i gets its own random order of the other tasks, drawn from `key` (TorchJD
    and the reference draw a fresh permutation per i too). With two tasks the order is
    irrelevant and A(J) is twice the mean-based closed form of reference.md §2.5.1.

    Args:
      shuffle: draw the orders from `key` (required then); False uses 0..k-1 for every
        task, a deterministic variant that is linear under positive row scaling.
    """

    def weights(gramian, key=None):
        gramian = as_float(gramian)
        k = gramian.shape[0]
        if shuffle:
            # One independent uniform permutation per row: argsort of i.i.d. uniforms.
            draws = jax.random.uniform(require_key("pcgrad", key), (k, k))
            orders = jnp.argsort(draws, axis=1)
        else:
            orders = jnp.tile(jnp.arange(k), (k, 1))
        return jnp.sum(_pcgrad_rows(gramian, orders), axis=0)

    return weights


def imtl_g_weighting() -> Weighting:
    """IMTL-G (Liu et al. 2021) as generalised by TorchJD to dependent rows.

        v = G^+ d,  d_i = ||g_i|| = sqrt(G_ii),   w = v / sum(v)   (0 if sum(v) ~ 0)

    so that `A(J) = w^T J` has equal projections on every unit gradient `g_i / ||g_i||`.
    """

    def weights(gramian, key=None):
        del key
        gramian = as_float(gramian)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian), 0.0))
        v = jnp.linalg.pinv(gramian, hermitian=True) @ norms
        total = jnp.sum(v)
        safe = jnp.where(jnp.abs(total) < 1e-12, 1.0, total)
        return jnp.where(jnp.abs(total) < 1e-12, jnp.zeros_like(v), v / safe)

    return weights


def _aligned_scale(lam, valid, scale_mode):
    """The eigenvalue that sets Aligned-MTL's scale among the `valid` (non-zero) ones."""
    if scale_mode == "min":
        return jnp.min(jnp.where(valid, lam, jnp.inf))
    if scale_mode == "rmse":
        return jnp.sum(jnp.where(valid, lam, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    # "median": torch.median's lower median of the valid eigenvalues (the largest `rank`
    # of the ascending `lam`, i.e. indices k - rank .. k - 1).
    k, rank = lam.shape[0], jnp.sum(valid)
    return lam[jnp.clip(k - rank + (rank - 1) // 2, 0, k - 1)]


def aligned_mtl_weighting(
    pref: Sequence[float] | None = None, scale_mode: str = "min"
) -> Weighting:
    """Aligned-MTL (Senushkin et al. 2023, Alg. 1), as in TorchJD.

        G = V diag(lam) V^T  (eigenvalues above max(lam) * k * eps only, rank r)
        B = sqrt(sigma) V diag(lam)^{-1/2} V^T,   w = B p,   p = pref (default 1/k)

    so that `(B J)(B J)^T = sigma V_r V_r^T`: the aligned rows are orthogonal with equal
    norms sqrt(sigma) on the span of G, sigma = the smallest ("min"), lower-median
    ("median") or mean ("rmse") kept eigenvalue. B = I when G = 0.
    """
    values = check_weights("aligned_mtl pref", pref)
    if scale_mode not in ("min", "median", "rmse"):
        raise ConfigError(
            f"aligned_mtl scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}"
        )

    def weights(gramian, key=None):
        del key
        gramian = as_float(gramian)
        k = gramian.shape[0]
        p = preference("aligned_mtl pref", values, k, gramian.dtype)
        lam, vec = jnp.linalg.eigh(gramian)  # ascending
        valid = lam > jnp.max(lam) * k * jnp.finfo(gramian.dtype).eps
        inv_sqrt = jnp.where(valid, 1.0 / jnp.sqrt(jnp.where(valid, lam, 1.0)), 0.0)
        scale = _aligned_scale(lam, valid, scale_mode)
        balance = jnp.sqrt(jnp.maximum(scale, 0.0)) * (vec * inv_sqrt) @ vec.T
        balance = jnp.where(jnp.any(valid), balance, jnp.eye(k, dtype=gramian.dtype))
        return balance @ p

    return weights


__all__ = [
    "Weighting",
    "aligned_mtl_weighting",
    "cagrad_weighting",
    "constant_weighting",
    "dualproj_weighting",
    "imtl_g_weighting",
    "mean_weighting",
    "mgda_weighting",
    "nash_mtl_weighting",
    "pcgrad_weighting",
    "random_weighting",
    "sum_weighting",
    "upgrad_weighting",
]
