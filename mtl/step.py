"""The multi-task train step and evaluation step, each one jitted function.

The train step computes the vector of task losses L = (L_1, ..., L_k) of one
batch, then, by the method's kind (`mtl.methods`):

* loss weighting: `total, weights, extra = weighting.update(L, extra)` and one
  gradient of `total` (its state lives in `TrainState.extra`);
* gradient aggregator: the k x n Jacobian J = ∂L/∂θ_shared from one forward
  pass and k vector-Jacobian products, vectorised (`mtl.jacobian`: no
  Python-level loop of backward passes; for a `TrunkAndHeads` model the k
  products run through the trunk only), the update `A(J)` for the shared
  parameters θ_shared and, for each head, its own task's gradient;
* an aggregator with fixed weights w (`mean`, `constant`): A(J) = w^T J is the
  gradient of w^T L on the shared parameters, so it costs one backward pass,
  not k (the heads get their tasks' gradients as above);
* MGDA-UB: the min-norm weights from the Jacobian w.r.t. the shared
  representation z = trunk(x), then one gradient of Σ_k w_k L_k.

Under `jax.jit` with the batch sharded over the mesh (`core.train_state.
jit_step`) XLA sums the per-task gradients over the devices before the
aggregator sees them, so the aggregate is that of the whole batch: the same
result on one device or many.

Randomised methods and dropout take their keys from (seed, step).
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from core import networks
from core import supervised
from core import train_state as train_state_lib
from mtl import aggregators as aggregators_lib
from mtl import jacobian as jacobian_lib
from mtl import loss_weighting
from mtl.data import TASK_INDEX
from mtl.jacobian import is_head_path
from mtl.methods import Method
from mtl.tasks import Task, per_example_loss, per_example_metrics

# Per-task scalars are logged for at most this many tasks (School has 139).
MAX_LOGGED_TASKS = 16


def _apply(model, params, model_state, x, train: bool, rng, **kwargs):
    """model.apply with mutable model state when training; returns (outputs, new state)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if rng is not None else {}
    if train and model_state:
        out, new_state = model.apply(variables, x, train=True, mutable=list(model_state),
                                     rngs=rngs, **kwargs)
        return out, dict(new_state)
    return model.apply(variables, x, train=train, rngs=rngs, **kwargs), model_state


def _own(task_ids: Mapping[str, int] | None, name: str, batch) -> jax.Array | None:
    """Task-indexed data: the mask of the batch's examples that belong to `name`."""
    if task_ids is None:
        return None
    return (batch["y"][TASK_INDEX] == task_ids[name]).astype(jnp.float32)


def _target(task_ids, name: str, batch, target_key: str | None):
    return batch["y"][target_key] if task_ids is not None else batch["y"][name]


def losses_from_outputs(tasks: Mapping[str, Task], outputs: Mapping[str, jax.Array], batch,
                        task_ids: Mapping[str, int] | None = None,
                        target_key: str | None = None) -> jax.Array:
    """The vector of task losses [k]: each task's mean loss over its examples."""
    losses = []
    for name, task in tasks.items():
        per_example = per_example_loss(task, outputs[name],
                                       _target(task_ids, name, batch, target_key))
        own = _own(task_ids, name, batch)
        if own is None:
            losses.append(jnp.mean(per_example))
        else:
            losses.append(jnp.sum(per_example * own) / jnp.maximum(jnp.sum(own), 1.0))
    return jnp.stack(losses)


def _stop_shared_gradient(params, tasks):
    """`params` with `stop_gradient` on every shared (non-head) leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: leaf if is_head_path(p, tasks) else jax.lax.stop_gradient(leaf), params)


def _last_shared_layer(params) -> tuple[str, str]:
    """(top-level key, sub-module) of the last layer of the shared trunk (GradNorm's W)."""
    trunk = params["trunk"]
    return "trunk", list(trunk)[-1]


def make_train_step(model, tasks: Mapping[str, Task], method: Method,
                    optimizer: optax.GradientTransformation, seed: int, *,
                    task_ids: Mapping[str, int] | None = None, target_key: str | None = None
                    ) -> Callable:
    """One multi-task update (see the module docstring).

    Args:
      model: a Linen module mapping x to {task: output}; `params["heads"]` (or
        top-level entries named by task) are the heads, the rest is shared.
      tasks: the tasks, in the order of the loss vector.
      method: the built `--method`.
      optimizer: the transformation of `state.opt_state`.
      seed: the run's seed (dropout and method keys come from (seed, step)).
      task_ids: task-indexed data: task name -> id in `batch["y"]["task"]`.
      target_key: task-indexed data: the target shared by every head.

    Returns:
      A pure `step(state, batch) -> (state, metrics)` for `core.train_state.jit_step`.
    """
    names = list(tasks)

    def losses_fn(params, model_state, batch, rng):
        outputs, new_state = _apply(model, params, model_state, batch["x"], True, rng)
        return losses_from_outputs(tasks, outputs, batch, task_ids, target_key), new_state

    def weighted(state, batch, rng, key):
        weighting = method.weighting
        aux = None
        if loss_weighting.TASK_GRAD_NORMS in weighting.requires:
            top, sub = _last_shared_layer(state.params)

            def losses_of_w(w):
                params = dict(state.params, **{top: dict(state.params[top], **{sub: w})})
                return losses_fn(params, state.model_state, batch, rng)[0]

            _, norms = loss_weighting.task_gradient_norms(losses_of_w, state.params[top][sub])
            aux = {loss_weighting.TASK_GRAD_NORMS: norms}

        def total_fn(params):
            losses, new_state = losses_fn(params, state.model_state, batch, rng)
            total, weights, extra = weighting.update(losses, state.extra, key=key, aux=aux)
            return total, (losses, weights, extra, new_state)

        (_, (losses, weights, extra, new_state)), grads = jax.value_and_grad(
            total_fn, has_aux=True)(state.params)
        return grads, losses, weights, extra, new_state

    def fixed_weights(state, batch, rng, key):
        # A(J) = w^T J with w fixed is the gradient of w^T L on the shared parameters; the
        # second term gives every head parameter the sum of its tasks' gradients, as
        # `mtl.jacobian.aggregate` does. Its forward pass is the first one's (stop_gradient is the
        # identity there), which XLA computes once.
        del key
        weights = jnp.asarray(method.fixed_weights, jnp.float32)

        def total_fn(params):
            losses, new_state = losses_fn(params, state.model_state, batch, rng)
            detached = _stop_shared_gradient(params, tasks)
            head_losses, _ = losses_fn(detached, state.model_state, batch, rng)
            total = jnp.dot(weights, losses) + jnp.dot(1.0 - weights, head_losses)
            return total, (losses, new_state)

        (_, (losses, new_state)), grads = jax.value_and_grad(total_fn, has_aux=True)(
            state.params)
        return grads, losses, weights.astype(losses.dtype), state.extra, new_state

    def aggregated(state, batch, rng, key):
        if isinstance(model, networks.TrunkAndHeads):
            losses, jacobian, new_state = jacobian_lib.trunk_and_heads_jacobian(
                model, state.params, state.model_state, batch["x"], rng,
                lambda outputs: losses_from_outputs(tasks, outputs, batch, task_ids,
                                                    target_key))
        else:
            losses, jacobian, new_state = jacobian_lib.jacobian_by_vjp(
                lambda p: losses_fn(p, state.model_state, batch, rng), state.params)
        grads, weights = jacobian_lib.aggregate(method, jacobian, losses, tasks, key)
        return grads, losses, weights, state.extra, new_state

    def on_representation(state, batch, rng, key):
        # Hard parameter sharing only (`core.networks.TrunkAndHeads`): z = trunk(x).
        # The trunk through the whole model: the dropout masks of `losses_fn` below.
        z, _ = jacobian_lib.trunk_features(model, state.params, state.model_state, batch["x"],
                                           rng)
        heads = networks.Heads(model.heads, hidden=model.head_hidden)

        def losses_of_z(z):
            outputs = heads.apply({"params": state.params["heads"]}, z)
            return losses_from_outputs(tasks, outputs, batch, task_ids, target_key)

        losses, vjp = jax.vjp(losses_of_z, jax.lax.stop_gradient(z))
        (jz,) = jax.vmap(vjp)(jnp.eye(len(names), dtype=losses.dtype))
        matrix = jz.reshape(len(names), -1)
        if method.mgda_normalization != "none":
            matrix = aggregators_lib.mgda_normalize(matrix, losses, method.mgda_normalization)
        weights = jax.lax.stop_gradient(method.aggregator.weighting(matrix @ matrix.T, key))

        def total_fn(params):
            task_losses, new_state = losses_fn(params, state.model_state, batch, rng)
            return jnp.dot(weights, task_losses), (task_losses, new_state)

        (_, (losses, new_state)), grads = jax.value_and_grad(total_fn, has_aux=True)(
            state.params)
        return grads, losses, weights, state.extra, new_state

    if method.on_representation:
        direction = on_representation
    elif method.fixed_weights is not None:
        direction = fixed_weights
    elif method.needs_jacobian:
        direction = aggregated
    else:
        direction = weighted

    def step(state: train_state_lib.TrainState, batch):
        rng = supervised.dropout_key(seed, state.step)
        key = loss_weighting.weighting_key(seed, state.step)
        grads, losses, weights, extra, new_state = direction(state, batch, rng, key)
        metrics = {"loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads)}
        if len(names) <= MAX_LOGGED_TASKS:
            for i, name in enumerate(names):
                metrics[f"loss/{name}"] = losses[i]
                if weights is not None:
                    metrics[f"weight/{name}"] = weights[i]
        new = train_state_lib.apply_gradients(state, grads, optimizer, model_state=new_state,
                                              extra=extra)
        return new, metrics

    return step


def make_eval_step(model, tasks: Mapping[str, Task], *,
                   task_ids: Mapping[str, int] | None = None,
                   target_key: str | None = None) -> Callable:
    """`eval_step(state, batch) -> {name: per-example values}` for `core.evaluate`.

    Names are `<task>/<metric>` and `<task>/loss`; task-indexed data give
    instead the metrics of each example's own head under `all/...`, plus the
    moments that make the explained variance exact over the split.
    """

    def eval_step(state, batch):
        outputs, _ = _apply(model, state.params, state.model_state, batch["x"], False, None)
        if task_ids is None:
            values = {}
            for name, task in tasks.items():
                target = batch["y"][name]
                values[f"{name}/loss"] = per_example_loss(task, outputs[name], target)
                values.update({f"{name}/{metric}": v for metric, v in
                               per_example_metrics(task, outputs[name], target).items()})
            return values
        ids = jnp.asarray([task_ids[n] for n in tasks])
        stacked = jnp.stack([outputs[n].reshape(-1) for n in tasks], axis=1)  # [B, k]
        own = jnp.argmax(batch["y"][TASK_INDEX][:, None] == ids[None, :], axis=1)
        prediction = jnp.take_along_axis(stacked, own[:, None], axis=1)[:, 0]
        target = batch["y"][target_key].astype(prediction.dtype)
        residual = prediction - target
        loss = residual ** 2 if next(iter(tasks.values())).loss == "mse" else jnp.abs(residual)
        return {"all/loss": loss, "all/mse": residual ** 2, "all/mae": jnp.abs(residual),
                "all/residual": residual, "all/target": target, "all/target_sq": target ** 2}

    return eval_step


def explained_variance(metrics: Mapping[str, float]) -> float:
    """100 · (1 − Var(residual) / Var(target)) from the split means of `make_eval_step`."""
    var_residual = metrics["all/mse"] - metrics["all/residual"] ** 2
    var_target = metrics["all/target_sq"] - metrics["all/target"] ** 2
    return 100.0 * (1.0 - var_residual / var_target)
