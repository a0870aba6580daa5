"""Tests for the TFDS bridge, without TensorFlow and without the network.

Two kinds of data stand in for datasets a user prepared with `tfds build`:

* tiny datasets prepared here, for real, as ArrayRecord files: TFDS writes
  them without TensorFlow when images are given as PIL images. Their builders
  are not registered, so `load_tfds` finds them from the files alone, as it
  would a dataset prepared on another machine.
* `tfds.testing.mock_data`, which fakes the data source of a registered
  dataset ("mnist") from its code, so nothing is prepared or downloaded.
"""

import json
import os
import shutil
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from PIL import Image  # pylint: disable=wrong-import-position

from core.datasets import tfds_source  # pylint: disable=wrong-import-position
from core.datasets.tfds_source import load_tfds  # pylint: disable=wrong-import-position
from core.datasets.tfds_source import parse_tfds_name  # pylint: disable=wrong-import-position
from core.errors import ConfigError  # pylint: disable=wrong-import-position
from core.errors import DataError  # pylint: disable=wrong-import-position

SHAPE = (8, 6, 3)
NUM_CLASSES = 4
COUNTS = {"train": 10, "test": 7}


def _image(index: int, shape=SHAPE) -> np.ndarray:
    """A distinct image per example, whose first pixel is its index."""
    image = (np.arange(np.prod(shape)).reshape(shape) * (index + 1) % 251).astype(np.uint8)
    image.flat[0] = index
    return image


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


class TfdsTinyDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """RGB images of a fixed size with a 4-class label, in two splits."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=SHAPE),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(count) for split, count in COUNTS.items()}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"image": _pil(_image(i)), "label": i % NUM_CLASSES}


class TfdsTinyOther(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Grayscale "picture"s of a "digit" class, plus a non-image feature."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "picture": tfds.features.Image(shape=(5, 4, 1)),
            "digit": tfds.features.ClassLabel(num_classes=3),
            "embedding": tfds.features.Tensor(shape=(2,), dtype=np.float32),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(5)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"picture": _pil(_image(i, (5, 4, 1))), "digit": i % 3,
                      "embedding": np.array([i, -i], np.float32)}


class TfdsTinyVarSize(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of varying size, as in caltech101 or imagenet2012."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(num_classes=2),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(2)}

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"image": _pil(_image(i, (4 + i, 3, 1))), "label": i}


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """A TFDS data_dir holding the three tiny datasets, prepared as ArrayRecord."""
    data_dir = str(tmp_path_factory.mktemp("tfds_data"))
    tfds.disable_progress_bar()
    config = tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP)
    for builder_cls in (TfdsTinyDigits, TfdsTinyOther, TfdsTinyVarSize):
        builder = builder_cls(data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare(download_config=config)
    return data_dir


@pytest.fixture
def mock_getitems_fixed(monkeypatch):
    """Works around a bug in tensorflow-datasets 4.9.10's `mock_data`.

    It sets `__getitems__` on a MagicMock instance, which MagicMock does not
    treat as a magic method, so the data source calls it without `self` and
    gets "_getitems() missing 1 required positional argument: 'record_keys'".
    `load_tfds` reads with `__getitems__` (one batched ArrayRecord read per
    chunk), so the mocked source needs a working one. Accepts both call forms,
    so it stays correct if TFDS fixes the bug.
    """
    from tensorflow_datasets.testing import mocking  # pylint: disable=import-outside-toplevel

    def getitems(*args, generator, serialized=False):
        assert not serialized
        return [generator[key] for key in args[-1]]

    monkeypatch.setattr(mocking, "_getitems", getitems)


def _check_tiny_digits(data, count):
    x, labels = data.x, data.y["label"]
    assert x.shape == (count, *SHAPE) and x.dtype == np.uint8
    assert data.tasks == ("label",)
    assert labels.shape == (count,) and labels.dtype == np.int32
    indices = x[:, 0, 0, 0].astype(int)  # TFDS stores examples in a shuffled order.
    assert sorted(indices.tolist()) == list(range(count))
    np.testing.assert_array_equal(x, np.stack([_image(i) for i in indices]))
    np.testing.assert_array_equal(labels, indices % NUM_CLASSES)


@pytest.mark.parametrize("chunk", [3, 1024])  # several chunks with a partial last one; one
def test_reads_prepared_array_record_dataset_exactly(prepared_dir, monkeypatch, chunk):
    monkeypatch.setattr(tfds_source, "_CHUNK", chunk)
    splits = load_tfds("tfds_tiny_digits", prepared_dir)
    assert list(splits) == ["train", "test"]
    for split, count in COUNTS.items():
        _check_tiny_digits(splits[split], count)


def test_versioned_name_sliced_split_and_order(prepared_dir):
    full = load_tfds("tfds_tiny_digits", prepared_dir, splits=("train",))["train"]
    splits = load_tfds("tfds_tiny_digits:1.0.0", prepared_dir,
                       splits=("test", "train[:40%]", "train[40%:]"))
    assert list(splits) == ["test", "train[:40%]", "train[40%:]"]
    _check_tiny_digits(splits["test"], COUNTS["test"])
    np.testing.assert_array_equal(
        np.concatenate([splits["train[:40%]"].x, splits["train[40%:]"].x]), full.x)
    assert len(splits["train[:40%]"]) == 4


def test_default_data_dir_is_tfds_default(prepared_dir, monkeypatch):
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", prepared_dir)
    _check_tiny_digits(load_tfds("tfds_tiny_digits", None, splits=("test",))["test"],
                       COUNTS["test"])


def test_other_feature_keys(prepared_dir):
    data = load_tfds("tfds_tiny_other", prepared_dir, splits=("train",),
                     image_key="picture", label_key="digit")["train"]
    assert data.x.shape == (5, 5, 4, 1) and data.x.dtype == np.uint8
    indices = data.x[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(data.x, np.stack([_image(i, (5, 4, 1)) for i in indices]))
    np.testing.assert_array_equal(data.y["label"], indices % 3)
    with pytest.raises(ConfigError, match=r"no image feature 'image'.*'picture'.*image_key="):
        load_tfds("tfds_tiny_other", prepared_dir, label_key="digit")
    with pytest.raises(ConfigError, match=r"no label feature 'label'.*'digit'.*label_key="):
        load_tfds("tfds_tiny_other", prepared_dir, image_key="picture")
    with pytest.raises(ConfigError, match="'embedding'.*not an image"):
        load_tfds("tfds_tiny_other", prepared_dir, image_key="embedding", label_key="digit")
    with pytest.raises(ConfigError, match="'embedding'.*not a class label"):
        load_tfds("tfds_tiny_other", prepared_dir, image_key="picture", label_key="embedding")


def test_variable_image_size_is_rejected(prepared_dir):
    with pytest.raises(ConfigError, match=r"variable size.*\(None, None, 1\)"):
        load_tfds("tfds_tiny_var_size", prepared_dir, splits=("train",))


def test_missing_split(prepared_dir):
    with pytest.raises(ConfigError, match=r"split 'validation'.*\['test', 'train'\]"):
        load_tfds("tfds_tiny_digits", prepared_dir, splits=("train", "validation"))


def test_version_not_prepared(prepared_dir):
    with pytest.raises(ConfigError, match=r"'tfds_tiny_digits:2\.0\.0'.*\{1\.0\.0\}"):
        load_tfds("tfds_tiny_digits:2.0.0", prepared_dir)
    with pytest.raises(ConfigError, match=r"mnist cannot be loaded at version 9\.9\.9, only: "):
        load_tfds("mnist:9.9.9", prepared_dir)


def test_prepared_without_random_access(prepared_dir, tmp_path):
    # TFRecord files cannot be written without TensorFlow; relabelling the
    # ArrayRecord copy as TFRecord shows TFDS the same dataset_info.json.
    version_dir = tmp_path / "tfds_tiny_digits" / "1.0.0"
    shutil.copytree(os.path.join(prepared_dir, "tfds_tiny_digits", "1.0.0"), version_dir)
    info_path = version_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError) as raised:
        load_tfds("tfds_tiny_digits", str(tmp_path))
    message = str(raised.value)
    assert "prepared as tfrecord, which has no random access" in message
    assert (f"tfds build tfds_tiny_digits --data_dir={tmp_path} --file_format=array_record "
            f"--overwrite") in message
    assert f"tfds convert_format --dataset_version_dir={version_dir}" in message


def test_not_prepared(tmp_path):
    with pytest.raises(DataError) as raised:
        load_tfds("mnist", str(tmp_path))
    message = str(raised.value)
    assert f"'mnist/3.0.1' is not prepared in '{tmp_path}'" in message
    assert "never downloads or builds" in message
    assert (f"`pip install tensorflow tensorflow-datasets && tfds build mnist "
            f"--data_dir={tmp_path} --file_format=array_record`") in message
    assert not os.listdir(tmp_path)  # Nothing was downloaded or written.
    missing = tmp_path / "absent"
    with pytest.raises(DataError, match="that directory does not exist"):
        load_tfds("mnist:3.0.1", str(missing))
    assert not missing.exists()


def test_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown TFDS dataset 'mnits'.*Did you mean 'mnist'"):
        load_tfds("mnits", str(tmp_path))
    with pytest.raises(ConfigError, match=r"'cifar10' has no configs: name it without /foo"):
        load_tfds("cifar10/foo", str(tmp_path))
    for bad in ("", "huggingface:mnist", "mnist:3.0", "mnist train"):
        with pytest.raises(ConfigError, match="is not a TFDS dataset name"):
            load_tfds(bad, str(tmp_path))


def test_splits_must_be_a_sequence(tmp_path):
    for bad in ("train", ()):
        with pytest.raises(ConfigError, match="splits must be a non-empty sequence"):
            load_tfds("mnist", str(tmp_path), splits=bad)


@pytest.mark.usefixtures("mock_getitems_fixed")
@pytest.mark.parametrize("name", ["mnist", "mnist:3.0.1"])
def test_mock_mnist(tmp_path, monkeypatch, name):
    monkeypatch.setattr(tfds_source, "_CHUNK", 4)
    with tfds.testing.mock_data(num_examples=11, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = load_tfds(name, str(tmp_path))
    assert list(splits) == ["train", "test"]
    for data in splits.values():
        assert data.x.shape == (11, 28, 28, 1) and data.x.dtype == np.uint8
        assert data.y["label"].shape == (11,) and data.y["label"].dtype == np.int32
        assert data.y["label"].min() >= 0 and data.y["label"].max() < 10
        assert len(np.unique(data.x.reshape(11, -1), axis=0)) == 11  # Random, distinct images.


def test_not_installed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` now fails.
    with pytest.raises(ConfigError) as raised:
        load_tfds("mnist", str(tmp_path))
    assert "needs the optional package tensorflow-datasets" in str(raised.value)
    assert "pip install -e '.[tfds]'" in str(raised.value)


def test_array_record_not_installed(monkeypatch, tmp_path):
    find_spec = tfds_source.importlib.util.find_spec
    monkeypatch.setattr(tfds_source.importlib.util, "find_spec",
                        lambda name, *a: None if name == "array_record" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"array-record.*pip install -e '\.\[tfds\]'"):
        load_tfds("mnist", str(tmp_path))


@pytest.mark.parametrize("value, expected", [
    ("tfds:mnist", "mnist"),
    ("tfds:mnist:3.0.1", "mnist:3.0.1"),
    ("tfds:mnist:3.*.*", "mnist:3.*.*"),
    ("tfds:cifar10_corrupted/fog_1", "cifar10_corrupted/fog_1"),
    ("tfds:imagenet_resized/32x32:0.1.0", "imagenet_resized/32x32:0.1.0"),
])
def test_parse_tfds_name(value, expected):
    assert parse_tfds_name(value) == expected


@pytest.mark.parametrize("value", [
    "mnist", "omniglot", "tfds:", "tfds:mnist:", "tfds:mnist:3", "tfds:mnist:v3.0.1",
    "tfds:huggingface:mnist", "tfds:3mnist", "tfds:mnist/", "TFDS:mnist", None])
def test_parse_tfds_name_rejects(value):
    with pytest.raises(ConfigError, match="tfds:"):
        parse_tfds_name(value)
