"""Tests for the mini-ImageNet loader on tiny generated CSVs and JPEGs."""

import os

import numpy as np
from PIL import Image
import pytest

from core.datasets import miniimagenet
from core.datasets.miniimagenet import load_miniimagenet
from core.errors import ConfigError
from core.errors import DataError

# The `miniimagenet_dir` fixture writes 5/3/3 classes of 6 images each.
FAKE_CLASSES = {'train': 5, 'val': 3, 'test': 3}
FAKE_IMAGES_PER_CLASS = 6


def _load(data_dir, cache_dir, **kwargs):
    return load_miniimagenet(str(data_dir), str(cache_dir), **kwargs)


def _rewrite_csv(data_dir, split, edit):
    path = data_dir / f'{split}.csv'
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(edit(lines)) + '\n')


def test_shapes_dtype_and_class_names(miniimagenet_dir, cache_dir):
    splits = _load(miniimagenet_dir, cache_dir)
    assert set(splits) == set(FAKE_CLASSES)
    all_names = []
    for split, num_classes in FAKE_CLASSES.items():
        images = splits[split]
        assert images.images.shape == (num_classes, FAKE_IMAGES_PER_CLASS, 84,
                                       84, 3)
        assert images.images.dtype == np.uint8
        assert list(images.class_names) == sorted(images.class_names)
        all_names += images.class_names
    assert len(set(all_names)) == sum(FAKE_CLASSES.values())


def test_images_follow_csv_order_and_are_resized(miniimagenet_dir, cache_dir):
    images = _load(miniimagenet_dir, cache_dir, image_size=32)['val']
    lines = (miniimagenet_dir / 'val.csv').read_text().splitlines()
    filename, label = lines[1 + FAKE_IMAGES_PER_CLASS + 2].split(',')
    with Image.open(miniimagenet_dir / 'images' / filename) as image:
        expected = np.asarray(
            image.convert('RGB').resize((32, 32), Image.LANCZOS))
    assert images.class_names[1] == label
    np.testing.assert_array_equal(images.images[1, 2], expected)


def test_cache_is_created_and_reused(miniimagenet_dir, cache_dir,
                                     monkeypatch):
    first = _load(miniimagenet_dir, cache_dir)
    assert sorted(name.split('_')[1] for name in os.listdir(cache_dir)) == [
        'test', 'train', 'val']

    def fail(path, image_size):
        raise AssertionError(f'{path} decoded despite the cache')

    monkeypatch.setattr(miniimagenet, '_decode_image', fail)
    second = _load(miniimagenet_dir, cache_dir)
    for split in first:
        np.testing.assert_array_equal(first[split].images,
                                      second[split].images)


def test_data_dir_is_never_written(miniimagenet_dir, cache_dir):
    before = sorted(os.walk(miniimagenet_dir))
    _load(miniimagenet_dir, cache_dir)
    assert sorted(os.walk(miniimagenet_dir)) == before


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_missing_csv(miniimagenet_dir, cache_dir, split):
    os.remove(miniimagenet_dir / f'{split}.csv')
    with pytest.raises(DataError,
                       match=f'{split}.csv.*missing.*meta-learning-lstm'):
        _load(miniimagenet_dir, cache_dir)


def test_missing_data_dir(tmp_path, cache_dir):
    with pytest.raises(DataError, match='nowhere'):
        _load(tmp_path / 'nowhere', cache_dir)


def test_missing_image_folder(miniimagenet_dir, cache_dir):
    os.rename(miniimagenet_dir / 'images', miniimagenet_dir / 'jpegs')
    with pytest.raises(DataError, match='images.*missing.*ImageNet'):
        _load(miniimagenet_dir, cache_dir)


def test_missing_images_are_named_and_counted(miniimagenet_dir, cache_dir):
    lines = (miniimagenet_dir / 'test.csv').read_text().splitlines()
    first_missing = lines[3].split(',')[0]
    for line in (lines[3], lines[9]):
        os.remove(miniimagenet_dir / 'images' / line.split(',')[0])
    with pytest.raises(DataError,
                       match=f'2 image file.*test.csv.*{first_missing}'):
        _load(miniimagenet_dir, cache_dir)


@pytest.mark.parametrize('header', ['image,class', 'n0100000100000001.jpg,x',
                                    ''])
def test_bad_header(miniimagenet_dir, cache_dir, header):
    _rewrite_csv(miniimagenet_dir, 'val',
                 lambda lines: [header] + lines[1:] if header else [])
    with pytest.raises(DataError, match='val.csv.*header.*filename,label'):
        _load(miniimagenet_dir, cache_dir)


def test_malformed_row(miniimagenet_dir, cache_dir):
    _rewrite_csv(miniimagenet_dir, 'train',
                 lambda lines: lines[:4] + ['just_a_file.jpg'] + lines[4:])
    with pytest.raises(DataError, match='train.csv.*line 5'):
        _load(miniimagenet_dir, cache_dir)


def test_unequal_class_sizes(miniimagenet_dir, cache_dir):
    _rewrite_csv(miniimagenet_dir, 'train', lambda lines: lines[:-1])
    with pytest.raises(DataError, match='train.csv.*different numbers'):
        _load(miniimagenet_dir, cache_dir)


def test_corrupt_image(miniimagenet_dir, cache_dir):
    filename = (miniimagenet_dir / 'val.csv').read_text().splitlines()[2]
    filename = filename.split(',')[0]
    (miniimagenet_dir / 'images' / filename).write_bytes(b'\xff\xd8 broken')
    with pytest.raises(DataError, match=filename):
        _load(miniimagenet_dir, cache_dir)


def test_invalid_image_size(miniimagenet_dir, cache_dir):
    with pytest.raises(ConfigError, match='image_size'):
        _load(miniimagenet_dir, cache_dir, image_size=-3)
