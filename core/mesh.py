"""The device mesh: one axis over every device, batch axis sharded, params replicated.

Meta-learning's natural data-parallel axis is the task axis of a meta-batch;
supervised training's is the example axis. Either way a step is one
`jax.jit` with explicit `NamedSharding`s: the leading axis of the batch is
split over a 1-D mesh and parameters and optimizer state are replicated. XLA
inserts the all-reduce of the gradients itself. (`jax.pmap` is in maintenance
mode and not used.)
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from core.errors import ConfigError

BATCH_AXIS = "batch"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `BATCH_AXIS` over `devices` (all devices by default).

    Args:
      devices: devices to use; `jax.devices()` when None (every device of every
        process in a multi-host run).

    Returns:
      The mesh.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: its leading axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises ConfigError unless `batch_size` splits evenly over the mesh.

    Args:
      batch_size: size of the sharded leading axis.
      mesh: the device mesh.
      what: how to name the value in the error (e.g. '--meta_batch_size').

    Raises:
      ConfigError: when the size is not a multiple of the number of devices.
    """
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"{what}={batch_size} must be a multiple of the number of devices ({n}) so the "
            f"batch axis can be split over them; use {max(n, batch_size // n * n)} or restrict "
            f"the devices (e.g. CUDA_VISIBLE_DEVICES).")


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def put_batch(tree: Any, mesh: Mesh) -> Any:
    """Places a host batch on the mesh, split along the leading axis.

    In a multi-host run every process passes the same full batch (samplers are
    seeded identically) and keeps its own slice.
    """
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), tree)
