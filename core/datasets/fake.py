"""Tiny fake Omniglot and mini-ImageNet datasets in the official file formats.

Also `random_image_episodes`: random images of the right shapes, already
stacked as a meta-batch, for benchmarks and tests that need no files.

For tests: the files written here are read by the real loaders
(`load_omniglot`, `load_miniimagenet`) exactly like the official data, but
hold only a handful of classes so that tests run in well under a second.
Images are deterministic functions of `seed` and differ between classes.
"""

import io
import os
import zipfile

import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw

from core.datasets.episodes import Episode
from core.datasets.omniglot import OMNIGLOT_ZIP_NAMES

__all__ = ['write_fake_omniglot', 'write_fake_miniimagenet', 'random_image_episodes']


def random_image_episodes(num_tasks: int, ways: int, support: int, query: int,
                          image_shape: tuple[int, ...] = (28, 28, 1), seed: int = 0) -> Episode:
    """A meta-batch of uniform-random images with balanced labels.

    Args:
      num_tasks: tasks in the meta-batch.
      ways: classes per task; labels cycle through 0..ways-1.
      support: support examples per task (a multiple of `ways`).
      query: query examples per task (a multiple of `ways`).
      image_shape: shape of one image.
      seed: numpy seed; the support images are drawn before the query images.

    Returns:
      An `Episode` of float32 images [num_tasks, n, *image_shape] and int32
      labels [num_tasks, n].
    """
    if support % ways or query % ways:
        raise ValueError(f"support ({support}) and query ({query}) must be multiples of "
                         f"ways ({ways})")
    rng = np.random.default_rng(seed)
    images = lambda n: jnp.asarray(rng.random((num_tasks, n) + tuple(image_shape)), jnp.float32)
    labels = lambda n: jnp.asarray(np.tile(np.arange(ways), (num_tasks, n // ways)), jnp.int32)
    support_x = images(support)
    return Episode(support_x, labels(support), images(query), labels(query))


def write_fake_omniglot(root_dir: str, n_alphabets: int = 2,
                        chars_per_alphabet: int = 3, drawers: int = 20,
                        image_size: int = 105, seed: int = 0) -> None:
    """Writes images_background.zip and images_evaluation.zip.

    Layout as in the official zips: `images_background/<Alphabet>/characterNN/
    XXXX_YY.png`, directory entries included, mode "1" PNGs with black strokes
    on white. Each zip holds `n_alphabets * chars_per_alphabet` characters, so
    the loader sees twice that many in total.

    Args:
        root_dir: directory to write into (created if missing).
        n_alphabets: alphabets in each of the two zips.
        chars_per_alphabet: characters per alphabet.
        drawers: drawings per character (20 in the real data).
        image_size: side length of the PNGs (105 in the real data).
        seed: makes the stroke patterns reproducible.
    """
    os.makedirs(root_dir, exist_ok=True)
    code = 0  # Real file names start with a per-character 4-digit code.
    for zip_index, zip_name in enumerate(OMNIGLOT_ZIP_NAMES):
        top = os.path.splitext(zip_name)[0]
        prefix = ('Background', 'Evaluation')[zip_index]
        with zipfile.ZipFile(os.path.join(root_dir, zip_name), 'w',
                             zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f'{top}/', b'')
            for alphabet in range(n_alphabets):
                alphabet_dir = f'{top}/{prefix}_Alphabet_{alphabet + 1:02d}/'
                archive.writestr(alphabet_dir, b'')
                for character in range(chars_per_alphabet):
                    code += 1
                    character_dir = (f'{alphabet_dir}'
                                     f'character{character + 1:02d}/')
                    archive.writestr(character_dir, b'')
                    rng = np.random.default_rng(
                        [seed, zip_index, alphabet, character])
                    strokes = rng.uniform(0.1, 0.9, size=(4, 2, 2))
                    for drawer in range(drawers):
                        png = _fake_drawing_png(strokes, rng, image_size)
                        archive.writestr(
                            f'{character_dir}{code:04d}_{drawer + 1:02d}.png',
                            png)


def _fake_drawing_png(strokes: np.ndarray, rng: np.random.Generator,
                      image_size: int) -> bytes:
    """One jittered drawing of a character's strokes as mode "1" PNG bytes."""
    image = Image.new('1', (image_size, image_size), color=1)
    draw = ImageDraw.Draw(image)
    jitter = rng.normal(0.0, 0.02, size=strokes.shape)
    points = np.clip(strokes + jitter, 0.0, 1.0) * (image_size - 1)
    for (x0, y0), (x1, y1) in points:
        draw.line([(x0, y0), (x1, y1)], fill=0,
                  width=max(1, image_size // 15))
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()


def write_fake_miniimagenet(root_dir: str,
                            classes_per_split: tuple[int, int, int] = (5, 3,
                                                                       3),
                            images_per_class: int = 6, seed: int = 0) -> None:
    """Writes train.csv, val.csv, test.csv and images/ like mini-ImageNet.

    Args:
        root_dir: directory to write into (created if missing).
        classes_per_split: numbers of (train, val, test) classes.
        images_per_class: images per class (600 in the real data).
        seed: makes the images reproducible.
    """
    images_dir = os.path.join(root_dir, 'images')
    os.makedirs(images_dir, exist_ok=True)
    class_number = 0
    for split, num_classes in zip(('train', 'val', 'test'), classes_per_split):
        rows = ['filename,label']
        for _ in range(num_classes):
            class_number += 1
            wnid = f'n{1000000 + class_number:08d}'
            rng = np.random.default_rng([seed, class_number])
            colour = rng.integers(0, 256, size=3)
            for image_number in range(images_per_class):
                filename = f'{wnid}{image_number + 1:08d}.jpg'
                # Varying sizes, as in ImageNet, to exercise resizing.
                height = 60 + 7 * (image_number % 3)
                width = 70 + 5 * (image_number % 4)
                noise = rng.integers(-40, 41, size=(height, width, 3))
                pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, 'RGB').save(
                    os.path.join(images_dir, filename), format='JPEG')
                rows.append(f'{filename},{wnid}')
        with open(os.path.join(root_dir, f'{split}.csv'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
