"""Stateless N-way K-shot episode sampling.

Episode number `i` of the stream with seed `s` is drawn from
`np.random.default_rng([s, i])`, so an episode depends only on (data, spec,
seed, index): there is no sampler state to checkpoint, a resumed run sees
exactly the episodes it would have seen, and meta-batch `i` of size `B` holds
episodes `i*B .. i*B+B-1` whatever the number of devices that run it.

Each episode picks `ways` distinct classes in random order; the k-th picked
class gets label k, so labels are a fresh random permutation per episode. From
each picked class, `shots + query` distinct images are drawn without
replacement; the first `shots` form the support set, the rest the query set.
Both sets are class-major: [label 0 images, label 1 images, ...].

With `group_size=G > 1` the classes come in groups of G variants of one base
class (Omniglot: class 4k + r is character k rotated by r * 90 degrees), and
an episode picks `ways` distinct groups in random order, then one variant of
each uniformly at random: two variants of one base class never share an
episode, as the reference MAML code samples Omniglot (distinct characters,
then a rotation per class and episode). `group_size=1` (the default) treats
every class as independent.

Evaluation uses a fixed set of episodes, identical across runs by
construction, e.g. `fixed_episodes(EpisodeSampler(test, spec, seed=eval_seed),
600)`.
"""

import dataclasses
from typing import Iterator, NamedTuple

import numpy as np

from core.datasets.class_images import ClassImages
from core.errors import ConfigError

__all__ = ['EpisodeSpec', 'Episode', 'EpisodeSampler', 'fixed_episodes']


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Shape of one few-shot task.

    Attributes:
        ways: number of classes per episode (N).
        shots: support images per class (K).
        query: query images per class.
    """

    ways: int
    shots: int
    query: int

    def __post_init__(self):
        for name, minimum in (('ways', 1), ('shots', 1), ('query', 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ConfigError(
                    f'EpisodeSpec.{name} must be an integer >= {minimum}; got '
                    f'{value!r}.')


class Episode(NamedTuple):
    """One task, or a batch of tasks stacked on a leading axis B.

    Attributes:
        support_x: float32 [(B,) ways*shots, H, W, C] in [0, 1].
        support_y: int32 [(B,) ways*shots] labels 0..ways-1.
        query_x: float32 [(B,) ways*query, H, W, C] in [0, 1].
        query_y: int32 [(B,) ways*query] labels 0..ways-1.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


class EpisodeSampler:
    """Draws reproducible episodes from one dataset split by index."""

    def __init__(self, data: ClassImages, spec: EpisodeSpec, seed: int,
                 group_size: int = 1):
        """Creates a sampler.

        Args:
            data: the split to sample from.
            spec: episode shape.
            seed: stream seed, a non-negative integer. Use different seeds for
                streams that must differ (e.g. training and evaluation).
            group_size: classes per group of variants of one base class (see
                the module docstring); 1: every class is independent.

        Raises:
            ConfigError: the data has fewer classes (groups) than `spec.ways`
                or fewer images per class than `spec.shots + spec.query`, the
                classes do not split into groups of `group_size`, or the seed
                is not a non-negative integer.
        """
        if not _is_int(seed) or seed < 0:
            raise ConfigError(
                f'Episode seed must be a non-negative integer; got {seed!r}.')
        if not _is_int(group_size) or group_size < 1:
            raise ConfigError(
                f'group_size must be a positive integer; got {group_size!r}.')
        if data.num_classes % group_size:
            raise ConfigError(
                f'{data.num_classes} classes do not split into groups of '
                f'{group_size} variants.')
        groups = data.num_classes // group_size
        if spec.ways > groups:
            what = ('classes' if group_size == 1 else
                    f'base classes (groups of {group_size} variants)')
            raise ConfigError(
                f'{spec.ways}-way episodes need {spec.ways} {what}, but the '
                f'data has only {groups}. Use ways <= {groups}.')
        if spec.shots + spec.query > data.images_per_class:
            raise ConfigError(
                f'shots={spec.shots} + query={spec.query} = '
                f'{spec.shots + spec.query} images per class are needed, but '
                f'the data has only {data.images_per_class} per class. Use '
                f'shots + query <= {data.images_per_class}.')
        self._images = data.images
        self._spec = spec
        self._seed = int(seed)
        self._group_size = int(group_size)
        self._support_labels = np.repeat(
            np.arange(spec.ways, dtype=np.int32), spec.shots)
        self._query_labels = np.repeat(
            np.arange(spec.ways, dtype=np.int32), spec.query)

    @property
    def spec(self) -> EpisodeSpec:
        """The episode shape."""
        return self._spec

    @property
    def seed(self) -> int:
        """The stream seed."""
        return self._seed

    def episode(self, index: int) -> Episode:
        """Episode number `index` of this stream.

        Args:
            index: non-negative episode number.

        Returns:
            One task without a batch axis.
        """
        batch = self._episodes(self._check_index(index), 1)
        return Episode(*(array[0] for array in batch))

    def batch(self, index: int, batch_size: int) -> Episode:
        """Meta-batch number `index`: episodes index*B .. index*B + B - 1.

        Args:
            index: non-negative meta-batch number.
            batch_size: tasks per meta-batch (B), at least 1.

        Returns:
            `batch_size` tasks stacked on a leading axis.
        """
        return self.batch_rows(index, batch_size, 0, batch_size)

    def batch_rows(self, index: int, batch_size: int, start: int, stop: int) -> Episode:
        """Tasks `start .. stop - 1` of meta-batch `index`, the same as `batch(...)[start:stop]`.

        A process of a multi-host run builds only its own tasks of a meta-batch
        with this (`core.mesh.put_rows`); each task has its own seed, so the
        tasks do not depend on who builds them.
        """
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(
                f'batch_size must be a positive integer; got {batch_size!r}.')
        if not (_is_int(start) and _is_int(stop) and 0 <= start < stop <= batch_size):
            raise ConfigError(
                f'Task rows {start!r}..{stop!r} are not a non-empty range within a '
                f'meta-batch of {batch_size}.')
        return self._episodes(self._check_index(index) * batch_size + start, stop - start)

    def _check_index(self, index: int) -> int:
        if not _is_int(index) or index < 0:
            raise ConfigError(
                f'Episode index must be a non-negative integer; got {index!r}.')
        return int(index)

    def _episodes(self, first: int, count: int) -> Episode:
        """Episodes first .. first + count - 1 stacked on a leading axis."""
        spec = self._spec
        num_classes, per_class = self._images.shape[:2]
        images_needed = spec.shots + spec.query
        classes = np.empty((count, spec.ways), np.int64)
        picks = np.empty((count, spec.ways, images_needed), np.int64)
        for task in range(count):
            rng = np.random.default_rng([self._seed, first + task])
            # Random order: the k-th chosen class gets label k.
            if self._group_size == 1:
                classes[task] = rng.choice(num_classes, spec.ways,
                                           replace=False)
            else:
                groups = rng.choice(num_classes // self._group_size,
                                    spec.ways, replace=False)
                variants = rng.integers(self._group_size, size=spec.ways)
                classes[task] = groups * self._group_size + variants
            # Distinct images within each class: ranks of random keys.
            picks[task] = np.argsort(rng.random((spec.ways, per_class)),
                                     axis=1)[:, :images_needed]
        class_index = classes[:, :, None]
        # Gather uint8 straight into [count, ways, n, H, W, C] layout, then
        # convert once: no intermediate float copies.
        support = self._images[class_index, picks[:, :, :spec.shots]]
        query = self._images[class_index, picks[:, :, spec.shots:]]
        image_shape = support.shape[3:]
        support_x = np.divide(support, np.float32(255), dtype=np.float32)
        query_x = np.divide(query, np.float32(255), dtype=np.float32)
        support_x = support_x.reshape(
            (count, spec.ways * spec.shots) + image_shape)
        query_x = query_x.reshape((count, spec.ways * spec.query) + image_shape)
        support_y = np.broadcast_to(self._support_labels,
                                    (count,) + self._support_labels.shape)
        query_y = np.broadcast_to(self._query_labels,
                                  (count,) + self._query_labels.shape)
        return Episode(support_x=support_x, support_y=support_y.copy(),
                       query_x=query_x, query_y=query_y.copy())


def fixed_episodes(sampler: EpisodeSampler, count: int) -> Iterator[Episode]:
    """Yields episodes 0 .. count - 1 of a sampler, e.g. for evaluation.

    With a fixed sampler seed these are the same episodes in every run.

    Args:
        sampler: the stream to draw from.
        count: number of episodes.

    Yields:
        One unbatched Episode at a time (so 600 large episodes need not fit in
        memory together).
    """
    for index in range(count):
        yield sampler.episode(index)
