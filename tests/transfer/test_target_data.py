"""Tests of `transfer.data`: class subsets relabelled in order, validation carved before
subsampling, exactly N seeded examples per class, and clear errors."""

import numpy as np
import pytest

from core.datasets.arrays import Arrays
from core.datasets.fake_idx import write_fake_idx_dataset
from core.datasets.supervised import load_supervised
from core.errors import ConfigError, DataError
from transfer import data


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("target_mnist")
    write_fake_idx_dataset(str(path), n_train=200, n_test=40)
    return str(path)


def _load(mnist_dir, **overrides):
    args = dict(dataset="mnist", data_dir=mnist_dir, classes=(7, 5, 9), train_per_class=4,
                val_size=12, seed=0)
    args.update(overrides)
    return data.load_target(**args)


def _images(split):
    return {bytes(row) for row in split.x.reshape(len(split), -1)}


def test_classes_are_kept_and_relabelled_in_the_order_given(mnist_dir):
    target = _load(mnist_dir, train_per_class=0)
    original = load_supervised("mnist", mnist_dir)["test"]
    labels = original.y["label"]
    keep = np.isin(labels, (7, 5, 9))
    np.testing.assert_array_equal(target.splits["test"].x, original.x[keep])
    expected = np.select([labels[keep] == 7, labels[keep] == 5, labels[keep] == 9], [0, 1, 2])
    np.testing.assert_array_equal(target.splits["test"].y["label"], expected)
    assert target.classes == (7, 5, 9) and target.num_classes == 3
    assert target.input_shape == (28, 28, 1)
    assert len(target.splits["train"]) + len(target.splits["val"]) == 60


def test_exactly_n_per_class_seeded_and_nested(mnist_dir):
    four = _load(mnist_dir, train_per_class=4)
    assert np.bincount(four.splits["train"].y["label"]).tolist() == [4, 4, 4]
    again = _load(mnist_dir, train_per_class=4)
    np.testing.assert_array_equal(four.splits["train"].x, again.splits["train"].x)
    other = _load(mnist_dir, train_per_class=4, seed=1)
    assert _images(other.splits["train"]) != _images(four.splits["train"])
    eight = _load(mnist_dir, train_per_class=8)
    assert _images(four.splits["train"]) <= _images(eight.splits["train"])


def test_validation_is_the_same_whatever_the_number_of_labels(mnist_dir):
    few, every = _load(mnist_dir, train_per_class=2), _load(mnist_dir, train_per_class=0)
    np.testing.assert_array_equal(few.splits["val"].x, every.splits["val"].x)
    assert not _images(few.splits["val"]) & _images(every.splits["train"])
    assert _images(few.splits["train"]) <= _images(every.splits["train"])


def test_per_class_subset_keeps_the_original_order():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1], np.int32)
    arrays = Arrays(np.arange(8, dtype=np.float32)[:, None], {"label": labels})
    subset = data.per_class_subset(arrays, 2, seed=3)
    assert np.all(np.diff(subset.x[:, 0]) > 0)
    assert np.bincount(subset.y["label"]).tolist() == [2, 2]


@pytest.mark.parametrize("overrides, error, message", [
    ({"classes": (5, 10)}, ConfigError, r"ids \[10\] are not classes"),
    ({"classes": (5, 5)}, ConfigError, "names a class twice"),
    ({"classes": (5,)}, ConfigError, "at least two classes"),
    ({"train_per_class": 50}, DataError, "--train_per_class=50 but label 0 has only"),
    ({"val_size": 60}, ConfigError, "--val_size=60 would leave no training examples"),
    ({"dataset": "cifar10"}, ConfigError, "unknown --dataset='cifar10'"),
    ({"data_dir": None}, ConfigError, "--data_dir is required"),
])
def test_bad_input_gives_one_clear_error(mnist_dir, overrides, error, message):
    with pytest.raises(error, match=message):
        _load(mnist_dir, **overrides)
