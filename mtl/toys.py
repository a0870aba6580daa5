"""Toy multi-task problems with known answers, for checking methods against the papers.

The two-task objective of CAGrad (Liu et al. 2021), reused by Nash-MTL and FAMO
(Cranial-XIX/CAGrad `toy.py`), on x = (x1, x2) ∈ ℝ²::

    f1_log = log(max(|0.5·(−x1 − 7) − tanh(−x2)|, 5e-6)) + 6
    f2_log = log(max(|0.5·(−x1 + 3) + tanh(−x2) + 2|, 5e-6)) + 6
    c1 = max(tanh(0.5·x2), 0),   c2 = max(tanh(−0.5·x2), 0)
    f1_sq = ((−x1 + 7)² + 0.1·(−x2 − 8)²) / 10 − 20
    f2_sq = ((−x1 − 7)² + 0.1·(−x2 − 8)²) / 10 − 20
    L1 = scale · (f1_log·c1 + f1_sq·c2),   L2 = f2_log·c1 + f2_sq·c2

Its Pareto set is x2 ≈ −8.3552, x1 ∈ [−7, 7]; scale = 1 in CAGrad, 0.1 in the
Nash-MTL and FAMO trainers. `descend` runs Adam on it with any method of
`mtl.methods`, the whole trajectory in one `lax.scan`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mtl import loss_weighting
from mtl.methods import Method

PARETO_X2 = -8.3552
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
_LOWER = 5e-6


def toy_losses(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """(L1, L2) of the two-task toy at x = (x1, x2)."""
    x1, x2 = x[0], x[1]
    f1_log = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), _LOWER)) + 6
    f2_log = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), _LOWER)) + 6
    c1 = jnp.maximum(jnp.tanh(0.5 * x2), 0)
    c2 = jnp.maximum(jnp.tanh(-0.5 * x2), 0)
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return jnp.stack([scale * (f1_log * c1 + f1_sq * c2), f2_log * c1 + f2_sq * c2])


def descend(method: Method, start: tuple[float, float], *, steps: int, scale: float = 1.0,
            learning_rate: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Adam on the toy from `start` with `method`'s update; returns the end point and losses.

    A loss weighting differentiates its scalarised loss; an aggregator
    aggregates the 2 x 2 Jacobian of (L1, L2).
    """
    optimizer = optax.adam(learning_rate)
    x0 = jnp.asarray(start, jnp.float32)
    extra = method.init_state(2)

    def direction(x, extra, step):
        key = loss_weighting.weighting_key(seed, step)
        if method.weighting is None:
            jacobian = jax.jacrev(toy_losses)(x, scale)
            update, _ = method.aggregator(jacobian, key)
            return update, extra

        def total(x):
            value, _, new_extra = method.weighting.update(toy_losses(x, scale), extra, key=key)
            return value, new_extra

        grad, new_extra = jax.grad(total, has_aux=True)(x)
        return grad, new_extra

    def body(carry, step):
        x, opt_state, extra = carry
        grad, extra = direction(x, extra, step)
        updates, opt_state = optimizer.update(grad, opt_state, x)
        return (optax.apply_updates(x, updates), opt_state, extra), None

    (x, _, _), _ = jax.lax.scan(body, (x0, optimizer.init(x0), extra), jnp.arange(steps))
    return {"x": x, "losses": toy_losses(x, scale)}


def on_pareto_set(x: jax.Array, tolerance: float = 0.1) -> bool:
    """Whether x is within `tolerance` of the Pareto set {x2 = −8.3552, −7 ≤ x1 ≤ 7}."""
    return bool(abs(float(x[1]) - PARETO_X2) <= tolerance
                and -7 - tolerance <= float(x[0]) <= 7 + tolerance)


def gradnorm_toy_data(sigmas: tuple[float, ...] = (1.0, 100.0), *, num_examples: int = 10_000,
                      seed: int = 123) -> dict[str, Any]:
    """GradNorm's toy regression (Chen et al. 2018, §4): tasks that differ only in scale.

        f_i(x) = σ_i · tanh((B + ε_i) x),   x ∈ ℝ^250 ~ N(0, I),   f_i(x) ∈ ℝ^100
        B ~ N(0, 10²) shared,   ε_i ~ N(0, 3.5²) per task (both read as standard deviations,
        as the public ports do)

    Returns:
      {'x': [n, 250], 'y': {'t<i>': [n, 100]}}, float32, from `numpy.random.default_rng(seed)`.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, 10.0, size=(100, 250))
    x = rng.normal(size=(num_examples, 250))
    targets = {}
    for i, sigma in enumerate(sigmas):
        eps = rng.normal(0.0, 3.5, size=(100, 250))
        targets[f"t{i}"] = (sigma * np.tanh(x @ (shared + eps).T)).astype(np.float32)
    return {"x": x.astype(np.float32), "y": targets}


def train_gradnorm_toy(method: Method, data: dict[str, Any], *, steps: int,
                       learning_rate: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Full-batch Adam on the toy with the paper's model: 4 ReLU layers of 100, linear heads.

    Runs the library's multi-task step (`mtl.step`), so GradNorm acts on the last
    shared layer as in a real run.

    Returns:
      {'loss_ratios': [steps, k] L_i(t) / L_i(0), 'weights': [steps, k] (None for
      methods that report no weights)}.
    """
    import numpy as np

    from core import networks
    from core import train_state
    from core.losses import split_variables
    from mtl import step as step_lib
    from mtl.tasks import Task

    names = list(data["y"])
    tasks = {n: Task(n, "regression", 100) for n in names}
    model = networks.TrunkAndHeads(networks.MLPTrunk(hidden=(100,) * 4), {n: 100 for n in names})
    params, model_state = split_variables(model.init(jax.random.PRNGKey(seed), data["x"][:1]))
    optimizer = optax.adam(learning_rate)
    state = train_state.create(params, model_state, optimizer, method.init_state(len(names)))
    step = jax.jit(step_lib.make_train_step(model, tasks, method, optimizer, seed))
    losses, weights = [], []
    for _ in range(steps):
        state, metrics = step(state, data)
        losses.append([float(metrics[f"loss/{n}"]) for n in names])
        if f"weight/{names[0]}" in metrics:
            weights.append([float(metrics[f"weight/{n}"]) for n in names])
    losses = np.asarray(losses)
    return {"loss_ratios": losses / losses[0], "weights": np.asarray(weights) if weights else None}
