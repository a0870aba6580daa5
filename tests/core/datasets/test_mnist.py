"""Tests for the MNIST / Fashion-MNIST IDX reader on tiny generated files."""

import gzip
import os

import numpy as np
import pytest

from core.datasets import mnist
from core.datasets.fake_idx import write_fake_idx_dataset
from core.datasets.fake_idx import write_idx
from core.errors import ConfigError
from core.errors import DataError

N_TRAIN, N_TEST = 30, 12
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"


def _write(directory, gzipped=True, seed=0):
    write_fake_idx_dataset(str(directory), n_train=N_TRAIN, n_test=N_TEST, gzip=gzipped,
                           seed=seed)
    return str(directory)


def _raw_contents(path):
    with open(path, "rb") as f:
        contents = f.read()
    return gzip.decompress(contents) if path.endswith(".gz") else contents


@pytest.mark.parametrize("gzipped", [True, False])
def test_reads_generated_files_exactly(tmp_path, gzipped):
    data_dir = _write(tmp_path, gzipped)
    suffix = ".gz" if gzipped else ""
    splits = mnist.load_mnist(data_dir)
    assert set(splits) == {"train", "test"}
    for split, count in (("train", N_TRAIN), ("test", N_TEST)):
        images_name, labels_name = mnist.IDX_FILE_NAMES[split]
        raw_images = _raw_contents(os.path.join(data_dir, images_name + suffix))
        raw_labels = _raw_contents(os.path.join(data_dir, labels_name + suffix))
        data = splits[split]
        assert data.x.shape == (count, 28, 28, 1) and data.x.dtype == np.uint8
        assert data.tasks == ("label",)
        assert data.y["label"].shape == (count,) and data.y["label"].dtype == np.int32
        np.testing.assert_array_equal(data.x.reshape(-1), np.frombuffer(raw_images[16:], np.uint8))
        np.testing.assert_array_equal(data.y["label"], np.frombuffer(raw_labels[8:], np.uint8))
        assert set(data.y["label"].tolist()) == set(range(10))


def test_raw_file_is_preferred_over_gz(tmp_path):
    data_dir = _write(tmp_path, gzipped=True, seed=0)
    write_fake_idx_dataset(data_dir, n_train=N_TRAIN + 1, n_test=N_TEST, gzip=False, seed=1)
    assert len(mnist.load_mnist(data_dir)["train"]) == N_TRAIN + 1


def test_fashion_variant_reads_the_same_format(tmp_path):
    data_dir = _write(tmp_path)
    plain, fashion = mnist.load_mnist(data_dir), mnist.load_mnist(data_dir, "fashion_mnist")
    np.testing.assert_array_equal(plain["test"].x, fashion["test"].x)
    assert mnist.class_names("fashion_mnist") == mnist.FASHION_MNIST_CLASS_NAMES
    assert len(mnist.FASHION_MNIST_CLASS_NAMES) == 10
    assert mnist.FASHION_MNIST_CLASS_NAMES[9] == "Ankle boot"


def test_unknown_variant_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="kmnist"):
        mnist.load_mnist(_write(tmp_path), "kmnist")


def test_read_idx_handles_wider_types(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    path = str(tmp_path / "values-idx2-int")
    write_idx(path, values)
    read = mnist.read_idx(path)
    np.testing.assert_array_equal(read, values)
    assert read.dtype == np.int32


def _corrupt(path, contents):
    os.remove(path)
    with open(path, "wb") as f:
        f.write(contents)


def _truncate(path):
    _corrupt(path, gzip.compress(_raw_contents(path)[:-5]))


def _wrong_magic(path):
    contents = bytearray(_raw_contents(path))
    contents[3] = 0x01  # An images file claiming one dimension.
    _corrupt(path, gzip.compress(bytes(contents)))


def _bad_gzip(path):
    with open(path, "rb") as f:
        contents = f.read()
    _corrupt(path, contents[:len(contents) // 2])


def _header_only(path):
    _corrupt(path, gzip.compress(b"\0\0"))


@pytest.mark.parametrize("damage, message", [
    (os.remove, "missing"),
    (_truncate, "truncated"),
    (_wrong_magic, "magic number 0x00000801, expected 0x00000803"),
    (_bad_gzip, "not valid gzip"),
    (_header_only, "too few for a header"),
])
def test_damaged_file_is_one_data_error_naming_it(tmp_path, damage, message):
    data_dir = _write(tmp_path)
    path = os.path.join(data_dir, TEST_IMAGES + ".gz")
    damage(path)
    with pytest.raises(DataError, match=message) as error:
        mnist.load_mnist(data_dir)
    text = str(error.value)
    assert os.path.join(data_dir, TEST_IMAGES) in text
    assert "http://yann.lecun.com/exdb/mnist/" in text
    assert "ossci-datasets.s3.amazonaws.com/mnist" in text


def test_fashion_error_says_where_to_get_fashion_mnist(tmp_path):
    data_dir = _write(tmp_path)
    os.remove(os.path.join(data_dir, TRAIN_LABELS + ".gz"))
    with pytest.raises(DataError, match=TRAIN_LABELS) as error:
        mnist.load_mnist(data_dir, "fashion_mnist")
    assert "github.com/zalandoresearch/fashion-mnist" in str(error.value)
    assert "data/fashion" in str(error.value)


def test_count_mismatch_names_both_files(tmp_path):
    data_dir = _write(tmp_path)
    labels = np.zeros(N_TRAIN - 1, np.uint8)
    write_idx(os.path.join(data_dir, TRAIN_LABELS + ".gz"), labels, gzip=True)
    with pytest.raises(DataError, match=f"{N_TRAIN} images but .* {N_TRAIN - 1} labels") as error:
        mnist.load_mnist(data_dir)
    assert TRAIN_IMAGES in str(error.value) and TRAIN_LABELS in str(error.value)


def test_label_out_of_range_names_the_file(tmp_path):
    data_dir = _write(tmp_path)
    labels = np.full(N_TRAIN, 10, np.uint8)
    write_idx(os.path.join(data_dir, TRAIN_LABELS + ".gz"), labels, gzip=True)
    with pytest.raises(DataError, match=f"{TRAIN_LABELS}.*label 10"):
        mnist.load_mnist(data_dir)


def test_missing_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        mnist.load_mnist(str(tmp_path / "nowhere"))
