"""Decoded few-shot datasets as per-class image arrays, and their disk cache.

Every few-shot dataset loader (Omniglot, mini-ImageNet) returns its splits as
`ClassImages`: one uint8 array holding the same number of images for every
class. Decoding tens of thousands of image files is slow, so loaders keep the
decoded arrays in an `.npz` cache file; the helpers here name, write and read
that cache safely:

* the cache file name carries a fingerprint of the source files (sizes and
  modification times), so replacing a source file invalidates the cache;
* writes go to a temporary file in the same directory followed by
  `os.replace`, so a run killed mid-write never leaves a truncated cache;
* an unreadable cache file is treated as absent (the caller rebuilds it).
"""

import dataclasses
import hashlib
import os
import tempfile
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from core.errors import ConfigError

# Bump when the content or layout of any cache file changes.
_CACHE_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """Images of one dataset split, grouped by class.

    Attributes:
        images: uint8 array [num_classes, images_per_class, H, W, C] with
            values 0-255.
        class_names: one name per class, e.g. "Greek/character03/rot90".
    """

    images: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.images.ndim != 5 or self.images.dtype != np.uint8:
            raise ValueError(
                'ClassImages.images must be a uint8 array [classes, images, H, '
                f'W, C]; got {self.images.dtype} {self.images.shape}.')
        if len(self.class_names) != self.images.shape[0]:
            raise ValueError(
                f'ClassImages has {self.images.shape[0]} classes of images but '
                f'{len(self.class_names)} class names.')

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.images.shape[0]

    @property
    def images_per_class(self) -> int:
        """Number of images of each class."""
        return self.images.shape[1]


def source_fingerprint(paths: Sequence[str], *extra: object) -> str:
    """A short hash of the sizes and modification times of some files.

    Args:
        paths: files (or directories) the cached data is derived from.
        *extra: further values that change the cached data (e.g. image size).

    Returns:
        12 hex digits that change whenever any of the inputs changes.
    """
    digest = hashlib.sha256(f'v{_CACHE_FORMAT_VERSION}'.encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(
            f'|{os.path.basename(path)}:{stat.st_size}:{stat.st_mtime_ns}'
            .encode())
    for value in extra:
        digest.update(f'|{value!r}'.encode())
    return digest.hexdigest()[:12]


def prepare_cache_dir(cache_dir: str) -> None:
    """Creates the cache directory if needed.

    Args:
        cache_dir: directory for cache files.

    Raises:
        ConfigError: the directory cannot be created.
    """
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f'Cannot create the dataset cache directory {cache_dir!r} ({e}). '
            'Pass a writable cache_dir.') from e


def load_cached_arrays(
    path: str, expected_keys: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """Reads a cache file written by `save_cached_arrays`.

    Args:
        path: the `.npz` cache file.
        expected_keys: arrays the file must contain.

    Returns:
        The arrays, or None if the file does not exist or is unreadable or
        incomplete (the caller then rebuilds it).
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in expected_keys}
    except Exception as e:  # pylint: disable=broad-except
        # A corrupt cache is never the user's problem: rebuild it.
        logging.warning('Ignoring unreadable dataset cache %s (%s); '
                        'rebuilding it.', path, e)
        return None
    return arrays


def save_cached_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes arrays to an uncompressed `.npz` file atomically.

    Args:
        path: destination file; its directory must exist.
        arrays: arrays to store by name.

    Raises:
        ConfigError: the cache directory is not writable.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp_path = tempfile.mkstemp(
            dir=directory, prefix='.' + os.path.basename(path) + '.',
            suffix='.tmp')
    except OSError as e:
        raise ConfigError(
            f'Cannot write the dataset cache file {path!r} ({e}). Pass a '
            'writable cache_dir.') from e
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
        os.chmod(tmp_path, 0o644)  # mkstemp makes it owner-only.
        os.replace(tmp_path, path)
    except BaseException as e:
        try:
            os.remove(tmp_path)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise ConfigError(
                f'Cannot write the dataset cache file {path!r} ({e}). Pass a '
                'writable cache_dir with enough free space.') from e
        raise
