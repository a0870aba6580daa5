"""Rotated MNIST: the digit version of the multi-task "face" example.

The classic multi-task face example asks two questions of one image: who is
it (a class) and which way is the head turned (a continuous pose). Here the
image is an MNIST digit turned by a random angle, and the two tasks are the
digit (classification) and the angle (regression, in degrees).

Every image of a split gets its own angle, uniform in
[-max_angle, max_angle] from a seeded `np.random.default_rng`, and is turned
by it around the image centre with bilinear interpolation, pixels from
outside the image reading as zero (the background). A positive angle turns
the image counter-clockwise as displayed (row 0 at the top), so +90 degrees
equals `np.rot90(image)`. Train and test angles come from different random
streams. The rotation is plain vectorised numpy, so a dataset is a
deterministic function of the files and the seed.
"""

import math

import numpy as np

from core.datasets.arrays import Arrays
from core.datasets.mnist import load_mnist
from core.errors import ConfigError

__all__ = ["rotate_images", "make_rotated", "load_rotated_mnist", "DEFAULT_MAX_ANGLE"]

DEFAULT_MAX_ANGLE = 45.0
# Distinguishes this module's random streams from other users of the same seed.
_STREAM_TAG = 0x524F5441  # "ROTA"
_SPLIT_STREAMS = {"train": 0, "test": 1}
_CHUNK = 2048  # Images rotated at once; bounds the temporary coordinate memory.


def rotate_images(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Turns each image by its own angle around its centre (bilinear, zero fill).

    Args:
      images: [n, H, W] or [n, H, W, 1], any real dtype.
      angles: [n] degrees, positive counter-clockwise as displayed.

    Returns:
      The turned images, same shape and dtype as `images`; integer images
      are rounded to the nearest value and clipped to the dtype's range.
    """
    images = np.asarray(images)
    angles = np.asarray(angles, np.float64).reshape(-1)
    squeeze = images.ndim == 4 and images.shape[-1] == 1
    plain = images[..., 0] if squeeze else images
    if plain.ndim != 3 or angles.shape[0] != plain.shape[0]:
        raise ConfigError(f"rotate_images needs images [n, H, W(, 1)] and one angle per image; "
                          f"got images {images.shape} and angles {angles.shape}.")
    out = np.empty(plain.shape, images.dtype)
    for start in range(0, plain.shape[0], _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = _to_dtype(_rotate_chunk(plain[start:stop], angles[start:stop]),
                                    images.dtype)
    return out[..., None] if squeeze else out


def make_rotated(data: Arrays, seed: int, max_angle: float = DEFAULT_MAX_ANGLE,
                 stream: int = 0) -> Arrays:
    """Turns every image of a labelled set by a random angle.

    Args:
      data: images [n, H, W, 1] with y {"label"}.
      seed: non-negative seed of the angles.
      max_angle: angles are uniform in [-max_angle, max_angle] degrees,
        0 <= max_angle <= 180.
      stream: a further non-negative key, so that several sets built from
        one seed (train and test, say) get independent angles.

    Returns:
      Arrays with the turned images (same shape and dtype) and
      y {"digit": int32 [n], "angle": float32 [n]}; "angle" is exactly the
      angle, in degrees, the image was turned by.

    Raises:
      ConfigError: invalid seed, stream or max_angle, or no "label" target.
    """
    _check_key("seed", seed)
    _check_key("stream", stream)
    max_angle = _check_max_angle(max_angle)
    if "label" not in data.y:
        raise ConfigError(f"make_rotated needs targets with a 'label' entry; got "
                          f"{sorted(data.y)}.")
    rng = np.random.default_rng([int(seed), _STREAM_TAG, int(stream)])
    angles = rng.uniform(-max_angle, max_angle, size=len(data)).astype(np.float32)
    return Arrays(rotate_images(data.x, angles),
                  {"digit": np.asarray(data.y["label"]).astype(np.int32), "angle": angles})


def load_rotated_mnist(data_dir: str, seed: int = 0,
                       max_angle: float = DEFAULT_MAX_ANGLE) -> dict[str, Arrays]:
    """Loads MNIST and turns every image by a random angle.

    Args:
      data_dir: the folder with the official MNIST IDX files.
      seed: non-negative seed of the angles.
      max_angle: angles are uniform in [-max_angle, max_angle] degrees.

    Returns:
      {"train", "test"} -> Arrays with x uint8 [n, 28, 28, 1] and
      y {"digit": int32 [n], "angle": float32 [n] degrees}.

    Raises:
      ConfigError: invalid seed or max_angle.
      DataError: missing or corrupt IDX files.
    """
    _check_key("seed", seed)
    _check_max_angle(max_angle)
    splits = load_mnist(data_dir, "mnist")
    return {split: make_rotated(splits[split], seed, max_angle, stream)
            for split, stream in _SPLIT_STREAMS.items()}


def _rotate_chunk(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Bilinear rotation of [b, H, W] images as float64, by inverse mapping."""
    count, height, width = images.shape
    theta = np.deg2rad(angles)[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    right, up = cols - centre_col, centre_row - rows
    # Output point (right, up) shows the source point turned back by -theta.
    source_col = centre_col + right * cos + up * sin
    source_row = centre_row - (up * cos - right * sin)
    # Coordinates in the image padded by a one-pixel zero border, clipped onto that
    # border: far-away points then read 0 and no corner index leaves the padded image.
    pad_row = np.clip(source_row + 1, 0, height + 1)
    pad_col = np.clip(source_col + 1, 0, width + 1)
    row0 = np.minimum(np.floor(pad_row), height).astype(np.int64)
    col0 = np.minimum(np.floor(pad_col), width).astype(np.int64)
    row_weight, col_weight = pad_row - row0, pad_col - col0
    flat = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1))).reshape(count, -1)
    stride = width + 2
    out = np.zeros((count, height, width))
    for d_row, w_row in ((0, 1 - row_weight), (1, row_weight)):
        for d_col, w_col in ((0, 1 - col_weight), (1, col_weight)):
            index = ((row0 + d_row) * stride + col0 + d_col).reshape(count, -1)
            corner = np.take_along_axis(flat, index, axis=1)
            out += w_row * w_col * corner.reshape(count, height, width)
    return out


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _check_key(name: str, value: object) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"The rotated-MNIST {name} must be a non-negative integer; "
                          f"got {value!r}.")


def _check_max_angle(max_angle: object) -> float:
    is_number = isinstance(max_angle, (int, float, np.integer, np.floating)) and not isinstance(
        max_angle, bool)
    if not (is_number and math.isfinite(max_angle) and 0 <= max_angle <= 180):
        raise ConfigError(f"max_angle must be a number of degrees in [0, 180]; got "
                          f"{max_angle!r}.")
    return float(max_angle)
