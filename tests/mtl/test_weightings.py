"""Tests of the Gramian path (`mtl.weightings`, `mtl.solvers`) against float64 references.

Each weighting is jitted once and called on Gramians of random 3-task Jacobians, of full
rank (n = 7) and rank-deficient (n = 2, so G is singular); scipy supplies the references:
`nnls` for MGDA's min-norm point, bounded least squares (`lsq_linear`, BVLS) for the
dual-cone projections, SLSQP for CAGrad's dual and `fsolve` for Nash-MTL's equation.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import fsolve, lsq_linear, minimize, nnls

from core.errors import ConfigError
from mtl import weightings as wt

K = 3
CASES = [(n, seed) for n in (7, 2) for seed in range(3)]

_CACHE = {}


def _weights(factory, gramian, **hp):
    """`factory(**hp)` jitted once per (factory, hyper-parameters), applied to `gramian`."""
    cache_key = (factory.__name__, tuple(sorted(hp.items())))
    if cache_key not in _CACHE:
        _CACHE[cache_key] = jax.jit(factory(**hp))
    return np.asarray(_CACHE[cache_key](jnp.asarray(gramian, jnp.float32)), np.float64)


def _case(n, seed):
    """A random 3 x n Jacobian with rows of different scales, and its Gramian (float64)."""
    rng = np.random.default_rng(100 + seed)
    jacobian = rng.normal(size=(K, n)) * rng.uniform(0.3, 3.0, size=(K, 1))
    jacobian = jacobian.astype(np.float32).astype(np.float64)
    return jacobian, jacobian @ jacobian.T


def _ref_min_norm(jacobian):
    """min ||J^T w|| on the simplex via least-distance programming: nnls on [J^T; 1^T]."""
    k, n = jacobian.shape
    u, _ = nnls(np.vstack([jacobian.T, np.ones((1, k))]), np.eye(n + 1)[-1])
    return (u / u.sum()) @ jacobian


def _ref_project(jacobian, u, reg_eps=1e-4):
    """argmin v^T (G / tr G + reg_eps I) v s.t. v >= u, as bounded least squares."""
    k = jacobian.shape[0]
    a = np.vstack([jacobian.T / np.linalg.norm(jacobian), np.sqrt(reg_eps) * np.eye(k)])
    return lsq_linear(a, np.zeros(a.shape[0]), bounds=(u, np.inf), method="bvls", tol=1e-14).x


def _cagrad_objective(gramian, c=0.5):
    g = gramian / np.trace(gramian)
    u = np.full(len(g), 1.0 / len(g))
    phi = c * np.sqrt(u @ g @ u)
    return (lambda w: w @ g @ u + phi * np.sqrt(max(w @ g @ w, 0.0))), g, u, phi


def _ref_cagrad_dual(gramian):
    objective, _, _, _ = _cagrad_objective(gramian)
    simplex = {"type": "eq", "fun": lambda w: np.sum(w) - 1.0}
    starts = [np.full(K, 1.0 / K)] + list(np.eye(K))
    runs = [
        minimize(objective, w0, method="SLSQP", bounds=[(0, 1)] * K, constraints=simplex,
                 options={"ftol": 1e-15, "maxiter": 500})
        for w0 in starts
    ]
    return min(runs, key=lambda r: r.fun).x


@pytest.mark.parametrize("n, seed", CASES)
def test_mgda_is_the_min_norm_point(n, seed):
    jacobian, gramian = _case(n, seed)
    w = _weights(wt.mgda_weighting, gramian)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
    expected = _ref_min_norm(jacobian)
    scale = np.abs(jacobian).max()
    np.testing.assert_allclose(w @ jacobian / scale, expected / scale, atol=1e-5)
    fw = _weights(wt.mgda_weighting, gramian, solver="frank_wolfe", n_iter=2000, epsilon=0.0)
    gap = np.linalg.norm(fw @ jacobian) - np.linalg.norm(expected)  # FW converges as O(1/t)
    assert -1e-5 * scale <= gap <= 5e-3 * scale


@pytest.mark.parametrize("n, seed", CASES)
def test_upgrad_and_dualproj_match_bounded_least_squares(n, seed):
    jacobian, gramian = _case(n, seed)
    upgrad = sum(_ref_project(jacobian, np.eye(K)[i] / K) for i in range(K))
    dualproj = _ref_project(jacobian, np.full(K, 1.0 / K))
    np.testing.assert_allclose(_weights(wt.upgrad_weighting, gramian), upgrad, atol=2e-4)
    np.testing.assert_allclose(_weights(wt.dualproj_weighting, gramian), dualproj, atol=2e-4)


@pytest.mark.parametrize("n, seed", CASES)
def test_cagrad_solves_its_dual(n, seed):
    """Our dual point is at least as good as SLSQP's and gives the same weights."""
    jacobian, gramian = _case(n, seed)
    weights = _weights(wt.cagrad_weighting, gramian)
    objective, g, u, phi = _cagrad_objective(gramian)
    w_ref = _ref_cagrad_dual(gramian)
    w_ours = (weights - u) / np.sum(weights - u)
    assert objective(w_ours) <= objective(w_ref) + 1e-6
    expected = u + phi / np.sqrt(w_ref @ g @ w_ref) * w_ref
    np.testing.assert_allclose(weights, expected, atol=2e-3)


@pytest.mark.parametrize("n, seed", CASES[:3])
def test_nash_mtl_solves_g_alpha_equals_one_over_alpha(n, seed):
    """alpha* from fsolve, then TorchJD's clipping of ||J^T alpha|| to max_norm = 1."""
    _, gramian = _case(n, seed)
    alpha = _weights(wt.nash_mtl_weighting, gramian)
    start = 1.0 / np.sqrt(np.diag(gramian) * K)
    expected = fsolve(lambda a: gramian @ a - 1.0 / a, start, xtol=1e-13)
    np.testing.assert_allclose(gramian @ expected * expected, 1.0, atol=1e-8)
    expected /= max(1.0, np.sqrt(expected @ gramian @ expected))  # = sqrt(k) unclipped
    np.testing.assert_allclose(alpha, expected, rtol=1e-4)


@pytest.mark.parametrize("n, seed", CASES)
def test_imtl_g_and_aligned_mtl_match_float64_formulas(n, seed):
    jacobian, gramian = _case(n, seed)
    v = np.linalg.pinv(gramian) @ np.sqrt(np.diag(gramian))
    imtl = _weights(wt.imtl_g_weighting, gramian)
    np.testing.assert_allclose(imtl @ jacobian, (v / v.sum()) @ jacobian, rtol=1e-3, atol=1e-3)
    lam, vec = np.linalg.eigh(gramian)
    keep = lam > lam.max() * K * np.finfo(np.float32).eps
    lam, vec = lam[keep], vec[:, keep]
    balance = np.sqrt(lam.min()) * (vec / np.sqrt(lam)) @ vec.T
    aligned = _weights(wt.aligned_mtl_weighting, gramian)
    np.testing.assert_allclose(aligned, balance @ np.full(K, 1.0 / K), atol=1e-3)


@pytest.mark.parametrize(
    "factory", [wt.mgda_weighting, wt.upgrad_weighting, wt.dualproj_weighting,
                wt.cagrad_weighting, wt.imtl_g_weighting, wt.aligned_mtl_weighting]
)
def test_scale_invariant_weights(factory):
    """These weights depend on the gradients' directions and ratios only: w(t G) = w(G)."""
    _, gramian = _case(7, 0)
    w = _weights(factory, gramian)
    np.testing.assert_allclose(_weights(factory, 1e3 * gramian), w, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "factory", [wt.mgda_weighting, wt.upgrad_weighting, wt.dualproj_weighting,
                wt.cagrad_weighting, wt.nash_mtl_weighting, wt.imtl_g_weighting,
                wt.aligned_mtl_weighting]
)
def test_permutation_equivariant_weights(factory):
    """Relabelling the tasks relabels the weights: w(P G P^T) = P w(G)."""
    for n, seed in (CASES[0], CASES[3]):
        _, gramian = _case(n, seed)
        w = _weights(factory, gramian)
        perm = np.array([2, 0, 1])
        permuted = _weights(factory, gramian[np.ix_(perm, perm)])
        np.testing.assert_allclose(permuted, w[perm], rtol=1e-4, atol=1e-4 * np.abs(w).max())


def _pcgrad_reference(jacobian, orders):
    """Yu et al.'s loop on the vectors: project g_i^PC off each conflicting g_j in order."""
    total = np.zeros(jacobian.shape[1])
    for i, order in enumerate(orders):
        g = jacobian[i].copy()
        for j in order:
            if j != i and g @ jacobian[j] < 0:
                g -= (g @ jacobian[j]) / (jacobian[j] @ jacobian[j]) * jacobian[j]
        total += g
    return total


def test_pcgrad_is_yu_et_al_for_one_of_the_task_orders():
    """With k = 3 each task visits the other two in one of 2 orders: the output must be one
    of the 2^3 order combinations, and different keys must reach more than one."""
    theta = np.deg2rad([0.0, 110.0, 230.0])  # three pairwise-conflicting gradients
    jacobian = np.zeros((K, 7))
    jacobian[:, 0], jacobian[:, 1] = np.cos(theta), np.sin(theta)
    jacobian = jacobian * [[1.0], [2.0], [0.5]] + 0.1 * np.random.default_rng(0).normal(size=(K, 7))
    jacobian = jacobian.astype(np.float32).astype(np.float64)
    gramian = jacobian @ jacobian.T
    fn = _CACHE.setdefault("pcgrad", jax.jit(wt.pcgrad_weighting()))
    per_task = [list(itertools.permutations([j for j in range(K) if j != i])) for i in range(K)]
    combos = [_pcgrad_reference(jacobian, orders) for orders in itertools.product(*per_task)]
    hits = set()
    for seed in range(8):
        update = np.asarray(fn(jnp.asarray(gramian, jnp.float32), jax.random.PRNGKey(seed)))
        errors = [np.abs(update @ jacobian - c).max() for c in combos]
        assert min(errors) < 1e-4 * np.abs(jacobian).max(), min(errors)
        hits.add(int(np.argmin(errors)))
    assert len(hits) > 1


def test_weighting_errors():
    with pytest.raises(ConfigError, match="upgrad pref has 2 weights but the Jacobian has 3"):
        wt.upgrad_weighting(pref=[1.0, 1.0])(jnp.eye(K))
    with pytest.raises(ConfigError, match="non-negative"):
        wt.dualproj_weighting(pref=[1.0, -1.0])
    with pytest.raises(ConfigError, match="PRNG key"):
        wt.random_weighting()(jnp.eye(K))
    with pytest.raises(ConfigError, match="rescale"):
        wt.cagrad_weighting(rescale="2")
    with pytest.raises(ConfigError, match="max_norm"):
        wt.nash_mtl_weighting(max_norm=-1.0)
