"""Tests for core.datasets.fake.random_image_episodes."""

import numpy as np
import pytest

from core.datasets.fake import random_image_episodes


def test_random_image_episodes_shapes_labels_and_seed():
    tasks = random_image_episodes(num_tasks=2, ways=3, support=3, query=6, image_shape=(8, 8, 1))
    assert tasks.support_x.shape == (2, 3, 8, 8, 1) and tasks.query_x.shape == (2, 6, 8, 8, 1)
    np.testing.assert_array_equal(tasks.query_y[1], [0, 1, 2, 0, 1, 2])
    assert tasks.support_y.dtype == np.int32 and tasks.support_x.dtype == np.float32
    again = random_image_episodes(num_tasks=2, ways=3, support=3, query=6, image_shape=(8, 8, 1))
    np.testing.assert_array_equal(tasks.query_x, again.query_x)
    other = random_image_episodes(2, 3, 3, 6, image_shape=(8, 8, 1), seed=1)
    assert not np.array_equal(tasks.query_x, other.query_x)


def test_random_image_episodes_rejects_unbalanced_sizes():
    with pytest.raises(ValueError, match="multiples of ways"):
        random_image_episodes(num_tasks=1, ways=3, support=4, query=6)
