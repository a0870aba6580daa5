"""MNIST and Fashion-MNIST from their official IDX files.

Both datasets ship as the same four files, `train-images-idx3-ubyte`,
`train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
`t10k-labels-idx1-ubyte`, each either raw or gzipped (`.gz`). An IDX file is a
big-endian header (two zero bytes, a type byte, a dimension count, then one
uint32 size per dimension) followed by the values in C order. The two
datasets differ only in where to get them and in what the ten labels mean.

Images are returned as stored, uint8 [n, 28, 28, 1] (ink bright on a zero
background); `core.datasets.arrays` converts them to float32 in [0, 1] per
batch. There is no validation split on disk: carve one from "train" with
`core.datasets.arrays.split_validation`, never from "test".
"""

import dataclasses
import gzip
import os
import zlib

import numpy as np

from core.datasets.arrays import Arrays
from core.errors import ConfigError
from core.errors import DataError

__all__ = ["load_mnist", "read_idx", "class_names", "MNIST_CLASS_NAMES",
           "FASHION_MNIST_CLASS_NAMES", "IDX_FILE_NAMES", "IMAGES_MAGIC", "LABELS_MAGIC"]

MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# split -> (images file, labels file), without the optional ".gz".
IDX_FILE_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
NUM_CLASSES = 10

# IDX type byte -> numpy dtype (big-endian, as stored).
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclasses.dataclass(frozen=True)
class _Variant:
    title: str
    source: str
    class_names: tuple[str, ...]


_VARIANTS = {
    "mnist": _Variant(
        "MNIST", "http://yann.lecun.com/exdb/mnist/ (or its mirror "
        "https://ossci-datasets.s3.amazonaws.com/mnist/)", MNIST_CLASS_NAMES),
    "fashion_mnist": _Variant(
        "Fashion-MNIST", "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)",
        FASHION_MNIST_CLASS_NAMES),
}


def class_names(variant: str = "mnist") -> tuple[str, ...]:
    """The names of labels 0..9 of a variant ("mnist" or "fashion_mnist")."""
    return _variant(variant).class_names


def load_mnist(data_dir: str, variant: str = "mnist") -> dict[str, Arrays]:
    """Loads the train and test splits of MNIST or Fashion-MNIST.

    Args:
      data_dir: the folder holding one dataset's four IDX files, raw or `.gz`
        (the raw file is used when both exist). Only read, never written.
      variant: "mnist" or "fashion_mnist"; decides the download hint in errors
        (and `class_names`), the file format is the same.

    Returns:
      {"train", "test"} -> Arrays with x uint8 [n, 28, 28, 1] and
      y {"label": int32 [n]} in 0..9 (60,000 and 10,000 examples in the
      official files).

    Raises:
      ConfigError: unknown variant.
      DataError: a file is missing, corrupt or not in the expected format, or
        a split's image and label counts differ.
    """
    spec = _variant(variant)
    hint = _source_hint(spec, data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"{spec.title} data directory {data_dir!r} does not exist or is not a "
                        f"directory. {hint}")
    return {split: _load_split(data_dir, names, spec, hint)
            for split, names in IDX_FILE_NAMES.items()}


def read_idx(path: str, magic: int | None = None, hint: str = "") -> np.ndarray:
    """Reads one IDX file, raw or gzipped (by the `.gz` suffix).

    Args:
      path: the file.
      magic: if given, the required magic number (e.g. `IMAGES_MAGIC`), which
        fixes the value type and the number of dimensions.
      hint: appended to every error message, e.g. where to get the file.

    Returns:
      The values in the shape the header gives, native byte order. Unsigned
      bytes are a read-only view of the file contents (no copy).

    Raises:
      DataError: the file is missing, not valid gzip, has a wrong or unknown
        magic number, or its size does not match its header.
    """
    data = _read_bytes(path, hint)
    if len(data) < 4:
        raise DataError(f"IDX file {path!r} has only {len(data)} bytes, too few for a header; it "
                        f"is truncated. {hint}")
    found = int.from_bytes(data[:4], "big")
    if data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES or (magic is not None and found != magic):
        expected = f"0x{magic:08x}" if magic is not None else "an IDX magic number"
        raise DataError(f"File {path!r} has magic number 0x{found:08x}, expected {expected}: it "
                        f"is not the expected IDX file (a wrong or renamed file?). {hint}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path!r} ends inside its header ({len(data)} of {header} "
                        f"bytes); it is truncated. {hint}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected_size = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_size:
        problem = "truncated" if len(data) < expected_size else "followed by extra bytes"
        raise DataError(f"IDX file {path!r} has {len(data)} bytes, but its header (shape {shape}) "
                        f"implies {expected_size}: it is {problem}. {hint}")
    values = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return values if dtype.byteorder in "=|" else values.astype(dtype.newbyteorder("="))


def _load_split(data_dir: str, names: tuple[str, str], spec: _Variant, hint: str) -> Arrays:
    """One split's images and labels, checked against each other."""
    images_path, labels_path = (_find_file(data_dir, name, spec, hint) for name in names)
    images = read_idx(images_path, IMAGES_MAGIC, hint)
    labels = read_idx(labels_path, LABELS_MAGIC, hint)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{spec.title} files disagree: {images_path!r} holds {images.shape[0]} "
                        f"images but {labels_path!r} holds {labels.shape[0]} labels. Are they "
                        f"from the same dataset and split? {hint}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{spec.title} label file {labels_path!r} holds label {labels.max()}, "
                        f"but labels must be in 0..{NUM_CLASSES - 1}. {hint}")
    return Arrays(x=images[..., None], y={"label": labels.astype(np.int32)})


def _find_file(data_dir: str, name: str, spec: _Variant, hint: str) -> str:
    """The path of `name` in `data_dir`, raw preferred over `.gz`."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"{spec.title} file {os.path.join(data_dir, name)!r} (or {name}.gz) is "
                    f"missing. {hint}")


def _read_bytes(path: str, hint: str) -> bytes:
    """The (decompressed) contents of a file."""
    try:
        with open(path, "rb") as f:
            contents = f.read()
    except OSError as e:
        raise DataError(f"Cannot read IDX file {path!r} ({e}). {hint}") from e
    if not path.endswith(".gz"):
        return contents
    try:
        return gzip.decompress(contents)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file {path!r} is not valid gzip ({e}); it is truncated or "
                        f"corrupt. {hint}") from e


def _variant(variant: str) -> _Variant:
    if variant not in _VARIANTS:
        raise ConfigError(f"Unknown MNIST variant {variant!r}; use one of {sorted(_VARIANTS)}.")
    return _VARIANTS[variant]


def _source_hint(spec: _Variant, data_dir: str) -> str:
    files = ", ".join(name for pair in IDX_FILE_NAMES.values() for name in pair)
    return (f"Get the official {spec.title} files ({files}; gzipped or extracted) from "
            f"{spec.source} and put them in {data_dir!r}.")
