"""Tests for the batches that hold the same number of examples of every group."""

import jax
import numpy as np
import pytest

from core import mesh as mesh_lib
from core.datasets.arrays import Arrays
from core.datasets.grouped import grouped_batch_fn
from core.errors import ConfigError

# Groups 0, 3 and 7 with 5, 3 and 4 examples, interleaved as task-indexed data are.
GROUPS = np.array([3, 0, 7, 0, 3, 7, 0, 7, 0, 3, 7, 0])


@pytest.fixture(scope="module")
def mesh():
    return mesh_lib.make_mesh(jax.devices()[:1])


def _data():
    """Example i has id i and belongs to GROUPS[i]."""
    n = len(GROUPS)
    return Arrays(np.arange(n, dtype=np.float32)[:, None],
                  {"id": np.arange(n, dtype=np.int32), "task": GROUPS.astype(np.int32)})


def _ids(batch):
    return np.asarray(batch["y"]["id"])


def test_every_batch_holds_per_group_examples_of_every_group_in_group_order(mesh):
    batch_fn = grouped_batch_fn(_data(), GROUPS, 2, seed=0, mesh=mesh)
    assert batch_fn.batch_size == 6
    for step in range(7):
        tasks = np.asarray(batch_fn(step)["y"]["task"])
        np.testing.assert_array_equal(tasks, [0, 0, 3, 3, 7, 7])


def test_each_group_is_read_once_per_epoch_of_its_own_size(mesh):
    batch_fn = grouped_batch_fn(_data(), GROUPS, 1, seed=1, mesh=mesh)
    ids = np.stack([_ids(batch_fn(s)) for s in range(12)])  # [step, group]
    for column, group in enumerate((0, 3, 7)):
        size = int(np.sum(GROUPS == group))
        for epoch in range(12 // size):
            seen = ids[epoch * size:(epoch + 1) * size, column]
            assert sorted(seen) == sorted(np.flatnonzero(GROUPS == group))


def test_epochs_reshuffle_and_a_batch_may_straddle_two_epochs(mesh):
    batch_fn = grouped_batch_fn(_data(), GROUPS, 2, seed=0, mesh=mesh)
    group3 = [tuple(_ids(batch_fn(s))[2:4]) for s in range(6)]  # 3 examples, 2 per step
    stream = [i for pair in group3 for i in pair]
    epochs = [stream[e * 3:(e + 1) * 3] for e in range(4)]
    assert all(sorted(e) == [0, 4, 9] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1, "every epoch in the same order"


def test_batches_are_a_pure_function_of_seed_and_step(mesh):
    first = grouped_batch_fn(_data(), GROUPS, 2, seed=5, mesh=mesh)
    walked = [_ids(first(s)) for s in range(9)]
    fresh = grouped_batch_fn(_data(), GROUPS, 2, seed=5, mesh=mesh)
    np.testing.assert_array_equal(_ids(fresh(8)), walked[8])  # a resumed run jumps straight in
    np.testing.assert_array_equal(_ids(fresh(3)), walked[3])  # and may look back
    other = grouped_batch_fn(_data(), GROUPS, 2, seed=6, mesh=mesh)
    assert any(not np.array_equal(_ids(other(s)), w) for s, w in enumerate(walked))


@pytest.mark.parametrize("per_group, groups, message", [
    (0, GROUPS, "positive integer"),
    (4, GROUPS, "exceeds the 3 training examples of the smallest group"),
    (1, GROUPS[:-1], "group of every training example"),
    (1, GROUPS.astype(np.float32), "group of every training example"),
])
def test_bad_input_gives_one_clear_error(mesh, per_group, groups, message):
    with pytest.raises(ConfigError, match=message):
        grouped_batch_fn(_data(), groups, per_group, seed=0, mesh=mesh)


def test_a_batch_that_does_not_split_over_the_devices_is_refused():
    assert len(jax.devices()) >= 4, "tests/conftest.py asks for 4 CPU devices"
    mesh4 = mesh_lib.make_mesh(jax.devices()[:4])
    with pytest.raises(ConfigError, match="--batch_per_task"):
        grouped_batch_fn(_data(), GROUPS, 1, seed=0, mesh=mesh4)  # 3 rows over 4 devices
    batch = grouped_batch_fn(Arrays(np.zeros((16, 1), np.float32), {"id": np.arange(16)}),
                             np.repeat([0, 1], 8), 2, seed=0, mesh=mesh4)(0)
    assert batch["x"].shape == (4, 1)
