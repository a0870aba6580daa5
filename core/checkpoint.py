"""Checkpoints of a training state: a thin wrapper over orbax.

`Checkpointer` saves and restores any pytree of arrays (flax params, optax
states with their NamedTuples, PRNG keys, python ints and floats) in numbered
step directories::

    checkpoints = Checkpointer(workdir / 'checkpoints', max_to_keep=2)
    best = Checkpointer(workdir / 'best', max_to_keep=1)
    start = checkpoints.latest_step()
    if start is not None:
        state = checkpoints.restore(state)   # `state` is the template
    ...
    checkpoints.save(step, state)

Properties the training loops rely on:

* Crash safety: orbax writes to `<step>.orbax-checkpoint-tmp*` and renames
  it to `<step>` when complete, so a process killed mid-save leaves only a
  temporary directory, which is ignored and deleted by the next `Checkpointer`.
* Durability: `save(..., wait=True)` returns once the checkpoint is final.
  With `wait=False` the write continues in a background thread; the next
  `save`, `wait()` or `close()` waits for it.
* One timeline: saving step `s` first deletes stored steps `>= s` (left by an
  abandoned attempt after resuming from an older step). Orbax alone would
  silently skip such a save.
* Exactness: restored leaves are bit-for-bit the saved values, with the dtype,
  tree structure and (for jax arrays) sharding of the template.
* Quiet: orbax logs dozens of INFO lines per save through absl. Unless
  `quiet=False`, `quiet_orbax_logs()` is installed, which drops orbax records
  below WARNING from the `absl` logger (other absl/INFO logs stay).
"""

import logging
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from core.errors import ConfigError, DataError

_ORBAX_PATH_PART = os.sep + 'orbax' + os.sep


class _OrbaxInfoFilter(logging.Filter):
    """Drops records below a level that are emitted from orbax source files."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or _ORBAX_PATH_PART not in record.pathname


def quiet_orbax_logs(level: int = logging.WARNING) -> None:
    """Hides orbax log records below `level` (idempotent).

    Orbax logs through absl (python logger 'absl'); under `absl.app.run` with
    `--verbosity=0` (or `absl.logging.set_verbosity('info')`) every save prints
    ~40 INFO lines. This installs a filter on the 'absl' logger that drops
    records below `level` whose source file is part of orbax.

    Args:
        level: The lowest level of orbax records still shown.
    """
    absl_logger = logging.getLogger('absl')
    for existing in absl_logger.filters:
        if isinstance(existing, _OrbaxInfoFilter):
            existing.level = level
            return
    absl_logger.addFilter(_OrbaxInfoFilter(level))


def _to_savable(leaf: Any) -> Any:
    """Converts leaves orbax's StandardSave rejects (numpy scalars)."""
    if isinstance(leaf, np.generic):
        return np.asarray(leaf)
    return leaf


def _to_abstract(leaf: Any) -> Any:
    """Describes a template leaf for StandardRestore, keeping its sharding."""
    if isinstance(leaf, np.generic):
        return np.asarray(leaf)
    if isinstance(leaf, (bool, int, float)):
        return leaf
    return ocp.utils.to_shape_dtype_struct(leaf)


def _like_template(template_leaf: Any, restored_leaf: Any) -> Any:
    """Gives a restored leaf the python/numpy type of the template leaf."""
    if isinstance(template_leaf, np.generic):
        return type(template_leaf)(np.asarray(restored_leaf))
    if isinstance(template_leaf, (bool, int, float)):
        return type(template_leaf)(restored_leaf)
    return restored_leaf


class Checkpointer:
    """Saves and restores training states in numbered step directories.

    Args:
        directory: Where the step directories go (created if needed). Two
            checkpointers must not share a directory; sibling directories
            (e.g. 'checkpoints' and 'best') are fine.
        max_to_keep: How many most recent steps to keep; None keeps all.
        quiet: Whether to hide orbax's INFO logs (see `quiet_orbax_logs`).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2,
                 quiet: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f'max_to_keep must be >= 1 or None, got {max_to_keep}.')
        if quiet:
            quiet_orbax_logs()
        self._directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(self._directory, options=options)

    @property
    def directory(self) -> pathlib.Path:
        """The directory holding the step directories."""
        return self._directory

    def all_steps(self) -> list[int]:
        """Returns the stored (finalized) steps in increasing order."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Returns the newest stored step, or None if there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, wait: bool = True) -> None:
        """Saves `state` as step `step`.

        Stored steps `>= step` are deleted first, so the directory always
        describes a single timeline ending at `step`.

        Args:
            step: The training step (non-negative).
            state: A pytree of jax/numpy arrays, numpy scalars, python ints and
                floats (e.g. a dict holding params and an optax state).
            wait: If True, returns only once the checkpoint is durable on disk;
                otherwise the write finishes in the background.

        Raises:
            ValueError: If `step` is negative or `state` holds unsupported
                leaves (orbax's message names the leaf).
        """
        step = int(step)
        if step < 0:
            raise ValueError(f'step must be >= 0, got {step}.')
        self._manager.wait_until_finished()
        for stale in self.all_steps():
            if stale >= step:
                self._manager.delete(stale)
        savable = jax.tree.map(_to_savable, state)
        self._manager.save(step, args=ocp.args.StandardSave(savable), force=True)
        if wait:
            self._manager.wait_until_finished()

    def wait(self) -> None:
        """Blocks until a background save (from `wait=False`) is durable."""
        self._manager.wait_until_finished()

    def _existing_step(self, step: int | None) -> int:
        """`step`, or the latest one if None, once it is known to be stored."""
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise DataError(f'No checkpoint in {self._directory}.')
            return steps[-1]
        if step not in steps:
            raise DataError(f'No checkpoint for step {step} in {self._directory}; '
                            f'stored steps: {steps or "none"}.')
        return step

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restores a saved state.

        Args:
            template: A pytree like the saved state (e.g. the freshly
                initialized state). Only its structure, shapes, dtypes and
                shardings are used; jax arrays are restored onto the
                template's shardings, numpy leaves as numpy, python scalars as
                python scalars. `jax.ShapeDtypeStruct` leaves are accepted.
            step: The step to restore; the latest one if None.

        Returns:
            The restored state, with the template's tree structure.

        Raises:
            DataError: If there is no checkpoint, or not at `step`.
            ConfigError: If the checkpoint does not match the template (tree
                structure or shapes differ, e.g. after a model change).
        """
        step = self._existing_step(step)
        abstract = jax.tree.map(_to_abstract, template)
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError as e:
            raise ConfigError(
                f'The checkpoint at step {step} in {self._directory} does not match the '
                f'current model/optimizer state: {e}\nUse the configuration the run was '
                f'started with, or a new workdir.') from e
        return jax.tree.map(_like_template, template, restored)

    def restore_as_numpy(self, step: int | None = None) -> Any:
        """Restores a saved tree as it was saved, without a template.

        For reading another run's parameters (transfer) when the code that
        built them is not at hand: flax/optax containers come back as dicts
        and lists, every array as a host numpy array (so no device layout of
        the saving run is needed).

        Args:
            step: The step to restore; the latest one if None.

        Returns:
            The saved tree of numpy arrays.

        Raises:
            DataError: If there is no checkpoint, or not at `step`.
        """
        step = self._existing_step(step)
        path = self._directory / str(step) / 'default'
        checkpointer = ocp.PyTreeCheckpointer()
        tree = checkpointer.metadata(path).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def __enter__(self) -> 'Checkpointer':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
