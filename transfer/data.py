"""The target task of a transfer run: a class subset of MNIST or Fashion-MNIST, few labels.

(The Omniglot datasets, `--dataset=omniglot_*`, split each character's
drawings instead: `transfer.omniglot_data`; `load_target` dispatches to it.)

A transfer experiment asks how much a source network helps on a target task
with N labelled examples per class. The target is built from a supervised
source (`core.datasets.supervised`) in three seeded, exact steps:

1. keep only the examples of `classes` (in train and test) and relabel them
   0..n-1 in the order given, so "5,6,7,8,9" becomes labels 0..4 and a head
   of n outputs fits any subset;
2. carve the validation split from the kept training examples
   (`arrays.split_validation`, seeded by the data seed) before any
   subsampling, so runs with 10, 100 or all labels per class select their
   checkpoint on the same validation examples (a few-label run that selects
   on thousands of labelled validation examples is optimistic; `--val_size=0
   --eval_every=0` tests the last state instead);
3. keep `train_per_class` of the remaining training examples of each class:
   the first N of each class in one seeded permutation, so the examples are a
   pure function of the data seed, exactly N per class, and the N = 10 set is
   contained in the N = 100 set of the same seed.

The test split is the source's test split restricted to `classes`, untouched.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from core.datasets import arrays
from core.datasets.arrays import Arrays
from core.datasets.supervised import load_supervised
from core.errors import ConfigError, DataError
from transfer import omniglot_data

IDX_DATASETS = ("mnist", "fashion_mnist")
DATASETS = IDX_DATASETS + omniglot_data.DATASETS
NUM_CLASSES = 10
LABEL = "label"


@dataclasses.dataclass(frozen=True)
class TargetData:
    """The splits of a target task.

    Attributes:
      splits: {"train", "val", "test"} -> Arrays with targets {"label": 0..n-1}.
      classes: the original class ids, in the order of the new labels.
      input_shape: the shape of one input, e.g. (28, 28, 1).
      class_names: the classes' names where the dataset has them (Omniglot's
        "<alphabet>/<character>"), else empty.
    """

    splits: dict[str, Arrays]
    classes: tuple[int, ...]
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_classes(classes: Sequence[int], num_classes: int = NUM_CLASSES) -> tuple[int, ...]:
    """The class ids of `--classes` (all of them when empty), checked.

    Raises:
      ConfigError: for an id outside 0..num_classes-1, a repeated id, or a single class.
    """
    chosen = tuple(range(num_classes)) if not classes else tuple(int(c) for c in classes)
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes={','.join(map(str, chosen))}: ids {bad} are not classes "
                          f"of the dataset (0..{num_classes - 1})")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"--classes={','.join(map(str, chosen))} names a class twice")
    if len(chosen) < 2:
        raise ConfigError(f"--classes={','.join(map(str, chosen))}: a classification task "
                          f"needs at least two classes")
    return chosen


def select_classes(data: Arrays, classes: Sequence[int]) -> Arrays:
    """The examples of `classes`, in their original order, relabelled 0..n-1 in class order."""
    labels = data.y[LABEL]
    new_label = np.full(max(int(labels.max(initial=0)), max(classes)) + 1, -1, np.int32)
    new_label[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep = np.flatnonzero(np.isin(labels, classes))
    return Arrays(data.x[keep], {LABEL: new_label[labels[keep]]})


def per_class_subset(data: Arrays, per_class: int, seed: int) -> Arrays:
    """Exactly `per_class` examples of every label, chosen by a seeded permutation.

    The kept examples are the first `per_class` of each label in
    `default_rng([seed, 1]).permutation(len(data))` (a stream of its own, not
    the validation split's), returned in their original order; `per_class=0`
    keeps everything.

    Raises:
      DataError: when a label has fewer than `per_class` examples.
    """
    if per_class == 0:
        return data
    labels = data.y[LABEL]
    order = np.random.default_rng([seed, 1]).permutation(len(data))
    chosen = []
    for label in range(int(labels.max()) + 1):
        of_label = order[labels[order] == label]
        if len(of_label) < per_class:
            raise DataError(f"--train_per_class={per_class} but label {label} has only "
                            f"{len(of_label)} training examples left after the validation "
                            f"split; lower --train_per_class or --val_size")
        chosen.append(of_label[:per_class])
    return data.take(np.sort(np.concatenate(chosen)))


def load_target(dataset: str, data_dir: str | None, classes: Sequence[int],
                train_per_class: int, val_size: int, seed: int, *,
                omniglot: omniglot_data.OmniglotOptions | None = None) -> TargetData:
    """The train, validation and test splits of a target task (see the module docstring).

    Args:
      dataset: "mnist", "fashion_mnist", or one of `omniglot_data.DATASETS`.
      data_dir: the folder with the dataset's four IDX files.
      classes: original class ids to keep (empty: all ten).
      train_per_class: training examples per class (0: all that are left).
      val_size: validation examples carved from the kept training examples.
      seed: the data seed of the validation split and of the subsampling.
      omniglot: the Omniglot options (needed by the Omniglot datasets, which
        take neither `classes` nor `val_size`).

    Raises:
      ConfigError: for an unknown dataset, bad classes or a too large --val_size.
      DataError: for missing files, or a class with too few examples.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown --dataset={dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset in omniglot_data.DATASETS:
        return _omniglot_target(dataset, data_dir, classes, train_per_class, seed, omniglot)
    chosen = check_classes(classes)
    source = load_supervised(dataset, data_dir)
    train = select_classes(source["train"], chosen)
    test = select_classes(source["test"], chosen)
    train, val = arrays.split_validation(train, val_size, seed)
    train = per_class_subset(train, train_per_class, seed)
    return TargetData(splits={"train": train, "val": val, "test": test}, classes=chosen,
                      input_shape=tuple(train.x.shape[1:]))


def _omniglot_target(dataset: str, data_dir: str | None, classes: Sequence[int],
                     train_per_class: int, seed: int,
                     options: omniglot_data.OmniglotOptions | None) -> TargetData:
    """The TargetData of an Omniglot dataset (`transfer.omniglot_data.load_splits`)."""
    if classes:
        raise ConfigError(f"--classes names MNIST-style class ids; --dataset={dataset} takes "
                          f"a seeded subset of characters with --num_classes_target=N")
    if options is None:
        raise ConfigError(f"--dataset={dataset} needs its Omniglot options (cache_dir, ...)")
    loaded = omniglot_data.load_splits(dataset, data_dir, options, train_per_class, seed)
    return TargetData(splits=loaded.splits, classes=loaded.classes,
                      input_shape=tuple(loaded.splits["train"].x.shape[1:]),
                      class_names=loaded.class_names)
