"""The weightings that solve an optimisation problem: MGDA, UPGrad, DualProj, CAGrad, Nash-MTL.

Same contract as `mtl.weightings` (which re-exports these factories): each returns a pure
`weights = fn(gramian, key=None)`, deterministic (the key is ignored), jit-able, with a
number of solver iterations fixed when the function is traced. Defaults follow TorchJD so
that its golden values hold; the solvers themselves are documented in `mtl.solvers`.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from core.errors import ConfigError
from mtl import solvers
from mtl.weighting_utils import Weighting, as_float, check_weights, preference


def _check_nonneg(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _check_iterations(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def mgda_weighting(
    solver: str = "active_set",
    n_iter: int | None = None,
    epsilon: float = 0.001,
    norm_eps: float = 0.0001,
) -> Weighting:
    """MGDA (Sener & Koltun 2018): the min-norm point of the convex hull of the gradients.

        w = argmin_{w >= 0, sum(w) = 1}  w^T G w,   A(J) = J^T w

    Args:
      solver: "active_set" (default): Wolfe's exact min-norm-point method on
        `G / tr G` (`mtl.solvers.solve_qp`, `n_iter` defaults to 4k + 8);
        "frank_wolfe": TorchJD's Frank-Wolfe loop on G (`n_iter` defaults to 100, stop
        once the step `gamma < epsilon`), which may stop short of the optimum for k >= 3.
      n_iter: solver iterations (static).
      epsilon: Frank-Wolfe stopping step.
      norm_eps: trace below which G counts as zero (active set).
    """
    if solver not in ("active_set", "frank_wolfe"):
        raise ConfigError(f"mgda solver must be 'active_set' or 'frank_wolfe', got {solver!r}")
    n_iter = _check_iterations("mgda n_iter", n_iter)
    epsilon = _check_nonneg("mgda epsilon", epsilon)
    norm_eps = _check_nonneg("mgda norm_eps", norm_eps)

    def weights(gramian, key=None):
        del key
        gramian = as_float(gramian)
        if solver == "frank_wolfe":
            return solvers.min_norm_frank_wolfe(gramian, n_iter or 100, epsilon)
        g = solvers.normalize_gramian(gramian, norm_eps)
        return solvers.solve_qp(g, jnp.zeros(g.shape[0], g.dtype), simplex=True, n_iter=n_iter)

    return weights


def _dual_cone_gramian(gramian, norm_eps, reg_eps):
    """TorchJD's conditioning: `G / tr G + reg_eps I` (the weights are scale-invariant)."""
    normalized = solvers.normalize_gramian(as_float(gramian), norm_eps)
    return solvers.regularize_gramian(normalized, reg_eps)


def upgrad_weighting(
    pref: Sequence[float] | None = None,
    norm_eps: float = 0.0001,
    reg_eps: float = 0.0001,
    n_iter: int | None = None,
) -> Weighting:
    """UPGrad (Quinton & Rey 2024): project every row onto the dual cone, then combine.

        v_i = argmin_{v >= p_i e_i} v^T G v   (J^T v_i = projection of p_i g_i onto
        {d : J d >= 0}),   w = sum_i v_i,   p = pref (default 1/k: the mean)

    G is replaced by `G / tr G + reg_eps I` as in TorchJD; each projection is an exact
    active-set box QP (`mtl.solvers.project_weights`, `n_iter` default 4k + 8).
    """
    values = check_weights("upgrad pref", pref)
    norm_eps = _check_nonneg("upgrad norm_eps", norm_eps)
    reg_eps = _check_nonneg("upgrad reg_eps", reg_eps)
    n_iter = _check_iterations("upgrad n_iter", n_iter)

    def weights(gramian, key=None):
        del key
        g = _dual_cone_gramian(gramian, norm_eps, reg_eps)
        p = preference("upgrad pref", values, g.shape[0], g.dtype)
        rows = jax.vmap(lambda u: solvers.project_weights(u, g, n_iter))(jnp.diag(p))
        return jnp.sum(rows, axis=0)

    return weights


def dualproj_weighting(
    pref: Sequence[float] | None = None,
    norm_eps: float = 0.0001,
    reg_eps: float = 0.0001,
    n_iter: int | None = None,
) -> Weighting:
    """DualProj (GEM, Lopez-Paz & Ranzato 2017, Eq. 11): project the combination itself.

        w = argmin_{v >= p} v^T G v,   p = pref (default 1/k)

    i.e. `J^T w` is the projection of the mean gradient onto {d : J d >= 0}. Same
    conditioning and solver as `upgrad_weighting`.
    """
    values = check_weights("dualproj pref", pref)
    norm_eps = _check_nonneg("dualproj norm_eps", norm_eps)
    reg_eps = _check_nonneg("dualproj reg_eps", reg_eps)
    n_iter = _check_iterations("dualproj n_iter", n_iter)

    def weights(gramian, key=None):
        del key
        g = _dual_cone_gramian(gramian, norm_eps, reg_eps)
        p = preference("dualproj pref", values, g.shape[0], g.dtype)
        return solvers.project_weights(p, g, n_iter)

    return weights


# Divisor of CAGrad's direction; the reference's `rescale` = 0, 2, 1 respectively.
_CAGRAD_RESCALE = {
    "none": lambda c: 1.0,
    "1+c": lambda c: 1.0 + c,
    "1+c^2": lambda c: 1.0 + c * c,
}


def cagrad_weighting(
    c: float = 0.5,
    norm_eps: float = 0.0001,
    rescale: str = "none",
    n_bisect: int = 30,
    n_iter: int | None = None,
) -> Weighting:
    """CAGrad (Liu et al. 2021): the best worst-task improvement in a ball around the mean.

        max_{||d - g0|| <= c ||g0||} min_i <g_i, d>,   g0 = J^T u,  u = 1/k
        dual: w = argmin_{w in simplex} <g_w, g0> + c ||g0|| ||g_w||,  g_w = J^T w
        d = g0 + (c ||g0|| / ||g_w||) g_w   ->   weights u + (c ||g0|| / ||g_w||) w

    As in TorchJD: G is divided by its trace, weights are 0 when `||g_w|| < norm_eps`
    (already Pareto-stationary), and d is not rescaled by default. The reference code
    offers `d / (1 + c^2)` ("1+c^2", its default `rescale=1`) and `d / (1 + c)` ("1+c",
    the two-task closed form of the toy). c = 0 gives the mean.

    Solver: `mtl.solvers.cagrad_dual`, `n_bisect` bisections of a simplex QP.
    """
    if not isinstance(c, (int, float)) or c < 0:
        raise ConfigError(f"cagrad c must be a non-negative number, got {c!r}")
    if rescale not in _CAGRAD_RESCALE:
        raise ConfigError(
            f"cagrad rescale must be one of {sorted(_CAGRAD_RESCALE)}, got {rescale!r}"
        )
    norm_eps = _check_nonneg("cagrad norm_eps", norm_eps)
    n_bisect = _check_iterations("cagrad n_bisect", n_bisect)
    n_iter = _check_iterations("cagrad n_iter", n_iter)
    divisor = _CAGRAD_RESCALE[rescale](float(c))

    def weights(gramian, key=None):
        del key
        gramian = as_float(gramian)
        k = gramian.shape[0]
        u = jnp.full((k,), 1.0 / k, dtype=gramian.dtype)
        if c == 0:
            return u / divisor
        g = solvers.normalize_gramian(gramian, norm_eps)
        w = solvers.cagrad_dual(g, float(c), n_bisect, n_iter)
        gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
        phi = c * jnp.sqrt(jnp.maximum(u @ g @ u, 0.0))
        lam = phi / jnp.where(gw_norm >= norm_eps, gw_norm, 1.0)
        return jnp.where(gw_norm >= norm_eps, u + lam * w, 0.0) / divisor

    return weights


def nash_mtl_weighting(max_norm: float = 1.0, n_iter: int = 20) -> Weighting:
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution of the tasks.

        G alpha = 1 / alpha,  alpha > 0   (each task's gain <g_i, d> = 1 / alpha_i)
        d = J^T alpha,  rescaled to norm `max_norm` when longer (0 disables)

    The reference re-solves a CCCP sequence of cvxpy (ECOS) problems every step, warm
    started from the previous step's alpha; here each call solves the same fixed-point
    equation from scratch by damped Newton (`mtl.solvers.nash_bargaining`, `n_iter`
    iterations), stateless and jit-able. Where the CCCP converged both give the same alpha;
    `update_weights_every` is left to the caller (reuse the weights). Returns 0 for G = 0.
    """
    max_norm = _check_nonneg("nash_mtl max_norm", max_norm)
    n_iter = _check_iterations("nash_mtl n_iter", n_iter)

    def weights(gramian, key=None):
        del key
        gramian = as_float(gramian)
        alpha = solvers.nash_bargaining(gramian, n_iter)
        alpha = jnp.where(jnp.trace(gramian) > 0.0, alpha, 0.0)
        if max_norm > 0.0:
            norm = jnp.sqrt(jnp.maximum(alpha @ gramian @ alpha, 0.0))
            alpha = jnp.where(norm > max_norm, alpha * (max_norm / jnp.maximum(norm, 1e-30)), alpha)
        return alpha

    return weights
