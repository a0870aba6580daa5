"""Tests for the Omniglot loader on tiny fake zips."""

import io
import os
import shutil
import zipfile

import numpy as np
from PIL import Image
import pytest

from core.datasets import omniglot
from core.datasets.omniglot import load_omniglot
from core.errors import ConfigError
from core.errors import DataError

# The `omniglot_dir` fixture writes 2 zips x 2 alphabets x 3 characters.
FAKE_OMNIGLOT_CHARACTERS = 12
FAKE_OMNIGLOT_SPLIT = (6, 2)  # Leaves 4 test characters.


def _load(data_dir, cache_dir, **kwargs):
    kwargs.setdefault('split_sizes', FAKE_OMNIGLOT_SPLIT)
    return load_omniglot(str(data_dir), str(cache_dir), **kwargs)


def _character_names(split):
    names = split.class_names[::4]
    return [name.rsplit('/', 1)[0] for name in names]


def _listing(directory):
    return sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                  for entry in os.scandir(directory))


def test_split_sizes_shapes_and_dtype(omniglot_dir, cache_dir):
    splits = _load(omniglot_dir, cache_dir)
    num_train, num_val = FAKE_OMNIGLOT_SPLIT
    num_test = FAKE_OMNIGLOT_CHARACTERS - num_train - num_val
    assert set(splits) == {'train', 'val', 'test'}
    for name, characters in (('train', num_train), ('val', num_val),
                             ('test', num_test)):
        split = splits[name]
        assert split.images.shape == (4 * characters, 20, 28, 28, 1)
        assert split.images.dtype == np.uint8
        assert len(split.class_names) == 4 * characters
    names = [set(_character_names(split)) for split in splits.values()]
    assert sum(len(n) for n in names) == FAKE_OMNIGLOT_CHARACTERS
    assert len(set.union(*names)) == FAKE_OMNIGLOT_CHARACTERS


def test_split_is_seeded_shuffle_of_sorted_characters(omniglot_dir, cache_dir):
    splits = _load(omniglot_dir, cache_dir)
    all_names = sorted(
        name for split in splits.values() for name in _character_names(split))
    order = np.random.RandomState(1).permutation(len(all_names))
    expected = [all_names[i] for i in order]
    num_train, num_val = FAKE_OMNIGLOT_SPLIT
    assert _character_names(splits['train']) == expected[:num_train]
    assert _character_names(splits['val']) == expected[
        num_train:num_train + num_val]
    assert _character_names(splits['test']) == expected[num_train + num_val:]


def test_rotations_make_four_classes_per_character(omniglot_dir, cache_dir):
    images = _load(omniglot_dir, cache_dir)['train']
    for k in range(images.num_classes // 4):
        base = images.images[4 * k]
        for r, degrees in enumerate(omniglot.ROTATIONS):
            np.testing.assert_array_equal(images.images[4 * k + r],
                                          np.rot90(base, r, axes=(1, 2)))
            assert images.class_names[4 * k + r].endswith(f'/rot{degrees}')
        assert not np.array_equal(images.images[4 * k + 1], base)


def test_images_are_resized_lanczos_and_inverted(omniglot_dir, cache_dir):
    splits = _load(omniglot_dir, cache_dir, image_size=20)
    name = 'Background_Alphabet_01/character02/rot0'
    split = next(s for s in splits.values() if name in s.class_names)
    loaded = split.images[split.class_names.index(name), 0, :, :, 0]
    with zipfile.ZipFile(omniglot_dir / 'images_background.zip') as archive:
        png = archive.read(
            'images_background/Background_Alphabet_01/character02/0002_01.png')
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == '1' and image.size == (105, 105)
        expected = np.asarray(
            image.convert('L').resize((20, 20), Image.LANCZOS))
    np.testing.assert_array_equal(loaded, 255 - expected)
    # Background is 0 and strokes are bright.
    assert np.median(split.images) == 0
    assert split.images.max() == 255


def test_cache_is_created_and_reused(omniglot_dir, cache_dir, monkeypatch):
    first = _load(omniglot_dir, cache_dir)
    cache_files = os.listdir(cache_dir)
    assert len(cache_files) == 1
    assert cache_files[0].startswith('omniglot_28px_')
    assert cache_files[0].endswith('.npz')

    def fail(*args):
        raise AssertionError(f'zip decoded despite the cache: {args}')

    monkeypatch.setattr(omniglot, '_decode_zip', fail)
    second = _load(omniglot_dir, cache_dir)
    for split in first:
        np.testing.assert_array_equal(first[split].images,
                                      second[split].images)
        assert first[split].class_names == second[split].class_names


def test_changed_zip_invalidates_cache(omniglot_dir, cache_dir, monkeypatch):
    _load(omniglot_dir, cache_dir)
    zip_path = omniglot_dir / 'images_evaluation.zip'
    stat = os.stat(zip_path)
    os.utime(zip_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    decoded = []
    real_decode = omniglot._decode_zip
    monkeypatch.setattr(omniglot, '_decode_zip',
                        lambda *a: decoded.append(a) or real_decode(*a))
    _load(omniglot_dir, cache_dir)
    assert len(decoded) == 2
    assert len(os.listdir(cache_dir)) == 2


def test_data_dir_is_never_written(omniglot_dir, cache_dir):
    before = _listing(omniglot_dir)
    _load(omniglot_dir, cache_dir)
    _load(omniglot_dir, cache_dir)
    assert _listing(omniglot_dir) == before


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty'])
def test_corrupt_cache_is_rebuilt(omniglot_dir, cache_dir, damage):
    expected = _load(omniglot_dir, cache_dir)
    (cache_file,) = cache_dir.iterdir()
    content = cache_file.read_bytes()
    cache_file.write_bytes({
        'garbage': b'not an npz file at all',
        'truncated': content[:len(content) // 2],
        'empty': b'',
    }[damage])
    rebuilt = _load(omniglot_dir, cache_dir)
    np.testing.assert_array_equal(rebuilt['test'].images,
                                  expected['test'].images)
    assert cache_file.read_bytes() == content
    assert os.listdir(cache_dir) == [cache_file.name]  # No temp files left.


def test_missing_data_dir(tmp_path, cache_dir):
    missing = tmp_path / 'nowhere'
    with pytest.raises(DataError, match='nowhere.*brendenlake/omniglot'):
        _load(missing, cache_dir)


@pytest.mark.parametrize('zip_name', omniglot.OMNIGLOT_ZIP_NAMES)
def test_missing_zip(omniglot_dir, cache_dir, zip_name):
    os.remove(omniglot_dir / zip_name)
    with pytest.raises(DataError, match=f'{zip_name}.*missing.*brendenlake'):
        _load(omniglot_dir, cache_dir)


@pytest.mark.parametrize('damage', ['truncated', 'not_a_zip'])
def test_unreadable_zip(omniglot_dir, cache_dir, damage):
    path = omniglot_dir / 'images_evaluation.zip'
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2] if damage == 'truncated'
                     else b'<html>404 Not Found</html>')
    with pytest.raises(DataError,
                       match='images_evaluation.zip.*not a readable'):
        _load(omniglot_dir, cache_dir)


def test_undecodable_png(omniglot_dir, cache_dir):
    path = omniglot_dir / 'images_background.zip'
    member = 'images_background/Background_Alphabet_02/character03/0006_07.png'
    rewritten = omniglot_dir / 'rewritten.zip'
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, 'w') as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:40] if info.filename == member else data)
    os.replace(rewritten, path)
    with pytest.raises(DataError, match='0006_07.png.*images_background.zip'):
        _load(omniglot_dir, cache_dir)


def test_wrong_top_level_folder(omniglot_dir, cache_dir):
    shutil.copy(omniglot_dir / 'images_evaluation.zip',
                omniglot_dir / 'images_background.zip')
    with pytest.raises(DataError,
                       match='images_background.zip.*images_evaluation/'):
        _load(omniglot_dir, cache_dir)


def test_too_few_characters(omniglot_dir, cache_dir):
    with pytest.raises(DataError, match='has 12 characters.*needs 1201'):
        _load(omniglot_dir, cache_dir, split_sizes=(1100, 100))


@pytest.mark.parametrize('kwargs', [
    {'image_size': 0}, {'image_size': 2.5}, {'split_sizes': (0, 2)},
    {'split_sizes': (5, -1)}, {'split_sizes': 7}])
def test_invalid_config(omniglot_dir, cache_dir, kwargs):
    with pytest.raises(ConfigError):
        _load(omniglot_dir, cache_dir, **kwargs)
