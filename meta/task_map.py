"""How a meta-batch of tasks is mapped over, and how that pairs with convolutions.

Meta-learning evaluates the same function on every task of a meta-batch with
per-task adapted weights. Two ways of mapping it give the same numbers but
very different speed on different backends:

* `vmap`: `jax.vmap` over the task axis. Dense layers become batched
  matmuls; convolutions with per-task kernels become grouped convolutions
  (fast on GPU/TPU, very slow on XLA:CPU unless the network uses the im2col
  convolution of `core.conv`). The task axis can be sharded over devices.
* `loop`: a Python loop over the tasks, unrolled inside the jitted function.
  Each task runs the plain convolution, but compile time and memory grow with
  the number of tasks.

A *strategy* names both choices, `<task_map>_<conv_impl>`, e.g.
`vmap_im2col`; `auto` picks the fastest measured one for the backend.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from core import conv as conv_lib

TASK_MAPS = ("vmap", "loop")
STRATEGIES = ("auto",) + tuple(f"{m}_{c}" for m in TASK_MAPS for c in conv_lib.CONV_IMPLS)


def map_tasks(fn: Callable[[Any], Any], tasks: Any, task_map: str) -> Any:
    """Applies `fn` to every task of a stacked meta-batch and stacks the results.

    Args:
      fn: maps one task (a pytree of arrays without the task axis) to a pytree.
      tasks: a pytree of arrays with a leading task axis.
      task_map: 'vmap' or 'loop'.

    Returns:
      The outputs of `fn` stacked on a leading task axis.

    Raises:
      ValueError: for an unknown `task_map`.
    """
    if task_map == "vmap":
        return jax.vmap(fn)(tasks)
    if task_map == "loop":
        num_tasks = jax.tree.leaves(tasks)[0].shape[0]
        outs = [fn(jax.tree.map(lambda a, t=t: a[t], tasks)) for t in range(num_tasks)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    raise ValueError(f"unknown task_map {task_map!r}; expected one of {TASK_MAPS}")


def resolve_strategy(strategy: str, backend: str | None = None) -> tuple[str, str]:
    """Splits a strategy name into (task_map, conv_impl), resolving 'auto'.

    Args:
      strategy: one of `STRATEGIES`.
      backend: the JAX platform ('cpu', 'gpu', 'tpu'); the default backend
        when None.

    Returns:
      (task_map, conv_impl). 'auto' is `vmap` with the backend's default
      convolution (`core.conv.default_conv_impl`): im2col on CPU, XLA's
      convolution elsewhere.

    Raises:
      ValueError: for an unknown strategy.
    """
    if strategy == "auto":
        return "vmap", conv_lib.default_conv_impl(backend)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    task_map, conv_impl = strategy.split("_", 1)
    return task_map, conv_impl
