"""A tiny fake `school.mat` in the layout of the real School benchmark file.

For tests: the file is a MATLAB v5 file written with `scipy.io.savemat` that
`scipy.io.loadmat` reads back like the MALSAR original, two 1 x n_tasks cell
arrays `X` (uint8 n_t x 28 features) and `Y` (uint8 n_t x 1 scores), but with
only a few students per school. The features imitate the real ones (binary
attributes, two small counts, a constant 1 bias column last), and each
school's score is a noisy linear function of them with its own weights, so a
multi-task model has something to learn. Everything is a deterministic
function of `seed`.
"""

import os

import numpy as np

from core.datasets.school import FILE_NAME
from core.datasets.school import NUM_FEATURES

__all__ = ["write_fake_school", "FILE_NAME"]

_COUNT_COLUMNS = {3: (8, 92), 4: (3, 44)}  # column -> [low, high) of the non-binary features.


def write_fake_school(path: str, n_tasks: int = 5, seed: int = 0,
                      students: tuple[int, int] = (4, 12)) -> list[int]:
    """Writes a small School file.

    Args:
      path: the file to write (e.g. `<data_dir>/school.mat`); its folder is
        created if missing.
      n_tasks: number of schools (139 in the real file).
      seed: makes features, scores and school sizes reproducible.
      students: [low, high) range of students per school (22..251 in the
        real file); low >= 2 keeps the file loadable by `load_school`.

    Returns:
      The number of students written for each school, in order.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(students[0], students[1], size=n_tasks)
    x_cells = np.empty((1, n_tasks), dtype=object)
    y_cells = np.empty((1, n_tasks), dtype=object)
    for task, size in enumerate(sizes):
        x = _features(rng, int(size))
        weights = rng.normal(0.0, 2.0, size=NUM_FEATURES)
        score = 20 + (x - x.mean(0)) @ weights / 4 + rng.normal(0.0, 2.0, size=len(x))
        x_cells[0, task] = x.astype(np.uint8)
        y_cells[0, task] = np.clip(np.rint(score), 1, 70).astype(np.uint8)[:, None]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    import scipy.io  # Lazy, like the reader.
    scipy.io.savemat(path, {"X": x_cells, "Y": y_cells}, format="5")
    return [int(size) for size in sizes]


def _features(rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, 28] features: binary attributes, two counts, a bias column of ones."""
    x = rng.integers(0, 2, size=(count, NUM_FEATURES))
    for column, (low, high) in _COUNT_COLUMNS.items():
        x[:, column] = rng.integers(low, high, size=count)
    x[:, -1] = 1
    return x.astype(np.float64)
