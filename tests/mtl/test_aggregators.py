"""Tests of `mtl.aggregators`: TorchJD golden values, aggregator properties, the two-task
closed forms of reference.md §2.5.1, the registry and MGDA's normalisation.

Every aggregator is jitted once per (name, hyper-parameters) and the tests share the
compiled functions through `_jitted`; each method sees two shapes, 2 x 3 (the golden J, the
two-task checks and the k = 2 property inputs) and 5 x 4 (k > n, a singular Gramian).
`test_weightings.py` covers k = 3 on the Gramian path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from core.errors import ConfigError
from mtl.aggregators import AGGREGATORS, make_aggregator, mgda_normalize

J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
KEY = jax.random.PRNGKey(0)
ATOL = 1e-4

# reference.md §2.6 (TorchJD tests/unit/aggregation/test_values.py).
GOLDEN_UPDATE = {
    "mean": [1.0, 1.0, 1.0],
    "sum": [2.0, 2.0, 2.0],
    "constant": [8.0, 3.0, 3.0],
    "mgda": [0.0, 1.0, 1.0],
    "pcgrad": [0.5848, 3.8012, 3.8012],
    "upgrad": [0.2929, 1.9004, 1.9004],
    "dualproj": [0.5563, 1.1109, 1.1109],
    "imtl_g": [0.0767, 1.0, 1.0],
    "aligned_mtl": [0.2133, 0.9673, 0.9673],
    "cagrad": [0.1835, 1.2041, 1.2041],
    "nash_mtl": [0.0542, 0.7061, 0.7061],
    "config": [0.1588, 2.0706, 2.0706],
}
GOLDEN_WEIGHTS = {
    "mean": [0.5, 0.5],
    "sum": [1.0, 1.0],
    "constant": [1.0, 2.0],
    "mgda": [0.6, 0.4],
    "pcgrad": [2.2222, 1.5789],
    "upgrad": [1.1109, 0.7894],
    "dualproj": [0.6109, 0.5],
    "imtl_g": [0.5923, 0.4077],
    "aligned_mtl": [0.5591, 0.4083],
    "cagrad": [0.7041, 0.5],
}

SHAPES = [(2, 3), (5, 4)]
DETERMINISTIC = [
    "mean", "sum", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "cagrad",
    "nash_mtl", "config",
]
NON_CONFLICTING = ["mgda", "upgrad", "dualproj", "nash_mtl"]
LINEAR = ["mean", "sum", "constant", "pcgrad", "upgrad", "config"]

_CACHE = {}


def _hyper(name, k):
    return {"weights": tuple(range(1, k + 1))} if name == "constant" else {}


def _jitted(name, **hp):
    """The jitted aggregator `name(**hp)`, built and traced once per test session."""
    cache_key = (name, tuple(sorted(hp.items())))
    if cache_key not in _CACHE:
        _CACHE[cache_key] = jax.jit(make_aggregator(name, **hp))
    return _CACHE[cache_key]


def _run(name, jacobian, key=KEY, **hp):
    hp = hp or _hyper(name, jacobian.shape[0])
    update, weights = _jitted(name, **hp)(jnp.asarray(jacobian, jnp.float32), key)
    return np.asarray(update), None if weights is None else np.asarray(weights)


def _random_jacobian(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(GOLDEN_UPDATE))
def test_golden_update(name):
    update, _ = _run(name, J_BASE)
    np.testing.assert_allclose(update, GOLDEN_UPDATE[name], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", sorted(GOLDEN_WEIGHTS))
def test_golden_weights(name):
    """The weights the jitted aggregator returns, `agg.weighting(J J^T)`."""
    _, weights = _run(name, J_BASE)
    np.testing.assert_allclose(weights, GOLDEN_WEIGHTS[name], rtol=0, atol=ATOL)


def test_golden_graddrop_takes_one_of_the_two_sign_choices():
    """P = (0.6, 1, 1) on J_BASE: coordinate 0 keeps +6 w.p. 0.6, else -4 (TorchJD: [6, 2, 2])."""
    outputs = {tuple(_run("graddrop", J_BASE, key=jax.random.PRNGKey(s))[0]) for s in range(16)}
    assert outputs == {(6.0, 2.0, 2.0), (-4.0, 2.0, 2.0)}


def test_random_weights_are_a_fresh_softmax_per_key():
    _, w0 = _run("random", J_BASE, key=jax.random.PRNGKey(0))
    _, w0_again = _run("random", J_BASE, key=jax.random.PRNGKey(0))
    _, w1 = _run("random", J_BASE, key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(w0, jax.nn.softmax(jax.random.normal(KEY, (2,))), atol=1e-6)
    assert np.array_equal(w0, w0_again) and not np.allclose(w0, w1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_shape_and_finite(name, shape):
    for seed in range(2):
        jacobian = _random_jacobian(shape, seed)
        update, weights = _run(name, jacobian)
        assert update.shape == (shape[1],) and np.all(np.isfinite(update))
        if weights is not None:
            assert weights.shape == (shape[0],) and np.all(np.isfinite(weights))
            np.testing.assert_allclose(update, weights @ jacobian, rtol=1e-5, atol=1e-5)
    zero_update, _ = _run(name, np.zeros(shape, np.float32))
    assert np.all(np.isfinite(zero_update)) and np.allclose(zero_update, 0.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", DETERMINISTIC + ["graddrop"])
def test_permutation_invariant(name, shape):
    """Reordering the tasks leaves A(J) unchanged (GradDrop: with the same key)."""
    jacobian = _random_jacobian(shape, 1)
    reference, _ = _run(name, jacobian)
    scale = np.abs(reference).max() + 1e-6
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(shape[0])
        permuted, _ = _run(name, jacobian[perm])
        np.testing.assert_allclose(permuted / scale, reference / scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_non_conflicting(name, shape):
    """J A(J) >= 0: no task's loss increases to first order.

    UPGrad and DualProj project with `G / tr G + reg_eps I` (TorchJD), which moves each
    product by at most `reg_eps * tr(G) * w_i`; that slack is allowed on top of 1e-5 tr(G).
    """
    for seed in range(3):
        jacobian = _random_jacobian(shape, seed)
        update, weights = _run(name, jacobian)
        trace = np.sum(jacobian**2)
        slack = 1e-4 * weights if name in ("upgrad", "dualproj") else 0.0
        assert np.all(jacobian @ update >= -(1e-5 + slack) * trace), (jacobian @ update, trace)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", LINEAR)
def test_linear_under_scaling(name, shape):
    """A(diag(a c1 + b c2) J) = a A(diag(c1) J) + b A(diag(c2) J) for c1, c2 > 0.

    PCGrad uses the same key (the same task orders) in the three calls. UPGrad is linear
    only up to its `reg_eps I` regularisation, which is felt most when k > n (G singular,
    the regulariser alone then sets the weights along its null space): TorchJD's own test
    allows 6e-2 there.
    """
    jacobian = _random_jacobian(shape, 2)
    rng = np.random.default_rng(3)
    atol = {True: 6e-2 if shape[0] > shape[1] else 5e-3, False: 1e-4}[name == "upgrad"]
    for _ in range(2):
        c1, c2 = rng.uniform(0.2, 2.0, size=(2, shape[0])).astype(np.float32)
        a, b = rng.uniform(0.2, 2.0, size=2).astype(np.float32)
        x1, _ = _run(name, c1[:, None] * jacobian)
        x2, _ = _run(name, c2[:, None] * jacobian)
        x, _ = _run(name, (a * c1 + b * c2)[:, None] * jacobian)
        expected = a * x1 + b * x2
        scale = np.abs(expected).max()
        np.testing.assert_allclose(x / scale, expected / scale, rtol=0, atol=atol)


def _two_task(seed, conflict):
    """A random 2 x 3 Jacobian whose rows conflict (g12 < 0) or not, as asked."""
    jacobian = _random_jacobian((2, 3), 10 + seed)
    if (jacobian[0] @ jacobian[1] < 0) != conflict:
        jacobian[1] = -jacobian[1]
    return jacobian


def _inner(jacobian):
    g = jacobian.astype(np.float64) @ jacobian.T.astype(np.float64)
    return g[0, 0], g[0, 1], g[1, 1]


def _closed_form_mgda(jacobian):
    g11, g12, g22 = _inner(jacobian)
    if g12 < min(g11, g22):
        x = (g22 - g12) / (g11 + g22 - 2 * g12 + 1e-8)
    else:
        x = 1.0 if g11 < g22 else 0.0
    return x * jacobian[0] + (1 - x) * jacobian[1]


def _closed_form_pcgrad_mean(jacobian):
    g11, g12, g22 = _inner(jacobian)
    if g12 >= 0:
        return jacobian.mean(axis=0)
    return ((1 - g12 / g11) * jacobian[0] + (1 - g12 / g22) * jacobian[1]) / 2


def _closed_form_cagrad(jacobian, c=0.5):
    g11, g12, g22 = _inner(jacobian)
    g0 = jacobian.mean(axis=0)
    phi = c * np.linalg.norm(g0)
    a = g11 + g22 - 2 * g12

    def objective(x):
        norm = np.sqrt(x * x * a + 2 * x * (g12 - g22) + g22 + 1e-4)
        return phi * norm + 0.5 * x * a + (0.5 + x) * (g12 - g22) + g22

    x = minimize_scalar(objective, bounds=(0, 1), method="bounded", options={"xatol": 1e-10}).x
    g_w = x * jacobian[0] + (1 - x) * jacobian[1]
    lam = phi / (np.linalg.norm(g_w) + 1e-4)
    return (g0 + lam * g_w) / (1 + c)


@pytest.mark.parametrize("conflict", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_two_task_closed_forms(seed, conflict):
    """§2.5.1. PCGrad sums the projected gradients (TorchJD, the paper), the closed form
    averages them; CAGrad's closed form divides by 1 + c (our `rescale="1+c"`; the default,
    TorchJD's, does not)."""
    jacobian = _two_task(seed, conflict)
    np.testing.assert_allclose(_run("mgda", jacobian)[0], _closed_form_mgda(jacobian), atol=1e-5)
    pcgrad, _ = _run("pcgrad", jacobian)
    np.testing.assert_allclose(pcgrad / 2, _closed_form_pcgrad_mean(jacobian), atol=1e-5)
    cagrad, _ = _run("cagrad", jacobian)  # rescale="none"
    np.testing.assert_allclose(cagrad / 1.5, _closed_form_cagrad(jacobian), atol=2e-4)


def test_gramian_based_flags():
    for name in AGGREGATORS:
        agg = make_aggregator(name, **_hyper(name, 2))
        assert agg.gramian_based == (name not in ("config", "graddrop")), name
        assert (agg.weighting is not None) == agg.gramian_based, name


@pytest.mark.parametrize(
    "name, hyperparams, needle",
    [
        ("adam", {}, "known aggregators: aligned_mtl, cagrad, config, constant"),
        ("constant", {"weights": [1.0, -2.0]}, "non-negative"),
        ("constant", {}, "constant needs weights"),
        ("cagrad", {"c": -0.1}, "cagrad c must be a non-negative"),
        ("mean", {"c": 0.5}, "accepted: none"),
        ("upgrad", {"regeps": 0.1}, "accepted: pref, norm_eps, reg_eps, n_iter"),
        ("mgda", {"solver": "cvxpy"}, "'active_set' or 'frank_wolfe'"),
        ("aligned_mtl", {"scale_mode": "max"}, "scale_mode"),
        ("graddrop", {"leak": [0.5, 1.5]}, "[0, 1]"),
        ("nash_mtl", {"n_iter": 0}, "positive integer"),
    ],
)
def test_registry_errors(name, hyperparams, needle):
    with pytest.raises(ConfigError) as err:
        make_aggregator(name, **hyperparams)
    assert needle in str(err.value)


def test_call_time_errors():
    with pytest.raises(ConfigError, match="has 3 weights but the Jacobian has 2 tasks"):
        make_aggregator("constant", weights=[1.0, 2.0, 3.0])(J_BASE)
    with pytest.raises(ConfigError, match="PRNG key"):
        make_aggregator("pcgrad")(J_BASE)
    with pytest.raises(ConfigError, match="PRNG key"):
        make_aggregator("graddrop")(J_BASE)
    with pytest.raises(ConfigError, match=r"\[k, n\] Jacobian"):
        make_aggregator("mean")(J_BASE[0])


def test_mgda_normalize_modes():
    losses = jnp.array([2.0, 0.5])
    norms = np.linalg.norm(J_BASE, axis=1)
    np.testing.assert_allclose(mgda_normalize(J_BASE, losses, "none"), J_BASE)
    np.testing.assert_allclose(mgda_normalize(J_BASE, losses, "l2"), J_BASE / norms[:, None])
    np.testing.assert_allclose(mgda_normalize(J_BASE, losses, "loss"), J_BASE / [[2.0], [0.5]])
    np.testing.assert_allclose(
        mgda_normalize(J_BASE, losses, "loss+"), J_BASE / (norms * [2.0, 0.5])[:, None], rtol=1e-6
    )
    zero_row = mgda_normalize(np.zeros((2, 3), np.float32), losses, "l2")
    assert np.all(np.isfinite(zero_row))
    with pytest.raises(ConfigError, match="known: l2, loss, loss\\+, none"):
        mgda_normalize(J_BASE, losses, "max")
