"""In-memory supervised datasets and their deterministic batch streams.

An `Arrays` holds inputs `x` and one target array per task name, e.g.
`{"label": ...}` for classification or `{"digit": ..., "angle": ...}` for a
multi-task set. Images are stored as given (uint8 keeps memory small) and are
converted to float32 in [0, 1] only when a batch is built; float inputs and all
targets pass unchanged.

Training batches are a pure function of (seed, step), like the episode
sampler: step `s` belongs to epoch `s // steps_per_epoch`, whose order is
`np.random.default_rng([seed, epoch]).permutation(n)`, so a resumed run sees
exactly the batches an uninterrupted one would. The incomplete last batch of
an epoch is dropped, so every training batch has the same shape.

Evaluation batches come in a fixed order and all have exactly `batch_size`
rows, so one compiled eval step serves every batch; the last one is padded
with zero rows and a float32 `"mask"` (1 real, 0 padding) lets
`core.evaluate.evaluate` compute exact example-weighted means.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
import types

import numpy as np
from jax.sharding import Mesh

from core import mesh as mesh_lib
from core.errors import ConfigError

__all__ = ["Arrays", "EvalBatches", "split_validation", "train_batch_fn", "eval_batches",
           "is_int", "check_seed", "host_batch"]


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, eq=False)
class Arrays:
    """Inputs and per-task targets of one split, indexed by example.

    Equality is identity (`eq=False`): comparing arrays element-wise has no
    single truth value.

    Attributes:
      x: inputs [n, ...]; uint8 images or float features.
      y: task name -> targets [n, ...] (e.g. int32 labels, float32 values);
        stored as a read-only mapping.
    """

    x: np.ndarray
    y: Mapping[str, np.ndarray]

    def __post_init__(self):
        x = np.asarray(self.x)
        if x.ndim < 1:
            raise ConfigError(f"Arrays.x must have a leading example axis; got shape {x.shape}.")
        targets = {}
        for task, values in dict(self.y).items():
            if not isinstance(task, str):
                raise ConfigError(f"Arrays.y must be keyed by task name strings; got {task!r}.")
            values = np.asarray(values)
            if values.ndim < 1 or values.shape[0] != x.shape[0]:
                raise ConfigError(
                    f"Target {task!r} has shape {values.shape}, but x has {x.shape[0]} "
                    f"examples; every target needs one row per example of x.")
            targets[task] = values
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", types.MappingProxyType(targets))

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names, in the order of `y`."""
        return tuple(self.y)

    def take(self, indices) -> "Arrays":
        """The examples at `indices` (an integer array), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return Arrays(self.x[indices], {task: v[indices] for task, v in self.y.items()})


def split_validation(train: Arrays, size: int, seed: int) -> tuple[Arrays, Arrays]:
    """Carves a validation split out of the training set.

    The test set is never touched: model selection on it would bias the
    reported test score. Examples are assigned by a seeded permutation; both
    parts keep the original order of their examples.

    Args:
      train: the full training split.
      size: number of validation examples; 0 gives an empty validation split.
      seed: non-negative seed of the permutation.

    Returns:
      (remaining training examples, validation examples).

    Raises:
      ConfigError: `size` is negative or leaves no training examples, or the
        seed is not a non-negative integer.
    """
    if not is_int(size) or size < 0:
        raise ConfigError(f"--val_size must be a non-negative integer; got {size!r}.")
    if size >= len(train):
        raise ConfigError(
            f"--val_size={size} would leave no training examples: the training split has "
            f"only {len(train)}. Use --val_size < {len(train)} (0 for no validation).")
    check_seed(seed)
    order = np.random.default_rng(seed).permutation(len(train))
    return train.take(np.sort(order[size:])), train.take(np.sort(order[:size]))


def train_batch_fn(data: Arrays, batch_size: int, seed: int, mesh: Mesh,
                   flag: str = "--batch_size") -> Callable[[int], dict]:
    """A deterministic `step -> batch` function over shuffled epochs.

    Args:
      data: the training split.
      batch_size: examples per batch, a multiple of the number of devices.
      seed: non-negative seed of the epoch permutations.
      mesh: the device mesh; batches are split along their leading axis.
      flag: how to name `batch_size` in error messages.

    Returns:
      A function mapping a step >= 0 to `{"x": [B, ...], "y": {task: [B, ...]}}`
      placed on the mesh, uint8 `x` converted to float32 in [0, 1].

    Raises:
      ConfigError: the batch size is not positive, exceeds the number of
        examples or does not split over the devices, or the seed is invalid.
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"{flag} must be a positive integer; got {batch_size!r}.")
    if batch_size > len(data):
        raise ConfigError(
            f"{flag}={batch_size} exceeds the {len(data)} training examples; "
            f"use {flag} <= {len(data)}.")
    mesh_lib.check_divisible(batch_size, mesh, flag)
    check_seed(seed)
    return _TrainBatches(data, int(batch_size), int(seed), mesh)


class _TrainBatches:
    """The callable behind `train_batch_fn`, caching one epoch's permutation."""

    def __init__(self, data: Arrays, batch_size: int, seed: int, mesh: Mesh):
        self._data = data
        self._batch_size = batch_size
        self._seed = seed
        self._mesh = mesh
        self.steps_per_epoch = len(data) // batch_size
        self._cached = (-1, None)  # (epoch, permutation), replaced as one tuple.

    def __call__(self, step: int) -> dict:
        if not is_int(step) or step < 0:
            raise ConfigError(f"Training step must be a non-negative integer; got {step!r}.")
        epoch, position = divmod(int(step), self.steps_per_epoch)
        start = position * self._batch_size
        indices = self._permutation(epoch)[start:start + self._batch_size]
        return put_examples(self._data, indices, self._mesh)

    def _permutation(self, epoch: int) -> np.ndarray:
        cached_epoch, order = self._cached
        if cached_epoch != epoch:
            order = np.random.default_rng([self._seed, epoch]).permutation(len(self._data))
            self._cached = (epoch, order)
        return order


class EvalBatches:
    """Fixed-order, equal-size, masked evaluation batches; iterable many times.

    Full batches are views of the stored arrays and only the padded last batch
    is a copy, so no second copy of the split is kept; conversion to float and
    placement on the mesh happen per batch while iterating.

    Attributes:
      num_examples: real (unpadded) examples in the split.
      batch_size: rows of every batch, padding included.
    """

    def __init__(self, data: Arrays, batch_size: int, mesh: Mesh):
        self.num_examples = len(data)
        self.batch_size = batch_size
        self._mesh = mesh
        full = len(data) // batch_size * batch_size
        self._batches = [_host_slice(data, start, start + batch_size, batch_size)
                         for start in range(0, full, batch_size)]
        if full < len(data):
            self._batches.append(_host_slice(data, full, len(data), batch_size))

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[dict]:
        for x, y, mask in self._batches:
            yield mesh_lib.put_rows(functools.partial(_eval_rows, x, y, mask), self.batch_size,
                                    self._mesh)


def eval_batches(data: Arrays, batch_size: int, mesh: Mesh,
                 flag: str = "--eval_batch_size") -> EvalBatches:
    """Every example of a split once, in order, in batches of `batch_size`.

    Args:
      data: the split to evaluate; may be empty (then there are no batches).
      batch_size: rows per batch, a multiple of the number of devices.
      mesh: the device mesh; batches are split along their leading axis.
      flag: how to name `batch_size` in error messages.

    Returns:
      An iterable of `{"x", "y": {task: ...}, "mask": float32 [B]}` batches
      placed on the mesh.

    Raises:
      ConfigError: the batch size is not positive or does not split over the
        devices.
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"{flag} must be a positive integer; got {batch_size!r}.")
    mesh_lib.check_divisible(batch_size, mesh, flag)
    return EvalBatches(data, int(batch_size), mesh)


def _host_slice(data: Arrays, start: int, stop: int, batch_size: int) -> tuple:
    """Rows start..stop-1 as (x, y, mask), zero-padded to `batch_size` rows."""
    mask = (np.arange(batch_size) < stop - start).astype(np.float32)
    rows = lambda values: _pad_rows(values[start:stop], batch_size)
    return rows(data.x), {task: rows(values) for task, values in data.y.items()}, mask


def _pad_rows(rows: np.ndarray, batch_size: int) -> np.ndarray:
    """`rows` itself when it has `batch_size` rows, else a zero-padded copy."""
    if rows.shape[0] == batch_size:
        return rows
    padded = np.zeros((batch_size,) + rows.shape[1:], rows.dtype)
    padded[:rows.shape[0]] = rows
    return padded


def _eval_rows(x: np.ndarray, y: Mapping[str, np.ndarray], mask: np.ndarray, start: int,
               stop: int) -> dict:
    """Rows start .. stop - 1 of one evaluation batch, inputs converted for the model."""
    return {"x": _as_model_input(x[start:stop]),
            "y": {task: values[start:stop] for task, values in y.items()},
            "mask": mask[start:stop]}


def put_examples(data: Arrays, indices: np.ndarray, mesh: Mesh) -> dict:
    """The examples at `indices` as a batch on the mesh, each process converting only its rows."""
    return mesh_lib.put_rows(lambda start, stop: host_batch(data, indices[start:stop]),
                             len(indices), mesh)


def host_batch(data: Arrays, indices: np.ndarray) -> dict:
    """The examples at `indices` as a host batch, inputs converted for the model."""
    return {"x": _as_model_input(data.x[indices]),
            "y": {task: values[indices] for task, values in data.y.items()}}


def _as_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]; any other input unchanged."""
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    return x


def check_seed(seed: object) -> None:
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"The data seed must be a non-negative integer; got {seed!r}.")
