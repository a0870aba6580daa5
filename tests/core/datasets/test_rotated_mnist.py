"""Tests for rotated MNIST (digit + angle) on hand-made images and fake IDX files."""

import numpy as np
import pytest
from scipy import ndimage

from core.datasets import rotated_mnist
from core.datasets.arrays import Arrays
from core.datasets.fake_idx import write_fake_idx_dataset
from core.datasets.mnist import load_mnist
from core.errors import ConfigError
from core.errors import DataError

N_TRAIN, N_TEST = 30, 12
# Angles of 4 images for seed 0, max_angle 45; pinned so that a changed random stream is noticed.
GOLDEN_ANGLES = [3.5977194, 9.685544, 35.040897, -19.534597]


def _random_images(count=4, size=28, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=(count, size, size), dtype=np.uint8)
    return rng.random((count, size, size)).astype(dtype)


@pytest.fixture
def mnist_dir(tmp_path):
    write_fake_idx_dataset(str(tmp_path), n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return str(tmp_path)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_zero_angle_is_the_identity(dtype):
    images = _random_images(dtype=dtype)
    turned = rotated_mnist.rotate_images(images, np.zeros(4))
    assert turned.dtype == dtype
    np.testing.assert_array_equal(turned, images)


@pytest.mark.parametrize("angle, quarter_turns", [(90, 1), (-90, -1), (180, 2), (270, 3)])
@pytest.mark.parametrize("size", [28, 7])
def test_quarter_turns_equal_rot90(angle, quarter_turns, size):
    images = _random_images(size=size)
    turned = rotated_mnist.rotate_images(images, np.full(4, angle))
    np.testing.assert_array_equal(turned, np.rot90(images, quarter_turns, axes=(1, 2)))


def test_positive_angle_turns_counter_clockwise():
    image = np.zeros((1, 7, 7), np.uint8)
    image[0, 0, 3] = 255  # Top middle.
    turned = rotated_mnist.rotate_images(image, np.array([90.0]))
    assert turned[0, 3, 0] == 255 and turned.sum() == 255  # Now left middle.


@pytest.mark.parametrize("angle", [10.0, -33.0, 45.0, 123.4])
def test_bilinear_matches_scipy_ndimage_with_zero_padding(angle):
    images = _random_images(count=3, dtype=np.float64)
    turned = rotated_mnist.rotate_images(images, np.full(3, angle))
    for image, ours in zip(images, turned):
        expected = ndimage.rotate(image, angle, reshape=False, order=1, mode="grid-constant",
                                  cval=0.0)
        np.testing.assert_allclose(ours, expected, atol=1e-9)


def test_outside_pixels_read_as_zero():
    ones = np.ones((1, 28, 28), np.float64)
    turned = rotated_mnist.rotate_images(ones, np.array([45.0]))[0]
    assert turned[0, 0] == 0 and turned[27, 27] == 0
    assert turned[13, 13] == pytest.approx(1.0) and turned[14, 14] == pytest.approx(1.0)


def test_each_image_uses_its_own_angle_and_keeps_its_channel_axis():
    images = _random_images()[..., None]
    angles = np.array([0.0, 90.0, 180.0, -90.0])
    turned = rotated_mnist.rotate_images(images, angles)
    assert turned.shape == images.shape
    for image, angle, result in zip(images[..., 0], angles, turned[..., 0]):
        np.testing.assert_array_equal(result, np.rot90(image, int(angle) // 90))


def test_make_rotated_targets_and_images():
    data = Arrays(_random_images(count=20)[..., None], {"label": np.arange(20) % 10})
    rotated = rotated_mnist.make_rotated(data, seed=3, max_angle=30.0)
    assert rotated.tasks == ("digit", "angle")
    assert rotated.y["digit"].dtype == np.int32 and rotated.y["angle"].dtype == np.float32
    np.testing.assert_array_equal(rotated.y["digit"], np.arange(20) % 10)
    angles = rotated.y["angle"]
    assert np.all(np.abs(angles) <= 30.0) and len(np.unique(angles)) == 20
    np.testing.assert_array_equal(rotated.x, rotated_mnist.rotate_images(data.x, angles))


def test_angles_are_deterministic_and_depend_on_seed_and_stream():
    data = Arrays(_random_images(count=8)[..., None], {"label": np.zeros(8, np.int32)})
    first = rotated_mnist.make_rotated(data, seed=1)
    again = rotated_mnist.make_rotated(data, seed=1)
    assert first.x.tobytes() == again.x.tobytes()
    assert first.y["angle"].tobytes() == again.y["angle"].tobytes()
    for other in (rotated_mnist.make_rotated(data, seed=2),
                  rotated_mnist.make_rotated(data, seed=1, stream=1)):
        assert not np.array_equal(first.y["angle"], other.y["angle"])


def test_angle_stream_is_pinned():
    data = Arrays(np.zeros((4, 28, 28, 1), np.uint8), {"label": np.zeros(4, np.int32)})
    angles = rotated_mnist.make_rotated(data, seed=0).y["angle"]
    np.testing.assert_array_equal(angles, np.array(GOLDEN_ANGLES, np.float32))


def test_load_rotated_mnist(mnist_dir):
    splits = rotated_mnist.load_rotated_mnist(mnist_dir, seed=0, max_angle=45.0)
    plain = load_mnist(mnist_dir)
    assert set(splits) == {"train", "test"}
    for split, count in (("train", N_TRAIN), ("test", N_TEST)):
        data = splits[split]
        assert data.x.shape == (count, 28, 28, 1) and data.x.dtype == np.uint8
        np.testing.assert_array_equal(data.y["digit"], plain[split].y["label"])
        assert np.all(np.abs(data.y["angle"]) <= 45.0)
    assert not np.array_equal(splits["train"].y["angle"][:N_TEST], splits["test"].y["angle"])


def test_zero_max_angle_keeps_the_images(mnist_dir):
    splits = rotated_mnist.load_rotated_mnist(mnist_dir, seed=0, max_angle=0)
    np.testing.assert_array_equal(splits["test"].x, load_mnist(mnist_dir)["test"].x)
    assert not splits["test"].y["angle"].any()


@pytest.mark.parametrize("max_angle", [-1.0, 181, float("nan"), "45", True])
def test_bad_max_angle_is_a_config_error(mnist_dir, max_angle):
    with pytest.raises(ConfigError, match="max_angle"):
        rotated_mnist.load_rotated_mnist(mnist_dir, seed=0, max_angle=max_angle)


@pytest.mark.parametrize("seed", [-1, 0.5, None])
def test_bad_seed_is_a_config_error(mnist_dir, seed):
    with pytest.raises(ConfigError, match="seed"):
        rotated_mnist.load_rotated_mnist(mnist_dir, seed=seed)


def test_angle_count_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="one angle per image"):
        rotated_mnist.rotate_images(_random_images(count=3), np.zeros(2))


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        rotated_mnist.load_rotated_mnist(str(tmp_path / "nowhere"))
