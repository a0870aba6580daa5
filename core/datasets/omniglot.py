"""Omniglot (Lake et al. 2015) with the MAML character split.

Reads the two official zips, `images_background.zip` (30 alphabets, 964
characters) and `images_evaluation.zip` (20 alphabets, 659 characters), laid
out as `images_background/<Alphabet>/characterNN/XXXX_YY.png` with 20 drawings
(105x105, black strokes on white) per character.

The split follows Finn et al. 2017 (github.com/cbfinn/maml): all 1623
characters of both zips are pooled, sorted by "<alphabet>/<character>",
shuffled with `np.random.RandomState(1)`, and the first 1100 become training,
the next 100 validation and the remaining 423 test characters. Each character
then yields four classes, rotated by 0, 90, 180 and 270 degrees.

Images are resized (`RESIZE_METHODS`) and inverted so strokes are bright on a
zero background: 'lanczos' (the default) converts each 1-bit drawing to grey
levels and resizes it with Lanczos filtering; 'nearest_binary' resizes the
1-bit drawing itself, which Pillow does with nearest neighbour whatever the
filter asked for, so the images stay binary (0 or 255), as the reference MAML
code's `resize_images.py` makes them. The decoded, resized (unrotated) images
are cached as an `.npz` in `cache_dir`, one file per image size and resize
method; nothing is ever written to `data_dir`.

`load_omniglot` gives the MAML split as rotated classes (meta-learning).
`load_omniglot_characters` gives the same decoded characters unrotated, each
with the zip it comes from, and `maml_character_split` the MAML split as
indices into them, for supervised uses (the transfer family's Omniglot
source and target tasks); both read the same cache.
"""

import dataclasses

import io
import os
import time
import zipfile

from absl import logging
import numpy as np
from PIL import Image

from core.datasets.class_images import ClassImages
from core.datasets.class_images import load_cached_arrays
from core.datasets.class_images import prepare_cache_dir
from core.datasets.class_images import save_cached_arrays
from core.datasets.class_images import source_fingerprint
from core.errors import ConfigError
from core.errors import DataError

__all__ = ['ClassImages', 'load_omniglot', 'OMNIGLOT_ZIP_NAMES',
           'MAML_SPLIT_SIZES', 'ROTATIONS', 'RESIZE_METHODS',
           'OmniglotCharacters', 'load_omniglot_characters',
           'maml_character_split', 'cache_file_name']

OMNIGLOT_ZIP_NAMES = ('images_background.zip', 'images_evaluation.zip')
MAML_SPLIT_SIZES = (1100, 100)  # (train, val); the remaining 423 are test.
ROTATIONS = (0, 90, 180, 270)
RESIZE_METHODS = ('lanczos', 'nearest_binary')
_SPLIT_SEED = 1
_SOURCE_HINT = ('Download the Omniglot zips from '
                'https://github.com/brendenlake/omniglot '
                '(python/images_background.zip, python/images_evaluation.zip) '
                'and put both, unextracted, in the data directory.')


def load_omniglot(
    data_dir: str,
    cache_dir: str,
    image_size: int = 28,
    split_sizes: tuple[int, int] = MAML_SPLIT_SIZES,
    resize: str = 'lanczos',
) -> dict[str, ClassImages]:
    """Loads Omniglot split into rotated character classes.

    Args:
        data_dir: directory holding `images_background.zip` and
            `images_evaluation.zip`. Only read, never written.
        cache_dir: writable directory for the decoded-image cache (created if
            missing). Should not be `data_dir` if that is read-only.
        image_size: side length in pixels of the resized square images.
        split_sizes: (train, val) numbers of characters; all remaining
            characters are test. Default: the MAML split (1100, 100).
        resize: how drawings are resized (`RESIZE_METHODS`, see the module
            docstring).

    Returns:
        {'train', 'val', 'test'} -> ClassImages with uint8 images
        [4 * characters, 20, image_size, image_size, 1]. Class 4k + r is
        character k rotated by ROTATIONS[r] degrees counterclockwise; names
        look like "Greek/character03/rot90".

    Raises:
        DataError: a zip is missing, corrupt or laid out unexpectedly, or there
            are too few characters for `split_sizes`.
        ConfigError: `image_size`, `split_sizes` or `resize` is invalid, or
            `cache_dir` cannot be written.
    """
    _check_positive_int('image_size', image_size)
    num_train, num_val = _check_split_sizes(split_sizes)
    characters, names = _load_characters(data_dir, cache_dir, image_size, resize)
    num_characters = len(names)
    if num_characters < num_train + num_val + 1:
        raise DataError(
            f'Omniglot in {data_dir!r} has {num_characters} characters, but '
            f'the split {num_train} train + {num_val} val + at least 1 test '
            f'needs {num_train + num_val + 1}. The official zips have 1623. '
            f'{_SOURCE_HINT}')
    order = np.random.RandomState(_SPLIT_SEED).permutation(num_characters)
    split_orders = {
        'train': order[:num_train],
        'val': order[num_train:num_train + num_val],
        'test': order[num_train + num_val:],
    }
    return {
        split: _rotated_classes(characters[idx], [names[i] for i in idx])
        for split, idx in split_orders.items()
    }



@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotCharacters:
    """Every character of both zips, unrotated, sorted by name.

    Attributes:
        images: uint8 [characters, drawers, H, W], strokes bright.
        names: "<alphabet>/<character>" of each character.
        zips: the zip file name (`OMNIGLOT_ZIP_NAMES`) each character is in.
    """

    images: np.ndarray
    names: tuple[str, ...]
    zips: tuple[str, ...]

    def of_zip(self, zip_name: str) -> np.ndarray:
        """Indices of the characters of one zip (e.g. 'images_background.zip')."""
        return np.flatnonzero(np.asarray(self.zips) == zip_name)


def load_omniglot_characters(data_dir: str, cache_dir: str,
                             image_size: int = 28,
                             resize: str = 'lanczos') -> OmniglotCharacters:
    """All 1623 characters of both zips, unrotated, with the zip of each.

    The images are `load_omniglot`'s before rotation (same decoding, same
    cache); the zip of each character is read from the zips' file lists,
    which needs no decoding.

    Args:
        data_dir: directory holding both official zips (only read).
        cache_dir: writable directory for the decoded-image cache.
        image_size: side length in pixels of the resized square images.
        resize: how drawings are resized (`RESIZE_METHODS`).

    Raises:
        DataError: a zip is missing, corrupt or laid out unexpectedly, or a
            character name is in both zips.
        ConfigError: `image_size` or `resize` is invalid or `cache_dir`
            cannot be written.
    """
    _check_positive_int('image_size', image_size)
    images, names = _load_characters(data_dir, cache_dir, image_size, resize)
    zip_of = {}
    for zip_name in OMNIGLOT_ZIP_NAMES:
        path = os.path.join(data_dir, zip_name)
        for name in _zip_character_names(path):
            if name in zip_of:
                raise DataError(
                    f'Omniglot character {name!r} is in both {zip_of[name]} and '
                    f'{zip_name} in {data_dir!r}; the official zips hold '
                    f'disjoint alphabets. {_SOURCE_HINT}')
            zip_of[name] = zip_name
    missing = [name for name in names if name not in zip_of]
    if missing or len(zip_of) != len(names):
        raise DataError(
            f'The Omniglot cache for {data_dir!r} does not match its zips '
            f'({len(names)} cached characters, {len(zip_of)} in the zips); '
            f'delete the cache in {cache_dir!r} to decode them again.')
    return OmniglotCharacters(images=images, names=tuple(names),
                              zips=tuple(zip_of[name] for name in names))


def maml_character_split(
        num_characters: int,
        split_sizes: tuple[int, int] = MAML_SPLIT_SIZES) -> dict[str, np.ndarray]:
    """The MAML split as indices into the characters sorted by name.

    The same permutation as `load_omniglot` (`np.random.RandomState(1)` over
    the sorted characters of both zips): the first `split_sizes[0]` indices
    are training, the next `split_sizes[1]` validation, the rest test.

    Raises:
        ConfigError: `split_sizes` is invalid.
        DataError: there are too few characters for `split_sizes`.
    """
    num_train, num_val = _check_split_sizes(split_sizes)
    if num_characters < num_train + num_val + 1:
        raise DataError(
            f'Omniglot has {num_characters} characters, but the split '
            f'{num_train} train + {num_val} val + at least 1 test needs '
            f'{num_train + num_val + 1}. The official zips have 1623. '
            f'{_SOURCE_HINT}')
    order = np.random.RandomState(_SPLIT_SEED).permutation(num_characters)
    return {'train': order[:num_train],
            'val': order[num_train:num_train + num_val],
            'test': order[num_train + num_val:]}


def _zip_character_names(zip_path: str) -> set[str]:
    """The "<alphabet>/<character>" names in one zip, from its file list."""
    top_folder = os.path.splitext(os.path.basename(zip_path))[0]
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(
            f'Omniglot file {zip_path!r} is not a readable zip archive ({e}); '
            f'it may be truncated or corrupt. {_SOURCE_HINT}') from e
    names = set()
    for member in members:
        parts = member.split('/')
        if (len(parts) == 4 and parts[0] == top_folder and parts[-1]
                and not parts[-1].startswith('.')):
            names.add(f'{parts[1]}/{parts[2]}')
    return names

def _rotated_classes(characters: np.ndarray,
                     names: list[str]) -> ClassImages:
    """Turns [n, drawers, H, W] characters into 4n rotated classes."""
    rotated = np.stack(
        [np.rot90(characters, k=degrees // 90, axes=(2, 3))
         for degrees in ROTATIONS], axis=1)  # [n, 4, drawers, H, W]
    num, rotations, drawers, height, width = rotated.shape
    images = np.ascontiguousarray(
        rotated.reshape(num * rotations, drawers, height, width, 1))
    class_names = tuple(f'{name}/rot{degrees}'
                        for name in names for degrees in ROTATIONS)
    return ClassImages(images=images, class_names=class_names)


def cache_file_name(zip_paths: list[str], image_size: int,
                    resize: str = 'lanczos') -> str:
    """The cache file of the decoded drawings, keyed on the zips, the size and the resize.

    The Lanczos cache keeps the name it had before the resize method was a
    choice ('omniglot_28px_<hash>.npz'), so existing caches stay valid; every
    other method adds its name to the file name and to the hash.
    """
    if resize == 'lanczos':
        return (f'omniglot_{image_size}px_'
                f'{source_fingerprint(zip_paths, image_size)}.npz')
    return (f'omniglot_{image_size}px_{resize}_'
            f'{source_fingerprint(zip_paths, image_size, resize)}.npz')


def _load_characters(data_dir: str, cache_dir: str, image_size: int,
                     resize: str) -> tuple[np.ndarray, list[str]]:
    """All characters sorted by name, from the cache or decoded from the zips.

    Returns:
        uint8 images [characters, drawers, image_size, image_size] (strokes
        bright) and the matching "<alphabet>/<character>" names.
    """
    if resize not in RESIZE_METHODS:
        raise ConfigError(f'unknown Omniglot resize method {resize!r}; expected '
                          f'one of {", ".join(RESIZE_METHODS)}.')
    if not os.path.isdir(data_dir):
        raise DataError(
            f'Omniglot data directory {data_dir!r} does not exist or is not a '
            f'directory. {_SOURCE_HINT}')
    zip_paths = [os.path.join(data_dir, name) for name in OMNIGLOT_ZIP_NAMES]
    for path in zip_paths:
        if not os.path.isfile(path):
            raise DataError(
                f'Omniglot file {path!r} is missing. {_SOURCE_HINT}')
    prepare_cache_dir(cache_dir)
    cache_path = os.path.join(cache_dir,
                              cache_file_name(zip_paths, image_size, resize))
    cached = load_cached_arrays(cache_path, ('images', 'names'))
    if cached is not None and _cache_is_consistent(cached, image_size):
        return cached['images'], [str(name) for name in cached['names']]

    logging.info('Decoding Omniglot zips in %s into the cache %s (one time; '
                 'about 10 s at 28 px).', data_dir, cache_path)
    start = time.time()
    characters = {}
    for path in zip_paths:
        characters.update(_decode_zip(path, image_size, resize))
    names = sorted(characters)
    _check_same_drawer_count(characters, data_dir)
    images = np.stack([characters[name] for name in names])
    save_cached_arrays(cache_path, {'images': images, 'names': np.array(names)})
    logging.info('Decoded %d Omniglot characters in %.1f s.', len(names),
                 time.time() - start)
    return images, names


def _cache_is_consistent(cached: dict[str, np.ndarray],
                         image_size: int) -> bool:
    """Whether cached arrays have the shapes and types this module writes."""
    images, names = cached['images'], cached['names']
    return (images.dtype == np.uint8 and images.ndim == 4
            and images.shape[2:] == (image_size, image_size)
            and names.ndim == 1 and names.shape[0] == images.shape[0]
            and names.dtype.kind == 'U')


def _decode_zip(zip_path: str, image_size: int,
                resize: str = 'lanczos') -> dict[str, np.ndarray]:
    """Decodes one Omniglot zip.

    Returns:
        "<alphabet>/<character>" -> uint8 [drawers, image_size, image_size],
        drawings sorted by file name.
    """
    top_folder = os.path.splitext(os.path.basename(zip_path))[0]
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(
            f'Omniglot file {zip_path!r} is not a readable zip archive ({e}); '
            f'it may be truncated or corrupt. {_SOURCE_HINT}') from e
    with archive:
        members = {}  # character name -> sorted member names
        for member in archive.namelist():
            parts = member.split('/')
            if (member.endswith('/') or parts[0] == '__MACOSX'
                    or parts[-1].startswith('.')):
                continue
            if parts[0] != top_folder or len(parts) != 4:
                raise DataError(
                    f'Omniglot file {zip_path!r} contains {member!r}, but '
                    f'expected only {top_folder}/<Alphabet>/<character>/'
                    f'<drawing>.png. Is this the right zip? {_SOURCE_HINT}')
            members.setdefault(f'{parts[1]}/{parts[2]}', []).append(member)
        if not members:
            raise DataError(
                f'Omniglot file {zip_path!r} contains no drawings under '
                f'{top_folder}/. {_SOURCE_HINT}')
        return {
            name: np.stack([
                _decode_drawing(archive, zip_path, member, image_size, resize)
                for member in sorted(drawings)
            ]) for name, drawings in members.items()
        }


def _decode_drawing(archive: zipfile.ZipFile, zip_path: str, member: str,
                    image_size: int, resize: str = 'lanczos') -> np.ndarray:
    """One drawing as uint8 [image_size, image_size], strokes bright."""
    size = (image_size, image_size)
    try:
        with Image.open(io.BytesIO(archive.read(member))) as image:
            if resize == 'lanczos':
                grey = image.convert('L').resize(size, Image.LANCZOS)
            else:  # 'nearest_binary': a 1-bit image (thresholded at 128, no dithering).
                binary = image.convert('1', dither=Image.Dither.NONE)
                grey = binary.resize(size, Image.NEAREST).convert('L')
    except Exception as e:  # pylint: disable=broad-except
        # zipfile, zlib and PIL raise many unrelated types for corrupt bytes.
        raise DataError(
            f'Cannot decode {member!r} in Omniglot file {zip_path!r} ({e}); '
            f'the zip is corrupt. {_SOURCE_HINT}') from e
    return 255 - np.asarray(grey, dtype=np.uint8)


def _check_same_drawer_count(characters: dict[str, np.ndarray],
                             data_dir: str) -> None:
    """Raises DataError unless every character has the same drawing count."""
    counts = {name: images.shape[0] for name, images in characters.items()}
    fewest = min(counts, key=counts.get)
    most = max(counts, key=counts.get)
    if counts[fewest] != counts[most]:
        raise DataError(
            f'Omniglot characters in {data_dir!r} have different numbers of '
            f'drawings: {fewest!r} has {counts[fewest]}, {most!r} has '
            f'{counts[most]} (the official zips have 20 each). {_SOURCE_HINT}')


def _check_positive_int(name: str, value: object) -> None:
    """Raises ConfigError unless value is an int >= 1."""
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
            or value < 1):
        raise ConfigError(f'{name} must be a positive integer; got {value!r}.')


def _check_split_sizes(split_sizes: object) -> tuple[int, int]:
    """Validates (train, val) character counts."""
    try:
        num_train, num_val = split_sizes
    except (TypeError, ValueError):
        num_train = num_val = None
    valid = all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        for v in (num_train, num_val)) and num_train >= 1 and num_val >= 0
    if not valid:
        raise ConfigError(
            'split_sizes must be (train, val) character counts with train >= 1 '
            f'and val >= 0, e.g. {MAML_SPLIT_SIZES}; got {split_sizes!r}.')
    return int(num_train), int(num_val)
