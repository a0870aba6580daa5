"""Small fixed-iteration solvers behind the Gramian weightings of `mtl.weightings`.

Every solver works on a k x k Gramian (k = number of tasks, small), runs at most a number
of iterations fixed at trace time (so it compiles once under `jax.jit` and never calls back
into Python; the iterative ones stop early once converged) and returns weights in the
Gramian's float dtype.

- `solve_qp`: exact primal active-set method (Lawson-Hanson for `x >= 0`, Wolfe's
  min-norm-point method when `1^T x = 1` is added) for
  `min_x 1/2 x^T Q x + c^T x  s.t.  x >= 0  [, 1^T x = 1]`.
  Once the active set is optimal the remaining iterations leave the state unchanged.
- `project_weights`: the dual-cone projection of UPGrad / DualProj, a box QP in the
  k-dimensional dual (Quinton & Rey 2024, Prop. 1).
- `min_norm_frank_wolfe`: the Frank-Wolfe min-norm solver of MGDA (Sener & Koltun 2018,
  Alg. 2) as TorchJD runs it.
- `nash_bargaining`: damped Newton on the strictly convex potential whose stationary point
  is Nash-MTL's `G alpha = 1 / alpha`.
- `cagrad_dual`: CAGrad's dual, an SOCP on the simplex, solved by bisection on a scalar
  whose every evaluation is one `solve_qp` call.
"""

import jax
import jax.numpy as jnp


def normalize_gramian(gramian: jax.Array, eps: float) -> jax.Array:
    """Divides `G = J J^T` by `tr G = ||J||_F^2`, or returns 0 when `tr G < eps`.

    The weights of the scale-invariant methods do not change, but the solvers then see
    entries of order one whatever the size of the gradients.
    """
    trace = jnp.trace(gramian)
    safe = jnp.where(trace < eps, 1.0, trace)
    return jnp.where(trace < eps, jnp.zeros_like(gramian), gramian / safe)


def regularize_gramian(gramian: jax.Array, eps: float) -> jax.Array:
    """Returns `G + eps I`, positive definite even when rounding made `G` slightly not."""
    return gramian + eps * jnp.eye(gramian.shape[0], dtype=gramian.dtype)


def _iterate_until_done(n_iter: int, step, state):
    """Applies `step` to `state` (whose last entry is a `done` flag) up to `n_iter` times.

    Stops as soon as `done` is set. Every `step` here leaves its state unchanged once done,
    so the result is that of exactly `n_iter` iterations, but a solver that converged in
    three iterations costs three, not `n_iter` (a `while_loop`, which `jit` and `vmap`
    accept; under `vmap` it runs until every batch member is done).
    """

    def cond(carry):
        i, inner = carry
        return (i < n_iter) & ~inner[-1]

    def body(carry):
        i, inner = carry
        return i + 1, step(inner)

    return jax.lax.while_loop(cond, body, (jnp.array(0), state))[1]


def default_qp_iterations(k: int) -> int:
    """Iterations given to the active-set QP: 4k + 8, each one adds or drops one index."""
    return 4 * k + 8


def _solve_on_free_set(q, c, free, simplex):
    """Minimiser of the QP on the free set F with the other coordinates held at 0.

    Solves `Q_FF y_F = -c_F` (plus `1_F^T y_F = 1` with one multiplier when `simplex`);
    coordinates outside F get an identity row so the system keeps a fixed shape.
    """
    k = q.shape[0]
    both = free[:, None] & free[None, :]
    a = jnp.where(both, q, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0)).astype(q.dtype)
    rhs = jnp.where(free, -c, 0.0)
    if not simplex:
        return jnp.linalg.solve(a, rhs)
    ones = free.astype(q.dtype)
    kkt = jnp.block([[a, ones[:, None]], [ones[None, :], jnp.zeros((1, 1), q.dtype)]])
    return jnp.linalg.solve(kkt, jnp.append(rhs, 1.0))[:k]


def _enter(q, c, y, free, simplex, tol):
    """At a feasible minimiser y of the free set: free the index with the most negative
    KKT multiplier `lambda_i = grad_i - y^T grad` (simplex; `grad_i` on the orthant), or
    report optimality when every `lambda_i >= -tol`."""
    grad = q @ y + c
    mult = grad - jnp.dot(y, grad) if simplex else grad
    mult = jnp.where(free, jnp.inf, mult)
    enter = jnp.argmin(mult)
    optimal = mult[enter] >= -tol
    return free | ((jnp.arange(q.shape[0]) == enter) & ~optimal), optimal


def _leave(x, y, free, tol):
    """y is infeasible: move from x towards y until the first free coordinate reaches 0,
    `t = min_{i in F, y_i <= 0} x_i / (x_i - y_i)`, and fix that coordinate at 0."""
    blocking = free & (y <= 0.0)
    ratio = jnp.where(blocking, x / jnp.where(blocking, x - y, 1.0), jnp.inf)
    leave = jnp.argmin(ratio)
    x_new = x + jnp.clip(ratio[leave], 0.0, 1.0) * (y - x)
    free_new = free & (x_new > tol * 1e-3) & (jnp.arange(x.shape[0]) != leave)
    return jnp.where(free_new, x_new, 0.0), free_new


def _active_set_step(q, c, simplex, tol, state):
    """One iteration of the primal active-set method; a no-op once `done` is set."""
    x, free, done = state
    y = _solve_on_free_set(q, c, free, simplex)
    y = jnp.where(jnp.isfinite(y), y, 0.0)
    feasible = jnp.all(jnp.where(free, y > 0.0, True))
    free_a, optimal = _enter(q, c, y, free, simplex, tol)
    x_b, free_b = _leave(x, y, free, tol)
    x_new = jnp.where(feasible, jnp.where(free, y, 0.0), x_b)
    free_new = jnp.where(feasible, free_a, free_b)
    return (
        jnp.where(done, x, x_new),
        jnp.where(done, free, free_new),
        done | (feasible & optimal),
    )


def solve_qp(
    q: jax.Array, c: jax.Array, simplex: bool, n_iter: int | None = None
) -> jax.Array:
    """Exact solution of a small convex QP over the orthant or the simplex.

        minimise_x  1/2 x^T Q x + c^T x   s.t.  x >= 0        (simplex=False)
                                          s.t.  x >= 0, 1^T x = 1   (simplex=True)

    Primal active set: keep a free set F, minimise on F with the rest at 0 (a k x k or
    (k+1) x (k+1) linear solve); if that point is feasible move there and free the index
    with the most negative KKT multiplier, otherwise step back to the boundary and fix the
    blocking index. The iterate stays feasible throughout, so a truncated run still
    returns a valid point. Starts from 0 (orthant) or the best vertex (simplex); the KKT
    tolerance is 1e-6 of the largest entry of diag(Q) and c.

    Args:
      q: symmetric positive semi-definite (k, k) matrix; keep its scale near one.
      c: linear term (k,).
      simplex: add the constraint `1^T x = 1`.
      n_iter: number of iterations; `default_qp_iterations(k)` when None.

    Returns:
      The minimiser x (k,).
    """
    k = q.shape[0]
    n_iter = default_qp_iterations(k) if n_iter is None else n_iter
    tol = 1e-6 * (jnp.max(jnp.abs(jnp.diag(q))) + jnp.max(jnp.abs(c)) + 1e-30)
    if simplex:
        start = jnp.argmin(0.5 * jnp.diag(q) + c)
        free = jnp.arange(k) == start
        x = free.astype(q.dtype)
    else:
        free = jnp.zeros(k, dtype=bool)
        x = jnp.zeros(k, dtype=q.dtype)
    state = (x, free, jnp.array(False))
    x, _, _ = _iterate_until_done(n_iter, lambda s: _active_set_step(q, c, simplex, tol, s),
                                  state)
    return x


def project_weights(u: jax.Array, gramian: jax.Array, n_iter: int | None = None) -> jax.Array:
    """Weights of the projection of `J^T u` onto the dual cone `{d : J d >= 0}`.

    By Prop. 1 of Quinton & Rey (2024) the projection is `J^T v` with

        v = argmin_v  v^T G v   s.t.  v >= u,

    solved as the box QP `z = v - u >= 0`: minimise `1/2 z^T G z + (G u)^T z`.

    Args:
      u: weights (k,) of the vector to project.
      gramian: positive definite (k, k) Gramian (regularise it first).
      n_iter: active-set iterations.

    Returns:
      v (k,).
    """
    z = solve_qp(gramian, gramian @ u, simplex=False, n_iter=n_iter)
    return u + z


def min_norm_frank_wolfe(gramian: jax.Array, n_iter: int, epsilon: float) -> jax.Array:
    """Frank-Wolfe for `min_{w in simplex} w^T G w` (Sener & Koltun 2018, Alg. 2).

    From `w = 1/k`: pick `t = argmin_i (G w)_i`, then the exact line search between w and
    e_t, `gamma = (w^T G w - w^T G e_t) / (w^T G w + G_tt - 2 w^T G e_t)` clipped to
    [0, 1]; stop once `gamma < epsilon` (later iterations are no-ops). TorchJD's MGDA.
    """
    k = gramian.shape[0]

    def step(state):
        w, stopped = state
        gw = gramian @ w
        t = jnp.argmin(gw)
        a, b, c = gw[t], jnp.dot(w, gw), gramian[t, t]
        denom = jnp.where(b + c - 2.0 * a > 0.0, b + c - 2.0 * a, 1.0)
        gamma = jnp.where(c <= a, 1.0, jnp.where(b <= a, 0.0, (b - a) / denom))
        w_new = (1.0 - gamma) * w + gamma * jax.nn.one_hot(t, k, dtype=w.dtype)
        return jnp.where(stopped, w, w_new), stopped | (gamma < epsilon)

    w0 = jnp.full((k,), 1.0 / k, dtype=gramian.dtype)
    w, _ = _iterate_until_done(n_iter, step, (w0, jnp.array(False)))
    return w


def nash_bargaining(gramian: jax.Array, n_iter: int) -> jax.Array:
    """Solves Nash-MTL's bargaining condition `G alpha = 1 / alpha`, alpha > 0.

    It is the stationary point of the strictly convex, self-concordant potential

        f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i,

    minimised by damped Newton: `H = G + diag(1 / alpha^2)`, `delta = H^{-1} grad f`,
    decrement `lam = sqrt(grad^T delta)`, `alpha <- alpha - delta / (1 + lam)`. The damped
    step never leaves alpha > 0 and converges quadratically once `lam < 1/4`. The start is
    `alpha_i = beta / sqrt(G_ii)` with beta optimal on that ray. Works on `G / ||G||_F` and
    rescales, `alpha = alpha_hat / sqrt(||G||_F)`.
    """
    k = gramian.shape[0]
    scale = jnp.linalg.norm(gramian)
    scale = jnp.where(scale > 0.0, scale, 1.0)
    g = gramian / scale
    ray = 1.0 / jnp.sqrt(jnp.maximum(jnp.diag(g), 1e-12))
    alpha0 = ray * jnp.sqrt(k / jnp.maximum(ray @ g @ ray, 1e-12))

    def step(_, alpha):
        grad = g @ alpha - 1.0 / alpha
        hess = g + jnp.diag(1.0 / alpha**2)
        delta = jnp.linalg.solve(hess, grad)
        lam = jnp.sqrt(jnp.maximum(jnp.dot(grad, delta), 0.0))
        new = alpha - delta / (1.0 + lam)
        return jnp.where(jnp.all(jnp.isfinite(new) & (new > 0.0)), new, alpha)

    alpha = jax.lax.fori_loop(0, n_iter, step, alpha0)
    return alpha / jnp.sqrt(scale)


def cagrad_dual(
    gramian: jax.Array, c: float, n_bisect: int, n_iter: int | None = None
) -> jax.Array:
    """Solves CAGrad's dual on the simplex (Liu et al. 2021, Eq. 4 dual):

        w* = argmin_{w in simplex}  b^T w + phi ||J^T w||,   b = G u,  phi = c ||J^T u||,

    with u = 1/k. Because `sqrt(q) = min_{s>0} q / (2s) + s / 2`, the optimum is
    `w(s*)` where `w(s) = argmin_w (s / phi) b^T w + 1/2 w^T G w` (a simplex QP) and s*
    is the root of `s - ||J^T w(s)||`, increasing in s (the s-derivative of the convex
    partial minimum has its sign). The root lies in [1e-6 s_max, s_max],
    `s_max = max_i sqrt(G_ii)`, and is found by `n_bisect` bisections in log s.

    Returns:
      w* (k,) on the simplex.
    """
    k = gramian.shape[0]
    u = jnp.full((k,), 1.0 / k, dtype=gramian.dtype)
    b = gramian @ u
    phi = jnp.maximum(c * jnp.sqrt(jnp.maximum(u @ b, 0.0)), 1e-20)
    s_max = jnp.maximum(jnp.sqrt(jnp.max(jnp.diag(gramian))), 1e-20)

    def bisect(_, state):
        lo, hi, _ = state
        mid = 0.5 * (lo + hi)
        w = solve_qp(gramian, (jnp.exp(mid) / phi) * b, simplex=True, n_iter=n_iter)
        above = jnp.exp(mid) >= jnp.sqrt(jnp.maximum(w @ gramian @ w, 0.0))
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi), w

    log_hi = jnp.log(s_max)
    state = (log_hi + jnp.log(1e-6), log_hi, jnp.full((k,), 1.0 / k, gramian.dtype))
    # The last w is the QP solution at an end of the final bracket, of width 2^-n_bisect
    # times the initial one (log 1e6): one QP in the compiled loop instead of two.
    return jax.lax.fori_loop(0, n_bisect, bisect, state)[2]
