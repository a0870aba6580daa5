"""Tiny fake MNIST-style datasets in the official IDX file format.

For tests: the files written here are read by `core.datasets.mnist.load_mnist`
exactly like the official data, but hold only a few dozen images so tests run
quickly. Labels are balanced over 0..9 in a random order and each image is its
class's fixed random pattern plus noise, so a model can learn them. Everything
is a deterministic function of `seed`.
"""

import gzip as gzip_lib
import os

import numpy as np

from core.datasets.mnist import IDX_FILE_NAMES

__all__ = ["write_fake_idx_dataset", "write_idx", "IMAGE_SIZE"]

IMAGE_SIZE = 28
_NUM_CLASSES = 10

# numpy dtype -> IDX type byte.
_IDX_TYPE_BYTES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
                   np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path: str, values: np.ndarray, gzip: bool = False) -> None:
    """Writes one array as an IDX file.

    Args:
      path: destination file (its folder must exist); ".gz" is not appended.
      values: the array; stored big-endian as uint8, int8, int16, int32,
        float32 or float64.
      gzip: compress the file with gzip.
    """
    values = np.asarray(values)
    dtype = values.dtype.newbyteorder(">") if values.dtype.itemsize > 1 else values.dtype
    header = bytes([0, 0, _IDX_TYPE_BYTES[dtype], values.ndim])
    header += b"".join(int(size).to_bytes(4, "big") for size in values.shape)
    contents = header + np.ascontiguousarray(values, dtype).tobytes()
    if gzip:
        contents = gzip_lib.compress(contents)
    with open(path, "wb") as f:
        f.write(contents)


def write_fake_idx_dataset(directory: str, n_train: int = 50, n_test: int = 20,
                           gzip: bool = True, seed: int = 0) -> None:
    """Writes the four MNIST IDX files with random 28x28 digits.

    Args:
      directory: folder to write into (created if missing).
      n_train: training images (60,000 in the real data).
      n_test: test images (10,000 in the real data).
      gzip: write `<name>.gz` files as distributed, else raw `<name>` files.
      seed: makes images and labels reproducible.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(_NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE))
    for (images_name, labels_name), count in zip(IDX_FILE_NAMES.values(), (n_train, n_test)):
        labels = rng.permutation(np.arange(count) % _NUM_CLASSES).astype(np.uint8)
        noise = rng.integers(-30, 31, size=(count, IMAGE_SIZE, IMAGE_SIZE))
        images = np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8)
        suffix = ".gz" if gzip else ""
        write_idx(os.path.join(directory, images_name + suffix), images, gzip)
        write_idx(os.path.join(directory, labels_name + suffix), labels, gzip)
