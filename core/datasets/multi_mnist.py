"""MultiMNIST-style two-task datasets: two overlapping 28x28 images, two labels.

The generator follows Sener & Koltun's MultiMNIST loader
(isl-org/MultiObjectiveOptimization, `multi_task/loaders/multi_mnist_loader.py`).
Every "left" image gets one partner ("right") drawn uniformly at random, with
replacement, from the right-hand pool (possibly the image itself when both
pools are the same split, as in the original), and the pair is drawn on a
36x36 canvas:

    canvas = zeros(36, 36)
    canvas[0:28, 0:28] = left
    canvas[6:34, 6:34] = right
    canvas[6:28, 6:28] = max(left[6:28, 6:28], right[0:22, 0:22])
    x = resize(canvas, (28, 28), nearest)

The result is shifted up-left for "left" and down-right for "right", with
their overlap merged by the pixel-wise maximum. The nearest resize is the
one of `jax.image.resize(method="nearest")`: output row or column `i` takes
canvas index `floor((i + 0.5) * 36 / 28)`, computed here exactly in integers.

Two changes from the original, both for reproducibility: partners come from
a seeded `np.random.default_rng` instead of the unseeded global generator, and
the resize is `jax.image.resize`'s nearest rule instead of the removed
`scipy.misc.imresize` (which also rescaled intensities to the image's own
min..max; here pixel values are kept as they are).

Variants (`load_multi_mnist`):

    multi_mnist           MNIST left, MNIST right
    multi_fashion         Fashion-MNIST left, Fashion-MNIST right
    multi_fashion_mnist   Fashion-MNIST left, MNIST right ("Multi-(Fashion+MNIST)",
                          as described in Cranial-XIX/CAGrad issue #6)

Train pairs are drawn within the training splits and test pairs within the
test splits, from different random streams, so no test image appears in a
training pair.
"""

import numpy as np

from core.datasets.arrays import Arrays
from core.datasets.mnist import load_mnist
from core.errors import ConfigError

__all__ = ["make_multi", "load_multi_mnist", "resize_nearest", "VARIANTS", "CANVAS_SIZE",
           "IMAGE_SIZE", "RIGHT_OFFSET"]

IMAGE_SIZE = 28
CANVAS_SIZE = 36
RIGHT_OFFSET = 6
# Distinguishes this module's random streams from other users of the same seed.
_STREAM_TAG = 0x4D554C54  # "MULT"
_SPLIT_STREAMS = {"train": 0, "test": 1}
_CHUNK = 4096  # Images composed at once; bounds the temporary canvas memory.

# variant -> (left load_mnist variant, right load_mnist variant or None for "same as left").
VARIANTS = {
    "multi_mnist": ("mnist", None),
    "multi_fashion": ("fashion_mnist", None),
    "multi_fashion_mnist": ("fashion_mnist", "mnist"),
}


def make_multi(left: Arrays, right: Arrays | None = None, *, seed: int,
               stream: int = 0) -> Arrays:
    """Pairs every left image with one random right image on a shared canvas.

    Args:
      left: images uint8 [n, 28, 28, 1] (or [n, 28, 28]) with y {"label"}.
      right: the pool partners are drawn from, same format; None draws them
        from `left` itself.
      seed: non-negative seed of the partner choice.
      stream: a further non-negative key, so that several sets built from
        one seed (train and test, say) get independent partners.

    Returns:
      Arrays with x uint8 [n, 28, 28, 1] and y {"left": int32 [n],
      "right": int32 [n]}, the labels of the two images; a deterministic
      function of the inputs, `seed` and `stream`.

    Raises:
      ConfigError: an input is not a set of labelled 28x28 images, the right
        pool is empty, or the seed or stream is not a non-negative integer.
    """
    right = left if right is None else right
    left_images, left_labels = _images_and_labels(left, "left")
    right_images, right_labels = _images_and_labels(right, "right")
    for name, value in (("seed", seed), ("stream", stream)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"make_multi {name} must be a non-negative integer; got {value!r}.")
    if len(left_images) and not len(right_images):
        raise ConfigError("make_multi needs at least one right image to draw partners from.")
    rng = np.random.default_rng([int(seed), _STREAM_TAG, int(stream)])
    partners = rng.integers(0, max(len(right_images), 1), size=len(left_images))
    x = np.empty((len(left_images), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    for start in range(0, len(left_images), _CHUNK):
        stop = start + _CHUNK
        x[start:stop, ..., 0] = _compose(left_images[start:stop],
                                         right_images[partners[start:stop]])
    return Arrays(x, {"left": left_labels.astype(np.int32),
                      "right": right_labels[partners].astype(np.int32)})


def load_multi_mnist(data_dir: str, variant: str = "multi_mnist", seed: int = 0,
                     second_data_dir: str | None = None) -> dict[str, Arrays]:
    """Builds the train and test splits of a MultiMNIST variant.

    Args:
      data_dir: the folder with the official IDX files of the left dataset
        (MNIST for "multi_mnist", Fashion-MNIST for the other two variants).
      variant: "multi_mnist", "multi_fashion" or "multi_fashion_mnist".
      seed: non-negative seed of the partner choice.
      second_data_dir: for "multi_fashion_mnist" only, the folder with the
        MNIST IDX files (the right images).

    Returns:
      {"train", "test"} -> Arrays as `make_multi` returns them, one pair per
      left image of the split (60,000 and 10,000 with the official files).

    Raises:
      ConfigError: unknown variant, a missing or superfluous
        `second_data_dir`, or an invalid seed.
      DataError: missing or corrupt IDX files.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown MultiMNIST variant {variant!r}; use one of "
                          f"{sorted(VARIANTS)}.")
    left_variant, right_variant = VARIANTS[variant]
    if right_variant is not None and not second_data_dir:
        raise ConfigError(f"MultiMNIST variant {variant!r} puts Fashion-MNIST on the left and "
                          f"MNIST on the right, so it needs two folders: data_dir with the "
                          f"Fashion-MNIST IDX files (got {data_dir!r}) and second_data_dir with "
                          f"the MNIST IDX files.")
    if right_variant is None and second_data_dir:
        raise ConfigError(f"second_data_dir ({second_data_dir!r}) is only used by variant "
                          f"'multi_fashion_mnist'; variant {variant!r} reads data_dir only.")
    left = load_mnist(data_dir, left_variant)
    right = load_mnist(second_data_dir, right_variant) if right_variant else left
    return {split: make_multi(left[split], right[split], seed=seed, stream=stream)
            for split, stream in _SPLIT_STREAMS.items()}


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of square images [n, s, s] to [n, size, size].

    Uses `jax.image.resize(method="nearest")`'s rule, output index `i` reads
    input index `floor((i + 0.5) * s / size)`, in exact integer arithmetic.
    """
    source = images.shape[-1]
    index = (2 * np.arange(size) + 1) * source // (2 * size)
    return images[:, index][:, :, index]


def _compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The module docstring's canvas for aligned pairs [b, 28, 28] -> [b, 28, 28]."""
    far = RIGHT_OFFSET + IMAGE_SIZE
    overlap = IMAGE_SIZE - RIGHT_OFFSET
    canvas = np.zeros((len(left), CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    canvas[:, 0:IMAGE_SIZE, 0:IMAGE_SIZE] = left
    canvas[:, RIGHT_OFFSET:far, RIGHT_OFFSET:far] = right
    canvas[:, RIGHT_OFFSET:IMAGE_SIZE, RIGHT_OFFSET:IMAGE_SIZE] = np.maximum(
        left[:, RIGHT_OFFSET:IMAGE_SIZE, RIGHT_OFFSET:IMAGE_SIZE],
        right[:, 0:overlap, 0:overlap])
    return resize_nearest(canvas, IMAGE_SIZE)


def _images_and_labels(data: Arrays, side: str) -> tuple[np.ndarray, np.ndarray]:
    """[n, 28, 28] uint8 images and [n] labels of one side, checked."""
    images = data.x[..., 0] if data.x.ndim == 4 and data.x.shape[-1] == 1 else data.x
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ConfigError(f"make_multi needs {side} images as uint8 [n, 28, 28, 1]; got "
                          f"{data.x.dtype} {data.x.shape}.")
    if "label" not in data.y:
        raise ConfigError(f"make_multi needs {side} targets with a 'label' entry; got "
                          f"{sorted(data.y)}.")
    return images, np.asarray(data.y["label"])
