"""The School multi-task regression benchmark (exam scores of 139 London schools).

The data come as `school.mat` from the MALSAR toolbox (GitHub
jiayuzhou/MALSAR, file `data/school.mat`): a MATLAB v5 file with two 1x139
cell arrays, `X{t}` (n_t x 28 features of the students of school t) and
`Y{t}` (n_t x 1 exam scores), 15,362 students in all. The features are
stored as given (year, school and student attributes, mostly binary, the
last column a constant 1 bias term); standardising them is left to the
caller.

Each student belongs to exactly one school, so the set is task-indexed
rather than multi-target: `y = {"score": float32 [n], "task": int32 [n]}`,
where "task" is the school's index 0..138. The multi-task family treats
"task" as the index of the head whose loss the example contributes to; it
is a routing index, not a target to predict.

There is no official split. Papers draw random per-task splits, commonly
75/25 or 80/20; `load_school` draws one per school from a seeded
`np.random.default_rng`, keeping at least one training and one test student
in every school. Results are usually reported as `explained_variance`.
"""

import math
import os
import zlib

import numpy as np

from core.datasets.arrays import Arrays
from core.errors import ConfigError
from core.errors import DataError

__all__ = ["load_school", "read_school", "explained_variance", "FILE_NAME", "NUM_FEATURES",
           "SOURCE_HINT"]

FILE_NAME = "school.mat"
NUM_FEATURES = 28
SOURCE_HINT = ("Get school.mat from the MALSAR toolbox (GitHub jiayuzhou/MALSAR, file "
               "data/school.mat) and put it in the data directory.")
# Distinguishes this module's random streams from other users of the same seed.
_STREAM_TAG = 0x5343484C  # "SCHL"


def load_school(data_dir: str, test_fraction: float = 0.25, seed: int = 0) -> dict[str, Arrays]:
    """Reads School and splits every school's students into train and test.

    Args:
      data_dir: the folder holding `school.mat`; only read.
      test_fraction: share of each school's students put in the test split,
        in (0, 1); rounded per school to at least 1 and at most n_t - 1.
      seed: non-negative seed of the per-school permutations.

    Returns:
      {"train", "test"} -> Arrays with x float32 [n, 28] and
      y {"score": float32 [n], "task": int32 [n]}, examples ordered by task
      and, within a task, by their position in the file.

    Raises:
      ConfigError: test_fraction or seed is invalid.
      DataError: the file is missing, not a MATLAB file, or not laid out as
        School (see the module docstring), or a school has fewer than two
        students.
    """
    is_number = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not (is_number and 0 < test_fraction < 1):
        raise ConfigError(f"The School test_fraction must be a number in (0, 1), e.g. 0.25 or "
                          f"0.2; got {test_fraction!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"The School split seed must be a non-negative integer; got {seed!r}.")
    path = os.path.join(data_dir, FILE_NAME)
    features, scores = read_school(path)
    parts = {"train": [], "test": []}
    for task, (x, y) in enumerate(zip(features, scores)):
        for split, rows in _split_task(path, task, len(x), test_fraction, seed).items():
            parts[split].append((x[rows], y[rows], np.full(len(rows), task, np.int32)))
    return {split: _concatenate(pieces) for split, pieces in parts.items()}


def read_school(path: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Reads the per-task features and scores of a `school.mat` file.

    Args:
      path: the file.

    Returns:
      (features, scores): one float32 [n_t, 28] and one float32 [n_t] array
      per task, in the file's order.

    Raises:
      DataError: the file is missing, unreadable, not a MATLAB file, or
        lacks the X/Y cell layout of the module docstring.
    """
    if not os.path.isfile(path):
        raise DataError(f"School file {path!r} is missing. {SOURCE_HINT}")
    contents = _loadmat(path)
    cells = {}
    for name in ("X", "Y"):
        cells[name] = _cell_array(path, contents, name)
    if len(cells["X"]) != len(cells["Y"]):
        raise _layout_error(path, f"X has {len(cells['X'])} cells but Y has {len(cells['Y'])}")
    features, scores = [], []
    for task, (x, y) in enumerate(zip(cells["X"], cells["Y"])):
        x, y = _task_arrays(path, task, x, y)
        features.append(x)
        scores.append(y)
    return features, scores


def explained_variance(y_true, y_pred) -> float:
    """The explained variance of predictions, in percent, as reported for School.

    explained_variance = 100 * (1 - Var(y_true - y_pred) / Var(y_true)),
    with population variances (ddof 0) over all given examples. Some papers
    use the mean squared error in place of Var(residual); the two agree when
    the residuals have zero mean. For a per-task average, call this once per
    task and average the results.

    Args:
      y_true: true scores, any shape.
      y_pred: predictions, the same shape.

    Returns:
      The explained variance in percent (100 for perfect predictions, 0 for
      predicting the mean, negative for worse).

    Raises:
      ConfigError: the shapes differ, or y_true has fewer than two distinct
        values (its variance is zero and the ratio undefined).
    """
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape:
        raise ConfigError(f"explained_variance needs y_true and y_pred of one shape; got "
                          f"{y_true.shape} and {y_pred.shape}.")
    total = np.var(y_true)
    if not total > 0:
        raise ConfigError("explained_variance is undefined when y_true has zero variance "
                          "(fewer than two distinct true values).")
    return float(100.0 * (1.0 - np.var(y_true - y_pred) / total))


def _split_task(path: str, task: int, count: int, test_fraction: float,
                seed: int) -> dict[str, np.ndarray]:
    """Sorted train and test row indices of one task's `count` students."""
    if count < 2:
        raise DataError(f"School file {path!r}: task {task} (X{{{task + 1}}}) has {count} "
                        f"student(s), but every task needs two to give one train and one test "
                        f"example. {SOURCE_HINT}")
    order = np.random.default_rng([int(seed), _STREAM_TAG, task]).permutation(count)
    n_test = min(max(math.floor(test_fraction * count + 0.5), 1), count - 1)
    return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def _loadmat(path: str) -> dict:
    """`scipy.io.loadmat` of `path`, every read failure turned into a DataError."""
    import scipy.io  # Lazy: only School needs scipy.
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files.
        raise DataError(f"School file {path!r} is a MATLAB v7.3 (HDF5) file ({e}); the "
                        f"benchmark file is MATLAB v5. {SOURCE_HINT}") from e
    except (OSError, ValueError, TypeError, EOFError, zlib.error,
            scipy.io.matlab.MatReadError) as e:
        raise DataError(f"School file {path!r} cannot be read as a MATLAB file ({e}); it is not "
                        f"a .mat file, or it is truncated or corrupt. {SOURCE_HINT}") from e


def _cell_array(path: str, contents: dict, name: str) -> np.ndarray:
    """The cells of variable `name` as a flat object array, checked."""
    if name not in contents:
        found = sorted(key for key in contents if not key.startswith("__"))
        raise _layout_error(path, f"it has no variable {name!r} (found {found})")
    value = np.asarray(contents[name])
    if value.dtype != object or value.size == 0:
        raise _layout_error(path, f"{name} is a {value.dtype} {value.shape} array, not a "
                                  f"non-empty cell array")
    return value.reshape(-1)


def _task_arrays(path: str, task: int, x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    """One task's cell contents as float32 [n_t, 28] features and [n_t] scores."""
    x, y = np.asarray(x), np.asarray(y)
    numeric = all(np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
                  for a in (x, y))
    if not numeric or x.ndim != 2 or x.shape[1] != NUM_FEATURES:
        raise _layout_error(path, f"X{{{task + 1}}} is {x.dtype} {x.shape}, expected a numeric "
                                  f"n_t x {NUM_FEATURES} matrix")
    if y.ndim != 2 or y.shape != (x.shape[0], 1):
        raise _layout_error(path, f"Y{{{task + 1}}} is {y.dtype} {y.shape}, expected a numeric "
                                  f"{x.shape[0]} x 1 column like X{{{task + 1}}}")
    x, y = x.astype(np.float32), y[:, 0].astype(np.float32)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise _layout_error(path, f"X{{{task + 1}}} or Y{{{task + 1}}} holds non-finite values")
    return x, y


def _layout_error(path: str, problem: str) -> DataError:
    return DataError(f"School file {path!r} is not laid out as the School benchmark: {problem}. "
                     f"It should hold 1 x 139 cell arrays X (n_t x {NUM_FEATURES} features) and "
                     f"Y (n_t x 1 scores). {SOURCE_HINT}")


def _concatenate(pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Arrays:
    x, score, task = (np.concatenate(column) for column in zip(*pieces))
    return Arrays(x, {"score": score, "task": task})
