"""The train state every family checkpoints, and the one way a step is jitted.

A `TrainState` is a pytree holding everything a run must save to resume
exactly: the step count, the parameters θ, the non-differentiated model
collections (batch-norm running statistics), the optimizer state, and an
`extra` pytree for state that is neither parameters nor optimizer state
(e.g. a multi-task loss weighting's history). The training loop and the
checkpoints treat it as an opaque pytree.

`jit_step` compiles a pure `step(state, batch) -> (state, metrics)` with the
shardings of `core.mesh`: the state replicated and donated (updated in
place), the batch split along its leading axis over the devices (or
replicated, for a step that samples its own batch from an index).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from core import mesh as mesh_lib

Params = Any
StepFn = Callable[[Any, Any], tuple[Any, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything a training run checkpoints.

    Attributes:
      step: number of updates done (int32 scalar).
      params: θ, the differentiated parameters.
      model_state: non-differentiated model collections (an empty dict when
        the model has none).
      opt_state: the optimizer's state.
      extra: state that is neither parameters nor optimizer state (an empty
        dict when the family has none).
    """

    step: jax.Array
    params: Params
    model_state: Any
    opt_state: optax.OptState
    extra: Any


def create(params: Params, model_state: Any, optimizer: optax.GradientTransformation,
           extra: Any = None) -> TrainState:
    """A fresh `TrainState` at step 0, the optimizer initialised on `params`."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=optimizer.init(params), extra={} if extra is None else extra)


def apply_gradients(state: TrainState, grads: Params, optimizer: optax.GradientTransformation,
                    **changes) -> TrainState:
    """One optimizer update of `state.params` from `grads`; step + 1.

    Args:
      state: the current state.
      grads: gradients, a pytree like `state.params`.
      optimizer: the transformation `state.opt_state` belongs to.
      **changes: other fields to replace (e.g. the new `model_state`).

    Returns:
      The updated state.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, **changes)


def jit_step(step: StepFn, mesh: Mesh, *, batch_sharded: bool = True) -> StepFn:
    """Jits `step(state, batch) -> (state, metrics)` for `mesh`.

    The state (argument 0) is donated: the caller must not reuse it.

    Args:
      step: a pure step function.
      mesh: the 1-D device mesh (`core.mesh.make_mesh`).
      batch_sharded: split the batch's leading axis over the devices; False
        replicates it (for a step given only an index that samples its
        batch inside the step).

    Returns:
      The jitted step; its outputs are replicated.
    """
    replicated = mesh_lib.replicated(mesh)
    batch = mesh_lib.batch_sharded(mesh) if batch_sharded else replicated
    return jax.jit(step, in_shardings=(replicated, batch),
                   out_shardings=(replicated, replicated), donate_argnums=0)
