"""Tests for the stateless episode sampler."""


import numpy as np
import pytest

from core.datasets.class_images import ClassImages
from core.datasets.episodes import Episode
from core.datasets.episodes import EpisodeSampler
from core.datasets.episodes import EpisodeSpec
from core.datasets.episodes import fixed_episodes
from core.errors import ConfigError

NUM_CLASSES = 12
IMAGES_PER_CLASS = 9
SPEC = EpisodeSpec(ways=5, shots=2, query=3)


def _labelled_images(num_classes=NUM_CLASSES, per_class=IMAGES_PER_CLASS):
    """Images whose pixels (0, 0) and (0, 1) hold their class and index."""
    images = np.zeros((num_classes, per_class, 2, 2, 1), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(num_classes)[:, None]
    images[:, :, 0, 1, 0] = np.arange(per_class)[None, :]
    images[:, :, 1, 1, 0] = 255
    return ClassImages(images=images,
                       class_names=tuple(f'c{i}' for i in range(num_classes)))


def _identities(x):
    """(class, image index) pairs of images from `_labelled_images`."""
    pixels = np.rint(x * 255).astype(int)
    return pixels[..., 0, 0, 0], pixels[..., 0, 1, 0]


def _check_episode(episode, spec):
    ways, shots, query = spec.ways, spec.shots, spec.query
    assert episode.support_x.shape == (ways * shots, 2, 2, 1)
    assert episode.query_x.shape == (ways * query, 2, 2, 1)
    assert episode.support_x.dtype == episode.query_x.dtype == np.float32
    assert episode.support_y.dtype == episode.query_y.dtype == np.int32
    assert episode.support_x.max() == 1.0 and episode.support_x.min() == 0.0
    np.testing.assert_array_equal(episode.support_y,
                                  np.repeat(np.arange(ways), shots))
    np.testing.assert_array_equal(episode.query_y,
                                  np.repeat(np.arange(ways), query))
    support_class, support_index = _identities(episode.support_x)
    query_class, query_index = _identities(episode.query_x)
    class_of_label = support_class[::shots]
    assert len(set(class_of_label)) == ways
    np.testing.assert_array_equal(support_class, class_of_label[
        episode.support_y])
    np.testing.assert_array_equal(query_class, class_of_label[episode.query_y])
    for label in range(ways):
        picked = np.concatenate([support_index[episode.support_y == label],
                                 query_index[episode.query_y == label]])
        assert len(set(picked)) == shots + query  # Disjoint, no repeats.
    return class_of_label


def test_episode_invariants_and_label_permutation():
    sampler = EpisodeSampler(_labelled_images(), SPEC, seed=3)
    class_orders = [_check_episode(sampler.episode(i), SPEC)
                    for i in range(200)]
    sorted_orders = sum(np.all(np.diff(order) > 0) for order in class_orders)
    assert sorted_orders < 10  # Label 0 is not simply the lowest class.
    label0_classes = {order[0] for order in class_orders}
    assert len(label0_classes) == NUM_CLASSES
    assert len({tuple(order) for order in class_orders}) > 150


def test_same_seed_and_index_reproduce_exactly():
    data = _labelled_images()
    first = EpisodeSampler(data, SPEC, seed=7).episode(41)
    again = EpisodeSampler(data, SPEC, seed=7).episode(41)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('other_seed, other_index', [(7, 42), (8, 41)])
def test_other_index_or_seed_differs(other_seed, other_index):
    data = _labelled_images()
    first = EpisodeSampler(data, SPEC, seed=7).episode(41)
    other = EpisodeSampler(data, SPEC, seed=other_seed).episode(other_index)
    assert not np.array_equal(first.support_x, other.support_x)


def test_batch_task_j_is_episode_i_times_b_plus_j():
    sampler = EpisodeSampler(_labelled_images(), SPEC, seed=5)
    batch = sampler.batch(3, 4)
    assert batch.support_x.shape == (4, 10, 2, 2, 1)
    assert batch.query_y.shape == (4, 15)
    for j in range(4):
        single = sampler.episode(3 * 4 + j)
        for batched, unbatched in zip(batch, single):
            np.testing.assert_array_equal(batched[j], unbatched)
    np.testing.assert_array_equal(sampler.batch(6, 2).query_x,
                                  batch.query_x[:2])


@pytest.mark.parametrize('start, stop', [(0, 2), (2, 4), (1, 3), (0, 4)])
def test_batch_rows_are_that_slice_of_the_batch(start, stop):
    sampler = EpisodeSampler(_labelled_images(), SPEC, seed=5)
    rows = sampler.batch_rows(3, 4, start, stop)
    for part, whole in zip(rows, sampler.batch(3, 4)):
        np.testing.assert_array_equal(part, whole[start:stop])


@pytest.mark.parametrize('start, stop', [(2, 2), (3, 5), (-1, 1)])
def test_batch_rows_outside_the_meta_batch_are_refused(start, stop):
    sampler = EpisodeSampler(_labelled_images(), SPEC, seed=5)
    with pytest.raises(ConfigError, match='not a non-empty range within a meta-batch of 4'):
        sampler.batch_rows(0, 4, start, stop)


def test_fixed_episodes_are_the_first_episodes():
    sampler = EpisodeSampler(_labelled_images(), SPEC, seed=0)
    episodes = list(fixed_episodes(sampler, 3))
    assert len(episodes) == 3 and isinstance(episodes[0], Episode)
    np.testing.assert_array_equal(episodes[2].query_x,
                                  sampler.episode(2).query_x)


def test_too_many_ways():
    with pytest.raises(ConfigError, match='13-way.*only 12'):
        EpisodeSampler(_labelled_images(), EpisodeSpec(13, 1, 1), seed=0)


def test_too_many_shots_plus_query():
    with pytest.raises(ConfigError, match='shots=5 \\+ query=5.*only 9'):
        EpisodeSampler(_labelled_images(), EpisodeSpec(5, 5, 5), seed=0)


def test_exactly_all_classes_and_images_is_allowed():
    spec = EpisodeSpec(NUM_CLASSES, 4, IMAGES_PER_CLASS - 4)
    _check_episode(EpisodeSampler(_labelled_images(), spec, 0).episode(0), spec)


@pytest.mark.parametrize('ways, shots, query', [
    (0, 1, 1), (5, 0, 1), (5, 1, 0), (5.0, 1, 1), (True, 1, 1)])
def test_invalid_spec(ways, shots, query):
    with pytest.raises(ConfigError, match='EpisodeSpec'):
        EpisodeSpec(ways, shots, query)


def test_invalid_seed_index_and_batch_size():
    data = _labelled_images()
    with pytest.raises(ConfigError, match='seed'):
        EpisodeSampler(data, SPEC, seed=-1)
    sampler = EpisodeSampler(data, SPEC, seed=0)
    with pytest.raises(ConfigError, match='index'):
        sampler.episode(-1)
    with pytest.raises(ConfigError, match='batch_size'):
        sampler.batch(0, 0)
