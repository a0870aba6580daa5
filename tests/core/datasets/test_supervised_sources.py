"""One --dataset convention for every supervised source."""

import pytest

from core.datasets import supervised
from core.datasets.fake_idx import write_fake_idx_dataset
from core.errors import ConfigError, DataError


@pytest.mark.parametrize("variant", supervised.IDX_DATASETS)
def test_idx_sources_read_their_data_dir(tmp_path, variant):
    write_fake_idx_dataset(str(tmp_path), n_train=12, n_test=6)
    splits = supervised.load_supervised(variant, str(tmp_path))
    assert len(splits["train"]) == 12 and len(splits["test"]) == 6
    assert splits["train"].tasks == ("label",)


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        supervised.load_supervised("mnist", str(tmp_path))


@pytest.mark.parametrize("dataset, data_dir, message", [
    ("mnist", None, "--data_dir is required for --dataset=mnist"),
    ("imagenet", "/x", "unknown --dataset='imagenet'; expected mnist, fashion_mnist or tfds:"),
])
def test_bad_choices_give_one_clear_error(dataset, data_dir, message):
    with pytest.raises(ConfigError, match=message):
        supervised.load_supervised(dataset, data_dir)


def test_tfds_names_are_routed_to_the_bridge(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="not prepared"):
        supervised.load_supervised("tfds:mnist", str(tmp_path / "empty"))
    assert supervised.is_supported("tfds:mnist:3.0.1") and not supervised.is_supported("svhn")
