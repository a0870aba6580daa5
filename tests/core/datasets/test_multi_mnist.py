"""Tests for the MultiMNIST generator on hand-made images and fake IDX files."""

import os

import jax
import numpy as np
import pytest

from core.datasets import multi_mnist
from core.datasets.arrays import Arrays
from core.datasets.fake_idx import write_fake_idx_dataset
from core.datasets.fake_idx import write_idx
from core.datasets.mnist import IDX_FILE_NAMES
from core.datasets.mnist import load_mnist
from core.errors import ConfigError
from core.errors import DataError

N_TRAIN, N_TEST = 40, 16
# Partners of 10 images for seed 0; pinned so that a changed random stream is noticed.
GOLDEN_PARTNERS = [9, 4, 8, 6, 0, 1, 2, 7, 1, 3]


def _constant_images(values) -> np.ndarray:
    """One 28x28x1 uint8 image per value, every pixel equal to it."""
    values = np.asarray(values, np.uint8)
    return np.broadcast_to(values[:, None, None, None], (len(values), 28, 28, 1)).copy()


def _indexed(images: np.ndarray) -> Arrays:
    """Images labelled by their own index, so a pair's labels name its images."""
    return Arrays(images, {"label": np.arange(len(images), dtype=np.int32)})


def _reference(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The reference's per-image recipe, resized with jax.image.resize."""
    canvas = np.zeros((36, 36), np.uint8)
    canvas[0:28, 0:28] = left
    canvas[6:34, 6:34] = right
    canvas[6:28, 6:28] = np.maximum(left[6:28, 6:28], right[0:22, 0:22])
    return np.asarray(jax.image.resize(canvas, (28, 28), method="nearest"))


def _write_idx_dir(directory, split_images: dict, split_labels: dict) -> str:
    """An IDX folder holding the given uint8 images [n, 28, 28] and labels per split."""
    os.makedirs(directory, exist_ok=True)
    for split, (images_name, labels_name) in IDX_FILE_NAMES.items():
        write_idx(os.path.join(directory, images_name), split_images[split])
        write_idx(os.path.join(directory, labels_name), split_labels[split].astype(np.uint8))
    return str(directory)


@pytest.fixture
def idx_dirs(tmp_path):
    """Two fake IDX datasets (standing in for MNIST and Fashion-MNIST)."""
    dirs = {}
    for seed, name in enumerate(("mnist", "fashion")):
        dirs[name] = str(tmp_path / name)
        write_fake_idx_dataset(dirs[name], n_train=N_TRAIN, n_test=N_TEST, seed=seed)
    return dirs


def test_canvas_layout_on_constant_images():
    left = _indexed(_constant_images([100]))
    right = _indexed(_constant_images([50]))
    x = multi_mnist.make_multi(left, right, seed=0).x[0, ..., 0]
    canvas = np.zeros((36, 36), np.uint8)
    canvas[6:34, 6:34] = 50
    canvas[0:28, 0:28] = 100  # Left wins the overlap: max(100, 50).
    rows = [int(np.floor((i + 0.5) * 36 / 28)) for i in range(28)]
    np.testing.assert_array_equal(x, canvas[np.ix_(rows, rows)])
    assert x[0, 0] == 100 and x[0, 27] == 0 and x[27, 0] == 0
    assert x[25, 25] == 50 and x[27, 27] == 0  # Canvas rows 32 (right) and 35 (empty).


def test_overlap_is_the_pixelwise_maximum():
    left = np.zeros((1, 28, 28, 1), np.uint8)
    right = np.zeros((1, 28, 28, 1), np.uint8)
    left[0, 10:22, 10:22] = 200  # Canvas [10:22, 10:22].
    right[0, 4:16, 4:16] = 120  # Canvas [10:22, 10:22] too.
    right[0, 10:16, 10:16] = 250  # Canvas [16:22, 16:22]: brighter than left there.
    x = multi_mnist.make_multi(_indexed(left), _indexed(right), seed=0).x[0, ..., 0]
    np.testing.assert_array_equal(x, _reference(left[0, ..., 0], right[0, ..., 0]))
    assert set(np.unique(x)) == {0, 200, 250}


def test_matches_per_image_reference_with_jax_resize():
    rng = np.random.default_rng(3)
    left = rng.integers(0, 256, size=(12, 28, 28, 1), dtype=np.uint8)
    right = rng.integers(0, 256, size=(7, 28, 28, 1), dtype=np.uint8)
    pairs = multi_mnist.make_multi(_indexed(left), _indexed(right), seed=5)
    assert pairs.x.shape == (12, 28, 28, 1) and pairs.x.dtype == np.uint8
    np.testing.assert_array_equal(pairs.y["left"], np.arange(12))
    for i, partner in enumerate(pairs.y["right"]):
        np.testing.assert_array_equal(pairs.x[i, ..., 0],
                                      _reference(left[i, ..., 0], right[partner, ..., 0]))


@pytest.mark.parametrize("source, size", [(36, 28), (28, 14), (10, 7), (7, 10), (5, 5)])
def test_resize_nearest_equals_jax_image_resize(source, size):
    images = np.random.default_rng(0).integers(0, 256, size=(3, source, source), dtype=np.uint8)
    expected = jax.image.resize(images, (3, size, size), method="nearest")
    np.testing.assert_array_equal(multi_mnist.resize_nearest(images, size), np.asarray(expected))


def test_partners_are_deterministic_and_depend_on_seed_and_stream():
    images = _indexed(np.random.default_rng(1).integers(0, 256, (64, 28, 28, 1), np.uint8))
    first = multi_mnist.make_multi(images, seed=7)
    again = multi_mnist.make_multi(images, seed=7)
    assert first.x.tobytes() == again.x.tobytes()
    np.testing.assert_array_equal(first.y["right"], again.y["right"])
    for other in (multi_mnist.make_multi(images, seed=8),
                  multi_mnist.make_multi(images, seed=7, stream=1)):
        assert not np.array_equal(first.y["right"], other.y["right"])
        assert first.x.tobytes() != other.x.tobytes()


def test_partner_stream_is_pinned():
    pairs = multi_mnist.make_multi(_indexed(_constant_images(range(10))), seed=0)
    assert pairs.y["right"].tolist() == GOLDEN_PARTNERS
    assert pairs.y["left"].dtype == np.int32 and pairs.y["right"].dtype == np.int32


@pytest.mark.parametrize("variant, left, right", [
    ("multi_mnist", "mnist", "mnist"),
    ("multi_fashion", "fashion", "fashion"),
    ("multi_fashion_mnist", "fashion", "mnist"),
])
def test_load_variants_read_the_right_folders(idx_dirs, variant, left, right):
    second = idx_dirs["mnist"] if variant == "multi_fashion_mnist" else None
    splits = multi_mnist.load_multi_mnist(idx_dirs[left], variant, seed=0,
                                          second_data_dir=second)
    assert set(splits) == {"train", "test"}
    for split, count in (("train", N_TRAIN), ("test", N_TEST)):
        data = splits[split]
        assert data.x.shape == (count, 28, 28, 1) and data.x.dtype == np.uint8
        assert data.tasks == ("left", "right")
        expected = multi_mnist.make_multi(load_mnist(idx_dirs[left])[split],
                                          load_mnist(idx_dirs[right])[split], seed=0,
                                          stream=multi_mnist._SPLIT_STREAMS[split])
        assert data.x.tobytes() == expected.x.tobytes()
        np.testing.assert_array_equal(data.y["right"], expected.y["right"])


def test_pairs_stay_within_their_split(tmp_path):
    # Left images are blank and every right image has its own brightness, so the
    # bottom-right output pixel (canvas row 32, right-only) names the partner.
    blank = {"train": np.zeros((N_TRAIN, 28, 28), np.uint8),
             "test": np.zeros((N_TEST, 28, 28), np.uint8)}
    marked = {"train": _constant_images(np.arange(1, N_TRAIN + 1))[..., 0],
              "test": _constant_images(np.arange(101, 101 + N_TEST))[..., 0]}
    labels = {split: np.arange(len(images)) % 10 for split, images in blank.items()}
    fashion = _write_idx_dir(tmp_path / "fashion", blank, labels)
    mnist = _write_idx_dir(tmp_path / "mnist", marked, labels)
    splits = multi_mnist.load_multi_mnist(fashion, "multi_fashion_mnist", seed=0,
                                          second_data_dir=mnist)
    for split in ("train", "test"):
        partners = splits[split].x[:, 25, 25, 0].astype(int) - marked[split][0, 0, 0]
        assert 0 <= partners.min() and partners.max() < len(marked[split])
        np.testing.assert_array_equal(splits[split].y["right"], labels[split][partners])


def test_fashion_mnist_variant_needs_the_second_folder(idx_dirs):
    with pytest.raises(ConfigError, match="second_data_dir"):
        multi_mnist.load_multi_mnist(idx_dirs["fashion"], "multi_fashion_mnist")


def test_second_folder_for_a_single_dataset_variant_is_an_error(idx_dirs):
    with pytest.raises(ConfigError, match="only used by variant 'multi_fashion_mnist'"):
        multi_mnist.load_multi_mnist(idx_dirs["mnist"], "multi_mnist",
                                     second_data_dir=idx_dirs["fashion"])


def test_unknown_variant_is_a_config_error(idx_dirs):
    with pytest.raises(ConfigError, match="multi_kmnist"):
        multi_mnist.load_multi_mnist(idx_dirs["mnist"], "multi_kmnist")


def test_missing_folder_is_a_data_error(tmp_path, idx_dirs):
    with pytest.raises(DataError, match="does not exist"):
        multi_mnist.load_multi_mnist(idx_dirs["fashion"], "multi_fashion_mnist",
                                     second_data_dir=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32, 1), np.uint8), "uint8 \\[n, 28, 28, 1\\]"),
    (np.zeros((2, 28, 28, 1), np.float32), "uint8 \\[n, 28, 28, 1\\]"),
    (np.zeros((2, 28, 28, 3), np.uint8), "uint8 \\[n, 28, 28, 1\\]"),
])
def test_bad_images_are_config_errors(images, message):
    with pytest.raises(ConfigError, match=message):
        multi_mnist.make_multi(_indexed(images), seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, True, None])
def test_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed"):
        multi_mnist.make_multi(_indexed(_constant_images([1, 2])), seed=seed)
