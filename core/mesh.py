"""The device mesh: one axis over every device, batch axis sharded, params replicated.

Meta-learning's natural data-parallel axis is the task axis of a meta-batch;
supervised training's is the example axis. Either way a step is one
`jax.jit` with explicit `NamedSharding`s: the leading axis of the batch is
split over a 1-D mesh and parameters and optimizer state are replicated. XLA
inserts the all-reduce of the gradients itself. (`jax.pmap` is in maintenance
mode and not used.)
"""

from collections.abc import Callable
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
    """Places a host batch that is already whole on the mesh, split along the leading axis.

    In a multi-host run every process passes the same full batch and keeps its
    own slice; data pipelines use `put_rows`, which builds only that slice.
    """
    num_rows = len(jax.tree.leaves(tree)[0])
    return put_rows(lambda start, stop: jax.tree.map(lambda x: x[start:stop], tree), num_rows,
                    mesh)


RowBuilder = Callable[[int, int], Any]


def put_rows(build_rows: RowBuilder, num_rows: int, mesh: Mesh) -> Any:
    """Builds a batch of `num_rows` rows where it lives: each process only its own rows.

    The batch's leading axis is split over the mesh. `build_rows(start, stop)`
    returns rows `start .. stop - 1` of the global batch as a host pytree (every
    leaf with leading axis `stop - start`), and must be a pure function of its
    arguments, so that the rows do not depend on which process builds them. With
    one process it is called once for every row. In a multi-process run each
    process calls it only for the row blocks of its own devices, so no process
    gathers or converts another's share, and the global array is assembled from
    these process-local pieces.

    Args:
      build_rows: rows of the global batch, by half-open range.
      num_rows: rows of the global batch, a multiple of the mesh size.
      mesh: the device mesh.

    Returns:
      The pytree of global arrays, batch-sharded over the mesh.
    """
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(build_rows(0, num_rows), sharding)
    return assemble_local_rows(build_rows, num_rows, sharding)


def local_row_blocks(num_rows: int, sharding: NamedSharding) -> dict[Any, tuple[int, int]]:
    """Each addressable device's rows of a batch-sharded array, as (start, stop)."""
    blocks = {}
    for device, index in sharding.addressable_devices_indices_map((num_rows,)).items():
        rows = index[0]
        blocks[device] = (rows.start or 0, num_rows if rows.stop is None else rows.stop)
    return blocks


def merge_blocks(blocks) -> list[tuple[int, int]]:
    """Row ranges merged where they touch or overlap, in order: one build per run of rows."""
    merged = []
    for start, stop in sorted(set(blocks)):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def assemble_local_rows(build_rows: RowBuilder, num_rows: int, sharding: NamedSharding) -> Any:
    """`put_rows`' multi-process path: this process's rows built, the global array assembled.

    Works with any number of processes (with one, every device is addressable
    and every row is built), which is how it is tested on one machine.
    """
    device_rows = local_row_blocks(num_rows, sharding)
    runs = merge_blocks(device_rows.values())
    built = [(start, stop, build_rows(start, stop)) for start, stop in runs]

    def piece(device):
        start, stop = device_rows[device]
        for run_start, run_stop, tree in built:
            if run_start <= start and stop <= run_stop:
                return jax.tree.map(lambda x: x[start - run_start:stop - run_start], tree)
        raise AssertionError(f"rows {start}..{stop} of {device} were not built")

    pieces = {device: piece(device) for device in device_rows}
    first = next(iter(pieces.values()))
    leaves_per_device = {device: jax.tree.leaves(tree) for device, tree in pieces.items()}
    treedef = jax.tree.structure(first)
    arrays = []
    for i, leaf in enumerate(jax.tree.leaves(first)):
        shape = (num_rows,) + np.shape(leaf)[1:]
        shards = [jax.device_put(leaves_per_device[device][i], device) for device in pieces]
        arrays.append(jax.make_array_from_single_device_arrays(shape, sharding, shards))
    return jax.tree.unflatten(treedef, arrays)
