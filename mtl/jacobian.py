"""The Jacobian of the task losses inside the jitted step, and the update A(J) built from it.

Both functions return `(losses [k], jacobian, new_model_state)` where `jacobian` has the
parameters' tree structure and every leaf a leading axis of per-task contributions: a
shared leaf is [k, ...], row i being ∂L_i/∂θ; a head leaf holds contributions that are
summed (a head gets the gradients of the tasks that use it, normally its own one).
`aggregate` turns that into the update: A(J) on the shared leaves, the sum on the heads.

* `jacobian_by_vjp` works for any model: one forward pass, then k vector-Jacobian
  products (`vmap` over the rows of the identity). Each product runs back through the
  whole model, every head included, so k heads cost k² head backward passes: that
  dominates with many heads (School's 139).
* `trunk_and_heads_jacobian` is for hard parameter sharing (`core.networks.TrunkAndHeads`):
  z = trunk(x) once; each head gets its own copy of z, so one backward pass through the
  heads gives every ∂L_i/∂z and every head's own gradient; then k products through the
  trunk only. TorchJD's `mtl_backward` works the same way. The trunk runs through the
  whole model's `apply` (its `method=`), so its dropout masks and batch statistics are
  those of `jacobian_by_vjp`: both give the same Jacobian.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from core import networks
from mtl import aggregators as aggregators_lib
from mtl.methods import Method
from mtl.tasks import Task

HEADS = "heads"


def is_head_path(path: tuple, tasks: Mapping[str, Task]) -> bool:
    """Whether a parameter path belongs to a task head (not shared)."""
    first = getattr(path[0], "key", path[0])
    return first == HEADS or first in tasks


def _identity_rows(losses: jax.Array) -> jax.Array:
    return jnp.eye(losses.shape[0], dtype=losses.dtype)


def jacobian_by_vjp(losses_fn: Callable, params) -> tuple[jax.Array, Any, Any]:
    """J of `losses_fn(params) -> (losses [k], new_state)` by k VJPs of one forward pass."""
    losses, vjp, new_state = jax.vjp(losses_fn, params, has_aux=True)
    (jacobian,) = jax.vmap(vjp)(_identity_rows(losses))
    return losses, jacobian, new_state


def trunk_features(model: networks.TrunkAndHeads, params, model_state, x, rng):
    """(z, new model state): the trunk's features in training mode, through the whole model.

    The trunk runs through the model's `apply` (its `method=`), not as a standalone module,
    so its dropout masks and batch statistics are those of the whole model's forward pass
    with the same key (a standalone `model.trunk.apply` would draw other masks).
    """
    rngs = {"dropout": rng} if rng is not None else {}
    variables = {"params": params, **model_state}
    call = lambda module, inputs: module.trunk(inputs, True)  # noqa: E731
    if model_state:
        z, new_state = model.apply(variables, x, rngs=rngs, method=call,
                                   mutable=list(model_state))
        return z, dict(new_state)
    return model.apply(variables, x, rngs=rngs, method=call), model_state


def trunk_and_heads_jacobian(model: networks.TrunkAndHeads, params, model_state, x,
                             rng, losses_of_outputs: Callable) -> tuple[jax.Array, Any, Any]:
    """J of a `TrunkAndHeads` model: one pass through the heads, k VJPs through the trunk.

    Args:
      model: the hard-parameter-sharing model.
      params: its parameters {'trunk': ..., 'heads': ...}.
      model_state: its mutable collections (batch statistics), possibly empty.
      x: the batch's inputs.
      rng: the dropout key, as given to the whole model's `apply`.
      losses_of_outputs: {task: output} -> the loss vector [k].
    """
    def features(trunk_params):
        return trunk_features(model, dict(params, trunk=trunk_params), model_state, x, rng)

    z, trunk_vjp, new_state = jax.vjp(features, params["trunk"], has_aux=True)
    heads = networks.Heads(model.heads, hidden=model.head_hidden)
    names = list(model.heads)

    def head_losses(per_task_z, head_params):
        return losses_of_outputs(heads.apply({"params": head_params}, per_task_z))

    losses, heads_vjp = jax.vjp(head_losses, {n: z for n in names}, params[HEADS])
    # Head i's output enters L_i only, so the cotangent 1 separates the tasks.
    grad_z, head_grads = heads_vjp(jnp.ones_like(losses))
    (trunk_jacobian,) = jax.vmap(trunk_vjp)(jnp.stack([grad_z[n] for n in names]))
    head_rows = jax.tree.map(lambda g: g[None], head_grads)
    return losses, {"trunk": trunk_jacobian, HEADS: head_rows}, new_state


def aggregate(method: Method, jacobian, losses: jax.Array, tasks: Mapping[str, Task],
              key: jax.Array) -> tuple[Any, jax.Array | None]:
    """(update tree, weights): A(J) on the shared leaves, summed contributions on heads."""
    heads = jax.tree_util.tree_map_with_path(lambda p, _: is_head_path(p, tasks), jacobian)
    leaves, treedef = jax.tree.flatten(jacobian)
    is_head = jax.tree.leaves(heads)
    k = losses.shape[0]
    matrix = jnp.concatenate(
        [leaf.reshape(k, -1) for leaf, h in zip(leaves, is_head) if not h], axis=1)
    agg = method.aggregator
    if method.mgda_normalization != "none":
        normalized = aggregators_lib.mgda_normalize(matrix, losses, method.mgda_normalization)
        weights = agg.weighting(normalized @ normalized.T, key)
        update = weights @ matrix
    else:
        update, weights = agg(matrix, key)
    grads, offset = [], 0
    for leaf, head in zip(leaves, is_head):
        if head:
            grads.append(jnp.sum(leaf, axis=0))
        else:
            size = leaf[0].size
            grads.append(update[offset:offset + size].reshape(leaf.shape[1:]))
            offset += size
    return jax.tree.unflatten(treedef, grads), weights
