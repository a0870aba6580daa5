"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle split.

Expected layout of `data_dir`:

    train.csv, val.csv, test.csv   header "filename,label"; each row names an
                                   image file (e.g. n0153282900000005.jpg) and
                                   its WordNet id class label (n01532829)
    images/                        the image files named in the CSVs

The split CSVs come from the Ravi & Larochelle repository
(github.com/twitter/meta-learning-lstm, data/miniImagenet/): 64 train, 16
validation and 20 test classes of 600 images each. The images are ImageNet
(ILSVRC-12) images, of any size here: each is converted to RGB and resized to
84x84 with Lanczos filtering (PIL `Image.LANCZOS`, formerly `ANTIALIAS`).

Every class of a split must have the same number of images (600 in the real
split); otherwise a DataError is raised rather than silently truncating
classes, since unequal counts mean an edited or damaged CSV.

The decoded images are cached per split as an `.npz` in `cache_dir`; nothing
is ever written to `data_dir`.
"""

import csv
import os
import time

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

__all__ = ['ClassImages', 'load_miniimagenet', 'MINIIMAGENET_SPLITS']

MINIIMAGENET_SPLITS = ('train', 'val', 'test')
IMAGES_FOLDER = 'images'
CSV_HEADER = ('filename', 'label')
_CSV_HINT = ('The split CSVs (train.csv, val.csv, test.csv) come from the Ravi '
             '& Larochelle repository https://github.com/twitter/'
             'meta-learning-lstm (data/miniImagenet/).')
_IMAGES_HINT = ('The images are ImageNet (ILSVRC-12) images; put them, named '
                'as in the CSVs, in the images/ folder of the data directory.')


def load_miniimagenet(data_dir: str, cache_dir: str,
                      image_size: int = 84) -> dict[str, ClassImages]:
    """Loads the three mini-ImageNet splits.

    Args:
        data_dir: directory with train.csv, val.csv, test.csv and images/.
            Only read, never written.
        cache_dir: writable directory for the decoded-image cache (created if
            missing).
        image_size: side length in pixels of the resized square images.

    Returns:
        {'train', 'val', 'test'} -> ClassImages with uint8 images
        [classes, images_per_class, image_size, image_size, 3]. Classes are
        sorted by label (WordNet id); images keep their CSV order.

    Raises:
        DataError: a CSV is missing or malformed, an image is missing or cannot
            be decoded, or classes have different numbers of images.
        ConfigError: `image_size` is invalid or `cache_dir` cannot be written.
    """
    if (not isinstance(image_size, (int, np.integer))
            or isinstance(image_size, bool) or image_size < 1):
        raise ConfigError(
            f'image_size must be a positive integer; got {image_size!r}.')
    if not os.path.isdir(data_dir):
        raise DataError(
            f'mini-ImageNet data directory {data_dir!r} does not exist or is '
            f'not a directory. {_CSV_HINT} {_IMAGES_HINT}')
    csv_paths = {split: os.path.join(data_dir, f'{split}.csv')
                 for split in MINIIMAGENET_SPLITS}
    for path in csv_paths.values():
        if not os.path.isfile(path):
            raise DataError(f'mini-ImageNet split file {path!r} is missing. '
                            f'{_CSV_HINT}')
    images_dir = os.path.join(data_dir, IMAGES_FOLDER)
    if not os.path.isdir(images_dir):
        raise DataError(f'mini-ImageNet image folder {images_dir!r} is '
                        f'missing. {_IMAGES_HINT}')
    prepare_cache_dir(cache_dir)
    return {
        split: _load_split(path, images_dir, cache_dir, split, image_size)
        for split, path in csv_paths.items()
    }


def _load_split(csv_path: str, images_dir: str, cache_dir: str, split: str,
                image_size: int) -> ClassImages:
    """One split, from the cache or decoded from the image files."""
    fingerprint = source_fingerprint([csv_path, images_dir], image_size)
    cache_path = os.path.join(
        cache_dir, f'miniimagenet_{split}_{image_size}px_{fingerprint}.npz')
    cached = load_cached_arrays(cache_path, ('images', 'names'))
    if cached is not None and _cache_is_consistent(cached, image_size):
        return ClassImages(images=cached['images'],
                           class_names=tuple(str(n) for n in cached['names']))

    files_by_class = _read_split_csv(csv_path)
    _check_images_present(files_by_class, images_dir, csv_path)
    names = sorted(files_by_class)
    counts = {name: len(files_by_class[name]) for name in names}
    fewest = min(names, key=counts.get)
    most = max(names, key=counts.get)
    if counts[fewest] != counts[most]:
        raise DataError(
            f'mini-ImageNet split file {csv_path!r} lists different numbers of '
            f'images per class: {fewest} has {counts[fewest]}, {most} has '
            f'{counts[most]} (the Ravi & Larochelle split has 600 each). '
            f'{_CSV_HINT}')

    logging.info('Decoding %d mini-ImageNet %s images into the cache %s (one '
                 'time).', len(names) * counts[fewest], split, cache_path)
    start = time.time()
    images = np.empty((len(names), counts[fewest], image_size, image_size, 3),
                      np.uint8)
    for class_index, name in enumerate(names):
        for image_index, filename in enumerate(files_by_class[name]):
            images[class_index, image_index] = _decode_image(
                os.path.join(images_dir, filename), image_size)
    save_cached_arrays(cache_path, {'images': images, 'names': np.array(names)})
    logging.info('Decoded mini-ImageNet %s in %.1f s.', split,
                 time.time() - start)
    return ClassImages(images=images, class_names=tuple(names))


def _cache_is_consistent(cached: dict[str, np.ndarray],
                         image_size: int) -> bool:
    """Whether cached arrays have the shapes and types this module writes."""
    images, names = cached['images'], cached['names']
    return (images.dtype == np.uint8 and images.ndim == 5
            and images.shape[2:] == (image_size, image_size, 3)
            and names.ndim == 1 and names.shape[0] == images.shape[0]
            and names.dtype.kind == 'U')


def _read_split_csv(csv_path: str) -> dict[str, list[str]]:
    """Parses a split CSV into label -> image file names in file order."""
    files_by_class = {}
    try:
        with open(csv_path, newline='', encoding='utf-8-sig') as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(
                    field.strip() for field in header) != CSV_HEADER:
                raise DataError(
                    f'mini-ImageNet split file {csv_path!r} must start with '
                    f'the header line "filename,label"; found {header!r}. '
                    f'{_CSV_HINT}')
            for row in reader:
                if not row or not ''.join(row).strip():
                    continue
                fields = [field.strip() for field in row]
                if len(fields) != 2 or not all(fields):
                    raise DataError(
                        f'mini-ImageNet split file {csv_path!r} line '
                        f'{reader.line_num} is {",".join(row)!r}; expected '
                        f'"<image file>,<label>". {_CSV_HINT}')
                filename, label = fields
                files_by_class.setdefault(label, []).append(filename)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f'Cannot read mini-ImageNet split file {csv_path!r} '
                        f'({e}). {_CSV_HINT}') from e
    if not files_by_class:
        raise DataError(f'mini-ImageNet split file {csv_path!r} lists no '
                        f'images. {_CSV_HINT}')
    return files_by_class


def _check_images_present(files_by_class: dict[str, list[str]],
                          images_dir: str, csv_path: str) -> None:
    """Raises DataError naming the first missing image file, if any."""
    present = set(os.listdir(images_dir))
    missing = [filename for files in files_by_class.values()
               for filename in files if filename not in present]
    if missing:
        raise DataError(
            f'{len(missing)} image file(s) listed in {csv_path!r} are missing '
            f'from {images_dir!r}, e.g. {missing[0]!r}. {_IMAGES_HINT}')


def _decode_image(path: str, image_size: int) -> np.ndarray:
    """One image as uint8 [image_size, image_size, 3]."""
    try:
        with Image.open(path) as image:
            rgb = image.convert('RGB').resize((image_size, image_size),
                                              Image.LANCZOS)
    except Exception as e:  # pylint: disable=broad-except
        # PIL raises many unrelated types for corrupt image bytes.
        raise DataError(f'Cannot decode mini-ImageNet image {path!r} ({e}); '
                        f'replace it with an intact copy. {_IMAGES_HINT}') \
            from e
    return np.asarray(rgb, dtype=np.uint8)
