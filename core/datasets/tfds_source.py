"""Supervised image classification from datasets prepared with TFDS.

Reads a dataset that TensorFlow Datasets has already prepared in a random
access format (ArrayRecord, or Parquet) through `DatasetBuilder.as_data_source`,
the machinery behind `tfds.data_source`. That needs the optional
`tensorflow-datasets` package (`pip install -e '.[tfds]'`) but not TensorFlow.

Nothing is ever downloaded or built here: preparing a dataset needs
TensorFlow and internet access, so it is done once, elsewhere, with
`tfds build <name> --data_dir=<dir> --file_format=array_record`, and the
prepared `<dir>` is then passed as `data_dir`. A dataset that is not prepared
there, or is prepared only as TFRecord (no random access), raises a DataError
that says exactly this.

A `--dataset=tfds:<name>` flag value names such a dataset; `parse_tfds_name`
turns it into the TFDS name (`tfds:mnist` -> `mnist`,
`tfds:mnist:3.0.1` -> `mnist:3.0.1`, `tfds:cifar10_corrupted/fog_1` ->
`cifar10_corrupted/fog_1`).
"""

import difflib
import importlib.util
import os
import re
import time

from absl import logging
import numpy as np

from core.datasets.arrays import Arrays
from core.errors import ConfigError
from core.errors import DataError

__all__ = ["load_tfds", "parse_tfds_name", "TFDS_PREFIX"]

TFDS_PREFIX = "tfds:"
# name[/config][:version], as TFDS spells them (see tensorflow_datasets/core/
# naming.py). Namespaced ("huggingface:...") and keyword ("name/a=1") forms are
# left out: they are fetched or built on the fly, which this bridge never does.
_NAME_RE = re.compile(r"^(?P<name>[a-zA-Z]\w*(/[\w+\-.]+)?)"
                      r"(:(?P<version>(\d+|\*)(\.(\d+|\*)){2}))?$")
_INSTALL_HINT = ("Install the optional TFDS support with `pip install -e '.[tfds]'` from the "
                 "repository root (TensorFlow itself is not needed to read prepared datasets).")
# Examples fetched per `__getitems__` call: one batched ArrayRecord read each.
_CHUNK = 1024


def parse_tfds_name(value: str) -> str:
    """The TFDS dataset name in a `tfds:<name>[/<config>][:<version>]` flag value.

    Args:
      value: e.g. "tfds:mnist", "tfds:mnist:3.0.1" or "tfds:cifar10_corrupted/fog_1".

    Returns:
      The part after "tfds:", as `load_tfds` and TFDS take it ("mnist:3.0.1").

    Raises:
      ConfigError: `value` does not start with "tfds:" or what follows is not a
        TFDS dataset name with an optional /config and :version (x.y.z).
    """
    if not isinstance(value, str) or not value.startswith(TFDS_PREFIX):
        raise ConfigError(f"A TFDS dataset is named as {TFDS_PREFIX}<name>[:<version>] "
                          f"(e.g. tfds:mnist or tfds:mnist:3.0.1); got {value!r}.")
    name = value[len(TFDS_PREFIX):]
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{value!r} is not a TFDS dataset name: expected {TFDS_PREFIX}<name>, optionally "
            f"followed by /<config> and :<version> with version x.y.z, e.g. tfds:mnist, "
            f"tfds:mnist:3.0.1 or tfds:cifar10_corrupted/fog_1.")
    return name


def load_tfds(
    name: str,
    data_dir: str | None,
    splits: tuple[str, ...] = ("train", "test"),
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, Arrays]:
    """Loads splits of a prepared TFDS image-classification dataset into memory.

    Args:
      name: TFDS name, "name[/config][:version]" (e.g. "mnist", "mnist:3.0.1";
        see `parse_tfds_name` for flag values). Without a version, the version
        of the installed TFDS code is read.
      data_dir: the TFDS data directory the dataset was prepared into (it holds
        `<name>/<version>/`); None for TFDS's default (`$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`). Only read, never written.
      splits: TFDS split names to load; TFDS slicing ("train[:90%]") works too.
      image_key: the image feature, a `tfds.features.Image` of fixed shape.
      label_key: the label feature, a `tfds.features.ClassLabel` or an integer
        scalar.

    Returns:
      split -> Arrays with x uint8 [n, H, W, C] and y {"label": int32 [n]}, in
      the order TFDS stored the examples.

    Raises:
      ConfigError: tensorflow-datasets is not installed; the name is malformed
        or unknown, or its version is not available; the features are not a
        fixed-size uint8 image and an integer label; a split does not exist.
      DataError: the dataset is not prepared in `data_dir`, is prepared only
        in a format without random access (TFRecord), or cannot be read.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{name!r} is not a TFDS dataset name: expected <name>, optionally followed by "
            f"/<config> and :<version> with version x.y.z (e.g. 'mnist' or 'mnist:3.0.1').")
    if isinstance(splits, str) or not splits:
        raise ConfigError(f"splits must be a non-empty sequence of split names such as "
                          f"('train', 'test'); got {splits!r}.")
    tfds = _import_tfds()
    builder = _builder(tfds, name, data_dir)
    image_shape, num_classes = _check_features(tfds, builder, name, image_key, label_key)
    sources = {split: _data_source(tfds, builder, name, data_dir, split) for split in splits}
    return {split: _read_split(builder, split, source, image_key, label_key, image_shape,
                               num_classes)
            for split, source in sources.items()}


def _import_tfds():
    """tensorflow_datasets, or a ConfigError that says how to install it."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ConfigError(
            f"Reading TFDS datasets needs the optional package tensorflow-datasets, which "
            f"cannot be imported ({e}). {_INSTALL_HINT}") from e
    if importlib.util.find_spec("array_record") is None:
        raise ConfigError(
            "Reading TFDS datasets needs the package array-record (TFDS's random access "
            f"reader), which is not installed. {_INSTALL_HINT}")
    return tfds


def _builder(tfds, name: str, data_dir: str | None):
    """The dataset's builder: from the installed TFDS code or the prepared files."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ConfigError(_not_found_message(tfds, name, data_dir)) from e
    except (AssertionError, ValueError) as e:
        # E.g. "Dataset mnist cannot be loaded at version 9.9.9, only: 3.0.1."
        # (an AssertionError) or an unknown config (a ValueError).
        raise ConfigError(
            f"TFDS dataset {name!r} cannot be opened from {_shown_dir(tfds, data_dir)!r}: "
            f"{_tfds_reason(e)}{_configs_hint(tfds, name)} (Versions other than the one "
            f"that tensorflow-datasets {tfds.__version__} builds can only be read if they "
            f"are prepared in data_dir.)") from e
    except OSError as e:
        raise DataError(f"Cannot read the TFDS data directory {_shown_dir(tfds, data_dir)!r} "
                        f"({e}).") from e


def _not_found_message(tfds, name: str, data_dir: str | None) -> str:
    base = _NAME_RE.match(name).group("name").split("/")[0]
    shown = _shown_dir(tfds, data_dir)
    try:
        on_disk = sorted(entry for entry in os.listdir(os.path.join(shown, base))
                         if not entry.startswith("."))
    except OSError:
        on_disk = []
    if on_disk:
        # Prepared (perhaps by code this TFDS does not have), but not as asked.
        return (f"TFDS dataset {name!r} was not found: {shown!r} holds {base!r} only as "
                f"{base}/{{{', '.join(on_disk)}}} (configs and/or versions). Ask for one of "
                f"those, or drop the version to read the newest.")
    known = tfds.list_builders(with_community_datasets=False)
    if base in known:
        return (f"TFDS dataset {name!r} was not found: tensorflow-datasets "
                f"{tfds.__version__} has {base!r}, but not this version or config, and it is "
                f"not prepared in {shown!r}.{_configs_hint(tfds, name)}")
    close = difflib.get_close_matches(base, known, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"Unknown TFDS dataset {name!r}: it is neither a dataset of tensorflow-datasets "
            f"{tfds.__version__} nor prepared in {shown!r}.{hint} See "
            f"https://www.tensorflow.org/datasets/catalog for the names.")


def _configs_hint(tfds, name: str) -> str:
    """" The configs of X are ..." when `name` asks for a config X lacks, else ""."""
    base, _, config = _NAME_RE.match(name).group("name").partition("/")
    if not config:
        return ""
    try:
        configs = [c.name for c in tfds.builder_cls(base).BUILDER_CONFIGS]
    except Exception:  # pylint: disable=broad-except
        return ""  # Not registered, or TFDS cannot tell: the hint is only a courtesy.
    if config in configs:
        return ""
    if not configs:
        return f" {base!r} has no configs: name it without /{config}."
    shown = ", ".join(configs[:20]) + (f" and {len(configs) - 20} more" if len(configs) > 20
                                       else "")
    return f" The configs of {base!r} are: {shown}."


def _tfds_reason(error: Exception) -> str:
    """TFDS's own explanation, without its 'Failed to construct dataset' preamble."""
    text = re.sub(r'^Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ', "",
                  str(error).strip())
    text = re.sub(r"\s*Here are \d+ BuilderConfigs whose name closely match:\s*$", "", text)
    text = " ".join(text.split())
    if len(text) > 600:
        text = text[:600] + "..."
    return text if text.endswith((".", "!", "?")) else text + "."


def _check_features(tfds, builder, name: str, image_key: str,
                    label_key: str) -> tuple[tuple[int, ...], int | None]:
    """(image shape, number of classes or None) of a supervised image dataset."""
    features_lib = tfds.features
    features = builder.info.features
    keys = sorted(features.keys()) if features is not None else []
    not_classification = ("load_tfds reads image classification datasets: a fixed-size "
                          "uint8 image feature and an integer class label.")
    for key, what, flag in ((image_key, "image", "image_key"), (label_key, "label", "label_key")):
        if key not in keys:
            raise ConfigError(
                f"TFDS dataset {name!r} has no {what} feature {key!r}; its features are "
                f"{keys}. {not_classification} Pass {flag}= to pick another feature, or "
                f"choose another dataset.")
    image = features[image_key]
    if not isinstance(image, features_lib.Image):
        raise ConfigError(f"Feature {image_key!r} of TFDS dataset {name!r} is {image!r}, not an "
                          f"image. {not_classification}")
    shape = tuple(image.shape)
    if len(shape) != 3 or any(side is None for side in shape):
        raise ConfigError(
            f"TFDS dataset {name!r} has images of variable size (feature {image_key!r} has "
            f"shape {shape}, None = varies). load_tfds stacks all images into one array, so "
            f"it needs a fixed size: use a fixed-size variant of the dataset (e.g. "
            f"imagenet_resized/32x32 instead of imagenet2012) or prepare a resized copy.")
    if np.dtype(image.np_dtype) != np.uint8:
        raise ConfigError(f"Feature {image_key!r} of TFDS dataset {name!r} has dtype "
                          f"{np.dtype(image.np_dtype)}; load_tfds reads uint8 images only.")
    label = features[label_key]
    if isinstance(label, features_lib.ClassLabel):
        return shape, int(label.num_classes) if label.num_classes is not None else None
    info = label.get_tensor_info() if hasattr(label, "get_tensor_info") else None
    if (isinstance(label, features_lib.Tensor) and info is not None and info.shape == ()
            and np.issubdtype(np.dtype(info.np_dtype), np.integer)):
        return shape, None
    raise ConfigError(f"Feature {label_key!r} of TFDS dataset {name!r} is {label!r}, not a "
                      f"class label (a ClassLabel or an integer scalar). {not_classification}")


def _data_source(tfds, builder, name: str, data_dir: str | None, split: str):
    """The random access source of one split, or an error saying why there is none.

    Opening is tried first and explained on failure (rather than checked
    up front) so that `tfds.testing.mock_data`, which fakes the sources of
    datasets that are not prepared, works too.
    """
    try:
        return builder.as_data_source(split=split)
    except (NotImplementedError, ValueError, KeyError, OSError) as e:
        cause = e
    root = _data_root(tfds, builder, data_dir)
    base_name = _NAME_RE.match(name).group("name")
    build = (f"pip install tensorflow tensorflow-datasets && tfds build {base_name} "
             f"--data_dir={root} --file_format=array_record")
    if not builder.is_prepared():
        missing = ("that directory does not exist" if not os.path.isdir(root)
                   else f"no {os.fspath(builder.data_path)!r}")
        raise DataError(
            f"TFDS dataset {builder.info.full_name!r} is not prepared in {root!r} "
            f"({missing}). This library only reads prepared datasets "
            f"and never downloads or builds them. Prepare it once, where TensorFlow and the "
            f"internet are available (a separate environment is fine): `{build}`, then pass "
            f"data_dir={root!r} (a prepared data_dir can be copied from another machine).") from cause
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    formats = builder.info.available_file_formats()
    if not formats & random_access:
        shown = ", ".join(sorted(f.value for f in formats)) or "no known format"
        raise DataError(
            f"TFDS dataset {builder.info.full_name!r} in {os.fspath(builder.data_path)!r} is "
            f"prepared as {shown}, which has no random access; load_tfds needs array_record "
            f"(or parquet). Rebuild it with `{build} --overwrite`, or add ArrayRecord files "
            f"next to the existing ones with `tfds convert_format --dataset_version_dir="
            f"{os.fspath(builder.data_path)} --out_file_format=array_record` (both need "
            f"TensorFlow).") from cause
    known = sorted(builder.info.splits.keys())
    raise ConfigError(
        f"Cannot open split {split!r} of TFDS dataset {builder.info.full_name!r}: "
        f"{_tfds_reason(cause)} Its splits are {known}; TFDS slices such as "
        f"'train[:90%]' also work.") from cause


def _read_split(builder, split: str, source, image_key: str, label_key: str,
                image_shape: tuple[int, ...], num_classes: int | None) -> Arrays:
    """All examples of one split, fetched and decoded `_CHUNK` at a time."""
    full_name = builder.info.full_name
    num = len(source)
    start_time = time.time()
    images = np.empty((num, *image_shape), dtype=np.uint8)
    labels = np.empty((num,), dtype=np.int64)
    for start in range(0, num, _CHUNK):
        stop = min(num, start + _CHUNK)
        try:
            examples = source.__getitems__(list(range(start, stop)))
            batch = np.stack([np.asarray(example[image_key]) for example in examples])
            batch_labels = np.asarray([example[label_key] for example in examples])
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise DataError(
                f"Reading examples {start}..{stop - 1} of split {split!r} of TFDS dataset "
                f"{full_name!r} from {os.fspath(builder.data_path)!r} failed ({e}). The files "
                f"may be truncated or corrupt: prepare the dataset again.") from e
        if batch.shape[1:] != image_shape or batch.dtype != np.uint8:
            raise DataError(
                f"Split {split!r} of TFDS dataset {full_name!r} holds {batch.dtype} images of "
                f"shape {batch.shape[1:]} among examples {start}..{stop - 1}, but its "
                f"features promise uint8 {image_shape}: the files do not match their "
                f"dataset_info.json; prepare the dataset again.")
        if batch_labels.shape != (stop - start,) or not np.issubdtype(batch_labels.dtype,
                                                                      np.integer):
            raise DataError(
                f"Split {split!r} of TFDS dataset {full_name!r} holds labels of dtype "
                f"{batch_labels.dtype} and shape {batch_labels.shape[1:]} per example; "
                f"expected integer scalars.")
        images[start:stop] = batch
        labels[start:stop] = batch_labels
    high = num_classes if num_classes is not None else np.iinfo(np.int32).max + 1
    if num and (labels.min() < 0 or labels.max() >= high):
        raise DataError(
            f"Split {split!r} of TFDS dataset {full_name!r} holds labels from {labels.min()} "
            f"to {labels.max()}, outside [0, {high}): the files are corrupt or not a "
            f"classification dataset.")
    logging.info("Read %d examples of TFDS %s split %r (images %s) in %.1f s.", num,
                 full_name, split, image_shape, time.time() - start_time)
    return Arrays(images, {"label": labels.astype(np.int32)})


def _data_root(tfds, builder, data_dir: str | None) -> str:
    """The data_dir the builder reads: `data_path` less `<name>[/<config>]/<version>`."""
    path = os.fspath(builder.data_path)
    suffix = os.sep + builder.info.full_name.replace("/", os.sep)
    if path.endswith(suffix):
        return path[:-len(suffix)]
    return _shown_dir(tfds, data_dir)


def _shown_dir(tfds, data_dir: str | None) -> str:
    return os.fspath(data_dir) if data_dir is not None else tfds.core.constants.DATA_DIR
