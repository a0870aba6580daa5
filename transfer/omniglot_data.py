"""Omniglot as the source and target tasks of transfer runs, one class per character.

Four datasets, all read from the two official zips by
`core.datasets.omniglot.load_omniglot_characters` (the MAML reader's decoding
and cache: 28x28, strokes bright on a zero background):

    --dataset             characters                               role
    omniglot_background   the 964 of images_background.zip         same-domain source
    omniglot_evaluation   the 659 of images_evaluation.zip         its few-shot target
    omniglot_maml_train   the MAML split's 1100 training           plain source next to
                          characters (both zips pooled), each      a MAML run
                          in 4 rotations: 4400 classes
    omniglot_maml_test    the MAML split's 423 test characters,    target unseen by both
                          unrotated                                sources

`omniglot_maml_train` holds the classes exactly as MAML meta-trains on them
(each rotation by 0, 90, 180, 270 degrees its own class), so the plainly
pretrained source and the meta-learned one see the same images;
`omniglot_maml_test` holds the unrotated test characters, which neither
source has seen in any rotation (the MAML split, `--omniglot_split`, must
be the MAML run's).

The images are resized as `--omniglot_resize` says (`core.datasets.omniglot`:
grey-level Lanczos, or binary nearest-neighbour as the reference MAML code);
a source run's resize and Conv4 batch norm must be this run's
(`check_source_network`), so a MAML run of the `reference` preset is
fine-tuned on the images and the network it was trained with.

`--num_classes_target=N` keeps a seeded subset of N characters
(`default_rng([data_seed, 3])`; e.g. 20 of the 423 for a 20-way target; 0
keeps all), so each data seed is another N-way task. Each class's 20
drawings are split by one seeded permutation per character
(`default_rng([data_seed, 2])`; the 4 rotations of a character share it):
the last `--test_per_class` drawings are the test set, the
`--val_per_class` before them validation, and training takes the first
`--train_per_class` of the rest (0: all of them). Test and validation are
thus fixed for a seed whatever K is, and the K = 1 set is inside the K = 5
set, inside the K = 10 set. Each split's examples are stored in a seeded
shuffled order, so every evaluation batch mixes classes as training batches
do (the Conv4 trunk normalises with batch statistics, `transfer.conv4`).
"""

import dataclasses

import numpy as np

from core import run_dir
from core.datasets import omniglot
from core.datasets.arrays import Arrays
from core.errors import ConfigError

DATASETS = ("omniglot_background", "omniglot_evaluation", "omniglot_maml_train",
            "omniglot_maml_test")
MAML_DATASETS = ("omniglot_maml_train", "omniglot_maml_test")
ROTATED = ("omniglot_maml_train",)
IMAGE_SIZE = 28
LABEL = "label"
_ZIP_OF = {"omniglot_background": omniglot.OMNIGLOT_ZIP_NAMES[0],
           "omniglot_evaluation": omniglot.OMNIGLOT_ZIP_NAMES[1]}
_MAML_SPLIT_OF = {"omniglot_maml_train": "train", "omniglot_maml_test": "test"}
_SALT_DRAWINGS, _SALT_CLASSES, _SALT_ORDER = 2, 3, 4


@dataclasses.dataclass(frozen=True)
class OmniglotOptions:
    """The Omniglot-only flags of a transfer run.

    Attributes:
      cache_dir: where the decoded zips are cached (shared with MAML runs).
      val_per_class: validation drawings per class.
      test_per_class: test drawings per class (at least 1).
      num_classes: characters kept by a seeded subset (0: all).
      maml_split: the MAML split's (train, val) character counts.
      resize: how drawings are resized (`core.datasets.omniglot.RESIZE_METHODS`).
    """

    cache_dir: str
    val_per_class: int = 2
    test_per_class: int = 5
    num_classes: int = 0
    maml_split: tuple[int, int] = omniglot.MAML_SPLIT_SIZES
    resize: str = "lanczos"


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotSplits:
    """What `load_splits` returns.

    Attributes:
      splits: {"train", "val", "test"} -> Arrays of uint8 [n, 28, 28, 1], labels 0..C-1.
      classes: per label, the class id in the dataset's full list (a character
        index, or 4 * character + rotation for `omniglot_maml_train`).
      class_names: per label, "<alphabet>/<character>" (with "/rot<degrees>"
        when rotated).
    """

    splits: dict[str, Arrays]
    classes: tuple[int, ...]
    class_names: tuple[str, ...]


def dataset_characters(dataset: str, characters: omniglot.OmniglotCharacters,
                       maml_split: tuple[int, int]) -> np.ndarray:
    """The sorted indices (into `characters`) of the characters of `dataset`."""
    if dataset in _ZIP_OF:
        return characters.of_zip(_ZIP_OF[dataset])
    if dataset in _MAML_SPLIT_OF:
        split = omniglot.maml_character_split(len(characters.names), tuple(maml_split))
        return np.sort(split[_MAML_SPLIT_OF[dataset]])
    raise ConfigError(f"unknown Omniglot dataset {dataset!r}; expected one of "
                      f"{', '.join(DATASETS)}")


def choose_characters(indices: np.ndarray, num_classes: int, seed: int,
                      dataset: str) -> np.ndarray:
    """A seeded subset of `num_classes` of `indices`, in their order (0: all of them).

    Raises:
      ConfigError: for fewer than 2 characters, or more than the dataset has.
    """
    if num_classes == 0:
        return indices
    if not 2 <= num_classes <= len(indices):
        raise ConfigError(f"--num_classes_target={num_classes} but --dataset={dataset} has "
                          f"{len(indices)} characters; give 2 to {len(indices)}, or 0 for all")
    pick = np.random.default_rng([seed, _SALT_CLASSES]).permutation(len(indices))
    return indices[np.sort(pick[:num_classes])]


def drawing_orders(num_characters: int, drawers: int, seed: int) -> np.ndarray:
    """One seeded permutation of the drawings per character: int [characters, drawers]."""
    rng = np.random.default_rng([seed, _SALT_DRAWINGS])
    return rng.permuted(np.tile(np.arange(drawers), (num_characters, 1)), axis=1)


def check_counts(drawers: int, train_per_class: int, val_per_class: int,
                 test_per_class: int) -> None:
    """Raises ConfigError unless test, validation and K training drawings fit in `drawers`."""
    if test_per_class < 1:
        raise ConfigError(f"--test_per_class must be >= 1 (held-out drawings per class), got "
                          f"{test_per_class}")
    if train_per_class < 0 or val_per_class < 0:
        raise ConfigError(f"--train_per_class and --val_per_class must be >= 0, got "
                          f"{train_per_class} and {val_per_class}")
    needed = max(train_per_class, 1) + val_per_class + test_per_class
    if needed > drawers:
        raise ConfigError(f"--train_per_class={train_per_class} + --val_per_class="
                          f"{val_per_class} + --test_per_class={test_per_class} drawings per "
                          f"class (at least one to train) exceed the {drawers} each Omniglot "
                          f"character has")


def _rotated(images: np.ndarray, names: list[str], orders: np.ndarray):
    """(images, names, orders) with each character in its 4 rotations, rotations adjacent."""
    rotated = np.stack([np.rot90(images, k=degrees // 90, axes=(2, 3))
                        for degrees in omniglot.ROTATIONS], axis=1)
    count, rotations = rotated.shape[:2]
    images = rotated.reshape(count * rotations, *rotated.shape[2:])
    names = [f"{name}/rot{degrees}" for name in names for degrees in omniglot.ROTATIONS]
    return images, names, np.repeat(orders, rotations, axis=0)


def _split_arrays(images: np.ndarray, drawings: np.ndarray, seed: int, salt: int) -> Arrays:
    """Arrays of images[c, drawings[c, j]] for every class c and j, in a seeded order."""
    classes = np.repeat(np.arange(len(drawings)), drawings.shape[1])
    chosen = drawings.reshape(-1)
    order = np.random.default_rng([seed, _SALT_ORDER, salt]).permutation(len(chosen))
    classes, chosen = classes[order], chosen[order]
    return Arrays(np.ascontiguousarray(images[classes, chosen][..., None]),
                  {LABEL: classes.astype(np.int32)})


def load_splits(dataset: str, data_dir: str | None, options: OmniglotOptions,
                train_per_class: int, seed: int) -> OmniglotSplits:
    """The train, validation and test splits of an Omniglot dataset (module docstring).

    Args:
      dataset: one of `DATASETS`.
      data_dir: the folder holding images_background.zip and images_evaluation.zip.
      options: the Omniglot flags.
      train_per_class: K training drawings per class (0: all left after test and validation).
      seed: the data seed (class subset, drawing split, example order).

    Raises:
      ConfigError: for an unknown dataset or counts that do not fit.
      DataError: for a missing or corrupt zip.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown Omniglot dataset {dataset!r}; expected one of "
                          f"{', '.join(DATASETS)}")
    if not data_dir:
        raise ConfigError(f"--dataset={dataset} needs --data_dir=<the folder holding "
                          f"images_background.zip and images_evaluation.zip>")
    characters = omniglot.load_omniglot_characters(data_dir, options.cache_dir, IMAGE_SIZE,
                                                  resize=options.resize)
    drawers = characters.images.shape[1]
    check_counts(drawers, train_per_class, options.val_per_class, options.test_per_class)
    kept = choose_characters(dataset_characters(dataset, characters, options.maml_split),
                             options.num_classes, seed, dataset)
    images = characters.images[kept]
    names = [characters.names[i] for i in kept]
    orders = drawing_orders(len(kept), drawers, seed)
    classes = [int(i) for i in kept]
    if dataset in ROTATED:
        images, names, orders = _rotated(images, names, orders)
        rotations = len(omniglot.ROTATIONS)
        classes = [rotations * c + r for c in classes for r in range(rotations)]
    test_start = drawers - options.test_per_class
    val_start = test_start - options.val_per_class
    pool = orders[:, :val_start]
    parts = {"train": pool[:, :train_per_class] if train_per_class else pool,
             "val": orders[:, val_start:test_start], "test": orders[:, test_start:]}
    splits = {name: _split_arrays(images, drawings, seed, salt)
              for salt, (name, drawings) in enumerate(parts.items())}
    return OmniglotSplits(splits=splits, classes=tuple(classes), class_names=tuple(names))


def check_source_split(source_workdir: str, maml_split: tuple[int, int]) -> None:
    """Refuses a source run that drew the MAML split with other character counts.

    The MAML-split datasets promise characters the source never saw; that
    holds only if the source (a MAML Omniglot run, or a transfer run on
    `omniglot_maml_train`) used the same `--omniglot_split`. A source whose
    config.json records none (an .npz, another dataset) is not checked.

    Raises:
      ConfigError: naming both splits.
    """
    stored = run_dir.read_run_config(source_workdir) or {}
    if stored.get("dataset") not in ("omniglot",) + MAML_DATASETS:
        return
    theirs = stored.get("omniglot_split")
    if theirs is not None and tuple(theirs) != tuple(maml_split):
        raise ConfigError(f"the source {source_workdir} drew the Omniglot MAML split with "
                          f"--omniglot_split={','.join(map(str, theirs))} but this run uses "
                          f"{','.join(map(str, maml_split))}: its test characters would not be "
                          f"unseen; pass the source's --omniglot_split")


def check_source_network(source_workdir: str, settings: dict[str, object],
                         recorded_by_none: dict[str, object]) -> None:
    """Refuses a source run whose Conv4 batch norm or image resize is not this run's.

    The weights of a Conv4 source are only the source's network on the
    source's images: without a scale they do not load into a net with one,
    and with another ε or resize they compute other features. The source is a
    MAML Omniglot run (its resolved switches are in config.json's `fidelity`)
    or a transfer run on an Omniglot dataset (top-level keys of the same
    names); a source that records none of them (an .npz, another dataset, a
    run older than the switches) used `recorded_by_none`.

    Args:
      source_workdir: the source run's directory.
      settings: this run's value of each compared key ('bn_scale',
        'bn_epsilon', 'omniglot_resize').
      recorded_by_none: each key's value in a run that does not record it.

    Raises:
      ConfigError: naming each differing setting and the flags that match the source.
    """
    stored = run_dir.read_run_config(source_workdir) or {}
    if stored.get("dataset") not in ("omniglot",) + DATASETS:
        return
    recorded = stored.get("fidelity") or stored
    theirs = {key: recorded_by_none[key] if recorded.get(key) is None else recorded[key]
              for key in settings}
    differing = [key for key in settings if theirs[key] != settings[key]]
    if differing:
        flags = " ".join(_flag(key, theirs[key]) for key in differing)
        mine = " ".join(_flag(key, settings[key]) for key in differing)
        raise ConfigError(f"the source {source_workdir} was trained with {flags} but this run "
                          f"has {mine}: its weights compute other features here; pass {flags}")


def _flag(name: str, value: object) -> str:
    """The command-line spelling of one setting."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value}"
