"""The target domains of domain adaptation, built from files already on the machine.

A domain adaptation run (`transfer.domain_adaptation`) trains on labelled
images of the source domain (`--dataset`, through `transfer.data`) and on
unlabelled images of a target domain with the same classes:

    inverted         the source dataset's own images inverted, 255 - x (1 - x
                     in [0, 1]): ink dark on a white background. The same
                     files as the source (--data_dir); the target's training
                     pool is every training image of the classes but its
                     validation split, so the domains differ only by the
                     inversion (the source batches and the target batches are
                     drawn in independent orders, so no pair is ever seen).
    sklearn_digits   the 1,797 8x8 handwritten digits that ship inside
                     scikit-learn (`sklearn.datasets.load_digits`, values
                     0..16), scaled to a 20x20 box (bilinear) and centred in
                     a 28x28 frame with 4 px of border, as MNIST's digits are;
                     needs scikit-learn (`pip install scikit-learn`), which is
                     not a dependency of this library. A fixed seeded third
                     (597 images) is its test split, whatever the data seed.

The target's validation split (`--da_val_size`, carved by the data seed) is
the only target split that model selection may read: its images for the
label-free `target_entropy`, its labels only for the `oracle`. The target's
test labels are read once, by the test.
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from core.datasets import arrays
from core.datasets.arrays import Arrays
from core.datasets.supervised import load_supervised
from core.errors import ConfigError, DataError
from transfer import data as data_lib
from transfer.data import LABEL

DA_TARGETS = ("none", "inverted", "sklearn_digits")
DIGITS_TEST_SIZE = 597
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_VALUE = 16
DIGIT_BOX = 20
FRAME = 28


@dataclasses.dataclass(frozen=True)
class DomainData:
    """The splits of a target domain.

    Attributes:
      name: the target domain (`DA_TARGETS`).
      splits: {"train", "val", "test"} -> Arrays of uint8 images [n, 28, 28, 1]
        with targets {"label": 0..n-1} in the classes' order.
    """

    name: str
    splits: dict[str, Arrays]

    def images(self, split: str) -> Arrays:
        """A split's images without their labels (what label-free code is given)."""
        return Arrays(self.splits[split].x, {})


def _carve(pool: Arrays, val_size: int, seed: int, what: str) -> tuple[Arrays, Arrays]:
    """(train, val) of a target pool, with an error that names --da_val_size."""
    if val_size >= len(pool):
        raise ConfigError(f"--da_val_size={val_size} would leave no target training images: "
                          f"{what} has only {len(pool)} of the classes; use a smaller "
                          f"--da_val_size")
    return arrays.split_validation(pool, val_size, seed)


def _invert(split: Arrays) -> Arrays:
    if split.x.dtype != np.uint8:
        raise DataError(f"--da_target=inverted needs uint8 images, got {split.x.dtype}")
    return Arrays(np.subtract(np.uint8(255), split.x, dtype=np.uint8), dict(split.y))


def inverted(dataset: str, data_dir: str | None, classes: Sequence[int], val_size: int,
             seed: int) -> DomainData:
    """The `inverted` domain of `dataset` (see the module docstring)."""
    chosen = data_lib.check_classes(classes)
    source = load_supervised(dataset, data_dir)
    pool = data_lib.select_classes(source["train"], chosen)
    train, val = _carve(pool, val_size, seed, f"the {dataset} training split")
    test = data_lib.select_classes(source["test"], chosen)
    return DomainData("inverted", {"train": _invert(train), "val": _invert(val),
                                   "test": _invert(test)})


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: (images float [n, 8, 8] in 0..16, labels [n])."""
    try:
        from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    except ImportError as err:
        raise DataError("--da_target=sklearn_digits reads the 8x8 digits that ship inside "
                        "scikit-learn, which is not installed here: pip install "
                        "scikit-learn (or choose --da_target=inverted)") from err
    bunch = load_digits()
    return np.asarray(bunch.images, np.float64), np.asarray(bunch.target)


def upsample_digits(images: np.ndarray) -> np.ndarray:
    """8x8 digits in 0..16 -> uint8 [n, 28, 28, 1]: a bilinear 20x20 box, 4 px of border."""
    images = np.asarray(images, np.float32)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise DataError(f"scikit-learn's digits should be [n, 8, 8], got {images.shape}")
    scaled = np.clip(images / DIGITS_MAX_VALUE, 0.0, 1.0)
    box = np.asarray(jax.image.resize(scaled, (len(images), DIGIT_BOX, DIGIT_BOX), "linear"))
    border = (FRAME - DIGIT_BOX) // 2
    framed = np.pad(box, ((0, 0), (border, border), (border, border)))
    return np.round(np.clip(framed, 0.0, 1.0) * 255).astype(np.uint8)[..., None]


def sklearn_digits(classes: Sequence[int], val_size: int, seed: int) -> DomainData:
    """The `sklearn_digits` domain (see the module docstring)."""
    chosen = data_lib.check_classes(classes)
    images, labels = _load_digits()
    if len(images) <= DIGITS_TEST_SIZE:
        raise DataError(f"scikit-learn's digits hold {len(images)} images; expected 1,797")
    every = Arrays(upsample_digits(images), {LABEL: labels.astype(np.int32)})
    pool, test = arrays.split_validation(every, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    pool, test = data_lib.select_classes(pool, chosen), data_lib.select_classes(test, chosen)
    train, val = _carve(pool, val_size, seed, "scikit-learn's digits (training part)")
    return DomainData("sklearn_digits", {"train": train, "val": val, "test": test})


def load_domain(name: str, dataset: str, data_dir: str | None, classes: Sequence[int],
                val_size: int, seed: int) -> DomainData:
    """The target domain `name` for the source `dataset` and its `classes`.

    Args:
      name: 'inverted' or 'sklearn_digits'.
      dataset: the source dataset (`--dataset`); sklearn_digits needs 'mnist'.
      data_dir: the source's folder (read again by 'inverted').
      classes: the source's class ids (empty: all ten), relabelled alike.
      val_size: target validation images (`--da_val_size`).
      seed: the data seed of the validation split.

    Raises:
      ConfigError: for an unknown domain, one that does not fit the source,
        bad classes or a too large validation split.
      DataError: for missing files, or scikit-learn not installed.
    """
    if name == "inverted":
        return inverted(dataset, data_dir, classes, val_size, seed)
    if name == "sklearn_digits":
        if dataset != "mnist":
            raise ConfigError(f"--da_target=sklearn_digits holds handwritten digits: its "
                              f"source is --dataset=mnist, not {dataset}")
        return sklearn_digits(classes, val_size, seed)
    raise ConfigError(f"unknown --da_target={name!r}; expected one of "
                      f"{', '.join(t for t in DA_TARGETS if t != 'none')}")
