"""The supervised data sources every family reads, selected by one `--dataset` value.

One convention for all families: `--dataset` names the source and
`--data_dir` is the folder that holds that one dataset's official files (it
is only read). A benchmark that needs a second dataset (a transfer source,
say) names it with a second pair of flags of the same kind.

    mnist            the official MNIST IDX files (raw or .gz)
    fashion_mnist    the official Fashion-MNIST IDX files
    tfds:<name>      an image-classification dataset already prepared with
                     TensorFlow Datasets in --data_dir (needs the `tfds` extra)

Every source gives {"train": Arrays, "test": Arrays}; the validation split is
carved from "train" by the caller (`arrays.split_validation`), never from test.
"""

from core.datasets.arrays import Arrays
from core.errors import ConfigError

IDX_DATASETS = ("mnist", "fashion_mnist")
DATASET_CHOICES_HELP = "mnist, fashion_mnist or tfds:<name>[:<version>]"


def is_supported(dataset: str) -> bool:
    """Whether `dataset` names a supervised source (without reading anything)."""
    return dataset in IDX_DATASETS or dataset.startswith("tfds:")


def load_supervised(dataset: str, data_dir: str | None) -> dict[str, Arrays]:
    """The train and test splits of a supervised source.

    Args:
      dataset: see the module docstring.
      data_dir: the folder with the dataset's files; for TFDS, its data_dir
        (None: TFDS's default).

    Returns:
      {"train": Arrays, "test": Arrays}, images uint8 [n, H, W, C], targets
      {"label": int32 [n]}.

    Raises:
      ConfigError: for an unknown source or a missing --data_dir.
      DataError: for missing or corrupt files.
    """
    if dataset in IDX_DATASETS:
        if not data_dir:
            raise ConfigError(f"--data_dir is required for --dataset={dataset}: the folder that "
                              f"holds its four official IDX files")
        from core.datasets.mnist import load_mnist
        return load_mnist(data_dir, dataset)
    if dataset.startswith("tfds:"):
        from core.datasets.tfds_source import load_tfds, parse_tfds_name
        return load_tfds(parse_tfds_name(dataset), data_dir)
    raise ConfigError(f"unknown --dataset={dataset!r}; expected {DATASET_CHOICES_HELP}")
