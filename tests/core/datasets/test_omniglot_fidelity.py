"""The reference MAML code's Omniglot: binary resizing, its cache, per-episode rotations."""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.datasets import omniglot
from core.datasets.class_images import ClassImages
from core.datasets.episodes import EpisodeSampler, EpisodeSpec
from core.errors import ConfigError

SPLIT = (6, 2)  # of the 12 characters of the `omniglot_dir` fixture
MEMBER = 'images_background/Background_Alphabet_01/character02/0002_01.png'
NAME = 'Background_Alphabet_01/character02/rot0'


def _load(omniglot_dir, cache_dir, **kwargs):
    return omniglot.load_omniglot(str(omniglot_dir), str(cache_dir), split_sizes=SPLIT,
                                  **kwargs)


def _drawing(splits, name=NAME):
    split = next(s for s in splits.values() if name in s.class_names)
    return split.images[split.class_names.index(name), 0, :, :, 0]


def test_nearest_binary_images_have_two_grey_levels_as_the_reference_resize(omniglot_dir,
                                                                             cache_dir):
    splits = _load(omniglot_dir, cache_dir, resize='nearest_binary')
    for split in splits.values():
        np.testing.assert_array_equal(np.unique(split.images), [0, 255])
    with zipfile.ZipFile(omniglot_dir / 'images_background.zip') as archive:
        png = archive.read(MEMBER)
    # cbfinn/maml data/omniglot_resized/resize_images.py, on the 1-bit PNG as it is.
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == '1'
        reference = np.asarray(image.resize((28, 28), resample=Image.LANCZOS).convert('L'))
    np.testing.assert_array_equal(_drawing(splits), 255 - reference)
    # The default stays grey-level Lanczos.
    grey = _load(omniglot_dir, cache_dir)
    assert len(np.unique(grey['train'].images)) > 2


def test_the_cache_keys_on_the_resize_method_and_never_serves_the_other(omniglot_dir, cache_dir,
                                                                        monkeypatch):
    zips = [str(omniglot_dir / name) for name in omniglot.OMNIGLOT_ZIP_NAMES]
    names = {method: omniglot.cache_file_name(zips, 28, method)
             for method in omniglot.RESIZE_METHODS}
    assert len(set(names.values())) == len(names)
    assert names['lanczos'].startswith('omniglot_28px_') and 'lanczos' not in names['lanczos']
    assert names['nearest_binary'].startswith('omniglot_28px_nearest_binary_')

    decoded = []
    real_decode = omniglot._decode_zip
    monkeypatch.setattr(omniglot, '_decode_zip',
                        lambda *a: decoded.append(a) or real_decode(*a))
    grey = _load(omniglot_dir, cache_dir)
    binary = _load(omniglot_dir, cache_dir, resize='nearest_binary')
    assert len(decoded) == 4  # both zips, once per method
    assert sorted(os.listdir(cache_dir)) == sorted(names.values())
    assert not np.array_equal(grey['train'].images, binary['train'].images)
    for method, expected in (('lanczos', grey), ('nearest_binary', binary)):
        again = _load(omniglot_dir, cache_dir, resize=method)
        for split in expected:
            np.testing.assert_array_equal(again[split].images, expected[split].images)
            assert again[split].class_names == expected[split].class_names
    assert len(decoded) == 4  # each read its own cache
    characters = omniglot.load_omniglot_characters(str(omniglot_dir), str(cache_dir),
                                                   resize='nearest_binary')
    np.testing.assert_array_equal(np.unique(characters.images), [0, 255])
    assert len(decoded) == 4


def test_an_unknown_resize_method_is_refused(omniglot_dir, cache_dir):
    with pytest.raises(ConfigError, match="unknown Omniglot resize method 'bicubic'"):
        _load(omniglot_dir, cache_dir, resize='bicubic')


def _rotated_classes(characters=8, drawings=6):
    """Class 4k + r is character k rotated r times; pixel (0, 0): the class, (0, 1): the drawing."""
    images = np.zeros((4 * characters, drawings, 2, 2, 1), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(4 * characters)[:, None]
    images[:, :, 0, 1, 0] = np.arange(drawings)[None, :]
    names = tuple(f'c{k}/rot{r}' for k in range(characters) for r in omniglot.ROTATIONS)
    return ClassImages(images=images, class_names=names)


def _episode_classes(sampler, episodes):
    classes = []
    for index in range(episodes):
        support = np.rint(sampler.episode(index).support_x * 255).astype(int)
        classes.append(support[::sampler.spec.shots, 0, 0, 0])
    return np.array(classes)


def test_per_episode_rotations_never_put_two_rotations_of_a_character_in_one_episode():
    spec = EpisodeSpec(ways=5, shots=1, query=1)
    grouped = _episode_classes(EpisodeSampler(_rotated_classes(), spec, seed=3, group_size=4),
                               2000)
    characters, rotations = grouped // 4, grouped % 4
    assert all(len(set(row)) == spec.ways for row in characters)
    # Every character and every rotation is drawn, each about equally often.
    assert set(characters.ravel()) == set(range(8))
    counts = np.bincount(rotations.ravel(), minlength=4) / rotations.size
    np.testing.assert_allclose(counts, 0.25, atol=0.02)
    # Independent classes (the default) let two rotations of a character share an episode.
    independent = _episode_classes(EpisodeSampler(_rotated_classes(), spec, seed=3), 2000) // 4
    assert sum(len(set(row)) < spec.ways for row in independent) > 1000


def test_group_size_one_is_the_default_stream():
    spec = EpisodeSpec(ways=5, shots=2, query=1)
    default = EpisodeSampler(_rotated_classes(), spec, seed=7).batch(3, 4)
    explicit = EpisodeSampler(_rotated_classes(), spec, seed=7, group_size=1).batch(3, 4)
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('ways, group_size, message', [
    (9, 4, 'need 9 base classes .groups of 4 variants., but the data has only 8'),
    (2, 3, '32 classes do not split into groups of 3'),
    (2, 0, 'group_size must be a positive integer')])
def test_too_few_characters_or_a_bad_group_size_is_refused(ways, group_size, message):
    with pytest.raises(ConfigError, match=message):
        EpisodeSampler(_rotated_classes(), EpisodeSpec(ways, 1, 1), seed=0,
                       group_size=group_size)
