"""Fixtures that write tiny fake datasets in the official formats."""

import pytest

from core.datasets.fake import write_fake_miniimagenet
from core.datasets.fake import write_fake_omniglot


@pytest.fixture
def omniglot_dir(tmp_path):
    """Fake Omniglot zips: 2 alphabets x 3 characters x 20 drawers each."""
    data_dir = tmp_path / 'omniglot_data'
    write_fake_omniglot(str(data_dir), n_alphabets=2, chars_per_alphabet=3)
    return data_dir


@pytest.fixture
def miniimagenet_dir(tmp_path):
    """Fake mini-ImageNet: 5/3/3 train/val/test classes of 6 JPEGs each."""
    data_dir = tmp_path / 'miniimagenet_data'
    write_fake_miniimagenet(str(data_dir), classes_per_split=(5, 3, 3),
                            images_per_class=6)
    return data_dir


@pytest.fixture
def cache_dir(tmp_path):
    """A not yet existing cache directory."""
    return tmp_path / 'cache'
