"""Tests for the School reader, its per-task split and the fake school.mat writer."""

import os

import numpy as np
import pytest
import scipy.io

from core.datasets import school
from core.datasets.fake_school import write_fake_school
from core.errors import ConfigError
from core.errors import DataError

N_TASKS = 6


@pytest.fixture
def fake_school(tmp_path):
    """(folder with a fake school.mat, its number of students per task)."""
    data_dir = str(tmp_path / "school")
    return data_dir, write_fake_school(_path(data_dir), N_TASKS, seed=0)


@pytest.fixture
def school_dir(fake_school):
    return fake_school[0]


def _path(data_dir):
    return os.path.join(data_dir, school.FILE_NAME)


def _rows(data, task):
    """The feature rows and scores of one task, as a sorted list of tuples."""
    chosen = data.y["task"] == task
    return sorted(map(tuple, np.column_stack([data.x[chosen], data.y["score"][chosen]])))


def test_fake_file_has_the_real_cell_layout(fake_school):
    school_dir, sizes = fake_school
    assert scipy.io.whosmat(_path(school_dir)) == [("X", (1, N_TASKS), "cell"),
                                                   ("Y", (1, N_TASKS), "cell")]
    contents = scipy.io.loadmat(_path(school_dir))
    for t, size in enumerate(sizes):
        x, y = contents["X"][0, t], contents["Y"][0, t]
        assert x.dtype == np.uint8 and x.shape == (size, 28)
        assert y.dtype == np.uint8 and y.shape == (size, 1)
        assert np.all(x[:, -1] == 1)


def test_split_keeps_every_student_once_with_its_task(fake_school):
    school_dir, sizes = fake_school
    features, scores = school.read_school(_path(school_dir))
    splits = school.load_school(school_dir, test_fraction=0.25, seed=0)
    assert set(splits) == {"train", "test"}
    for data in splits.values():
        assert data.x.dtype == np.float32 and data.x.shape[1:] == (28,)
        assert data.tasks == ("score", "task")
        assert data.y["score"].dtype == np.float32 and data.y["task"].dtype == np.int32
        assert np.all(np.diff(data.y["task"]) >= 0)  # Ordered by task.
    assert len(splits["train"]) + len(splits["test"]) == sum(sizes)
    for task, size in enumerate(sizes):
        n_test = int(np.sum(splits["test"].y["task"] == task))
        assert n_test == max(1, int(np.floor(0.25 * size + 0.5)))
        assert np.sum(splits["train"].y["task"] == task) == size - n_test
        joined = sorted(_rows(splits["train"], task) + _rows(splits["test"], task))
        expected = sorted(map(tuple, np.column_stack([features[task], scores[task]])))
        assert joined == expected


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_every_task_keeps_a_train_and_a_test_example(school_dir, fraction):
    splits = school.load_school(school_dir, test_fraction=fraction, seed=0)
    for data in splits.values():
        np.testing.assert_array_equal(np.unique(data.y["task"]), np.arange(N_TASKS))


def test_fraction_sets_the_test_share(tmp_path):
    data_dir = str(tmp_path)
    write_fake_school(_path(data_dir), n_tasks=3, seed=1, students=(40, 41))
    for fraction, n_test in ((0.25, 10), (0.2, 8)):
        test = school.load_school(data_dir, test_fraction=fraction)["test"]
        np.testing.assert_array_equal(np.bincount(test.y["task"]), [n_test] * 3)


def test_split_is_deterministic_and_depends_on_the_seed(school_dir):
    first = school.load_school(school_dir, seed=4)["test"]
    again = school.load_school(school_dir, seed=4)["test"]
    other = school.load_school(school_dir, seed=5)["test"]
    assert first.x.tobytes() == again.x.tobytes()
    assert first.y["score"].tobytes() == again.y["score"].tobytes()
    assert first.x.tobytes() != other.x.tobytes()


def test_missing_file_names_it_and_the_source(tmp_path):
    with pytest.raises(DataError, match="is missing") as error:
        school.load_school(str(tmp_path))
    assert _path(str(tmp_path)) in str(error.value)
    assert "jiayuzhou/MALSAR" in str(error.value) and "data/school.mat" in str(error.value)


def _write_bytes(data_dir, contents):
    with open(_path(data_dir), "wb") as f:
        f.write(contents)


def _truncate(data_dir):
    with open(_path(data_dir), "rb") as f:
        contents = f.read()
    _write_bytes(data_dir, contents[:len(contents) // 2])


def _save(**variables):
    return lambda data_dir: scipy.io.savemat(_path(data_dir), variables)


def _cells(*arrays):
    cells = np.empty((1, len(arrays)), dtype=object)
    for i, array in enumerate(arrays):
        cells[0, i] = array
    return cells


@pytest.mark.parametrize("damage, message", [
    (lambda d: _write_bytes(d, b"not a MATLAB file " * 20), "cannot be read as a MATLAB file"),
    (lambda d: _write_bytes(d, b""), "cannot be read as a MATLAB file"),
    (_truncate, "cannot be read as a MATLAB file"),
    (_save(A=np.ones(3)), "no variable 'X'"),
    (_save(X=np.ones((3, 28)), Y=np.ones((3, 1))), "X is a float64 \\(3, 28\\) array, not"),
    (_save(X=_cells(np.ones((3, 27))), Y=_cells(np.ones((3, 1)))),
     "X\\{1\\} is float64 \\(3, 27\\)"),
    (_save(X=_cells(np.ones((3, 28))), Y=_cells(np.ones((2, 1)))),
     "Y\\{1\\} is float64 \\(2, 1\\)"),
    (_save(X=_cells(np.ones((3, 28)), np.ones((2, 28))), Y=_cells(np.ones((3, 1)))),
     "X has 2 cells but Y has 1"),
    (_save(X=_cells(np.full((2, 28), np.nan)), Y=_cells(np.ones((2, 1)))), "non-finite"),
    (_save(X=_cells(np.ones((1, 28))), Y=_cells(np.ones((1, 1)))), "has 1 student"),
])
def test_bad_file_is_one_data_error_naming_it(school_dir, damage, message):
    damage(school_dir)
    with pytest.raises(DataError, match=message) as error:
        school.load_school(school_dir)
    assert _path(school_dir) in str(error.value)
    assert "jiayuzhou/MALSAR" in str(error.value)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.25", True])
def test_bad_fraction_is_a_config_error(school_dir, fraction):
    with pytest.raises(ConfigError, match="test_fraction"):
        school.load_school(school_dir, test_fraction=fraction)


@pytest.mark.parametrize("seed", [-1, 0.5, None])
def test_bad_seed_is_a_config_error(school_dir, seed):
    with pytest.raises(ConfigError, match="seed"):
        school.load_school(school_dir, seed=seed)


def test_explained_variance_formula():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert school.explained_variance(y, y) == pytest.approx(100.0)
    assert school.explained_variance(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert school.explained_variance(y, y + 3.0) == pytest.approx(100.0)  # Var, not MSE.
    # Residual [0, 0, 0, -1]: Var 0.1875 over Var(y) 1.25.
    assert school.explained_variance(y, [1.0, 2.0, 3.0, 5.0]) == pytest.approx(85.0)


def test_explained_variance_errors():
    with pytest.raises(ConfigError, match="one shape"):
        school.explained_variance(np.ones(3), np.ones(4))
    with pytest.raises(ConfigError, match="zero variance"):
        school.explained_variance(np.ones(3), np.zeros(3))
