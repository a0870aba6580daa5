"""Tests for in-memory supervised datasets: validation split, train and eval batches."""

import jax
import numpy as np
import pytest

from core import mesh as mesh_lib
from core.datasets.arrays import Arrays
from core.datasets.arrays import eval_batches
from core.datasets.arrays import split_validation
from core.datasets.arrays import train_batch_fn
from core.errors import ConfigError

N = 22


@pytest.fixture(scope="module")
def mesh():
    return mesh_lib.make_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def mesh4():
    assert len(jax.devices()) >= 4, "tests/conftest.py asks for 4 CPU devices"
    return mesh_lib.make_mesh(jax.devices()[:4])


def _data(n=N):
    """Image i is filled with i (uint8); its label is i and its angle -i / 2."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, 3, 1)).copy()
    return Arrays(x, {"digit": np.arange(n, dtype=np.int32),
                      "angle": -np.arange(n, dtype=np.float32) / 2})


def _ids(batch):
    """Example ids of a placed batch, via the labels."""
    return np.asarray(batch["y"]["digit"]).tolist()


def test_arrays_refuses_mismatched_lengths():
    with pytest.raises(ConfigError, match="'angle' has shape \\(4,\\), but x has 5"):
        Arrays(np.zeros((5, 2)), {"label": np.zeros(5), "angle": np.zeros(4)})


def test_take_len_and_tasks():
    data = _data()
    part = data.take([3, 1])
    assert len(data) == N and len(part) == 2 and part.tasks == ("digit", "angle")
    np.testing.assert_array_equal(part.y["digit"], [3, 1])
    np.testing.assert_array_equal(part.x[:, 0, 0, 0], [3, 1])


def test_split_validation_is_seeded_disjoint_and_covering():
    train, val = split_validation(_data(), 5, seed=3)
    again_train, again_val = split_validation(_data(), 5, seed=3)
    _, other_val = split_validation(_data(), 5, seed=4)
    assert len(train) == N - 5 and len(val) == 5
    train_ids, val_ids = set(train.y["digit"].tolist()), set(val.y["digit"].tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(N))
    np.testing.assert_array_equal(val.y["digit"], again_val.y["digit"])
    np.testing.assert_array_equal(train.x, again_train.x)
    assert set(other_val.y["digit"].tolist()) != val_ids
    np.testing.assert_array_equal(train.x[:, 0, 0, 0], train.y["digit"])  # Rows stay aligned.


def test_split_validation_sizes():
    train, val = split_validation(_data(), 0, seed=0)
    assert len(train) == N and len(val) == 0
    with pytest.raises(ConfigError, match="--val_size=22 would leave no training"):
        split_validation(_data(), N, seed=0)


def test_train_batches_are_deterministic_in_seed_and_step(mesh):
    first = train_batch_fn(_data(), 4, seed=7, mesh=mesh)
    second = train_batch_fn(_data(), 4, seed=7, mesh=mesh)
    other_seed = train_batch_fn(_data(), 4, seed=8, mesh=mesh)
    steps = [0, 1, 9, 12, 5]  # Out of order and across epochs, as after a resume.
    assert [_ids(first(s)) for s in steps] == [_ids(second(s)) for s in reversed(steps)][::-1]
    assert [_ids(first(s)) for s in range(5)] != [_ids(other_seed(s)) for s in range(5)]


def test_train_epoch_is_a_permutation_and_epochs_differ(mesh):
    batch_fn = train_batch_fn(_data(), 4, seed=0, mesh=mesh)
    steps_per_epoch = N // 4  # 5: the last 2 examples of each epoch are dropped.
    epochs = [sum((_ids(batch_fn(e * steps_per_epoch + s)) for s in range(steps_per_epoch)), [])
              for e in range(3)]
    for epoch in epochs:
        assert len(epoch) == 20 and len(set(epoch)) == 20 and set(epoch) <= set(range(N))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    order = np.random.default_rng([0, 1]).permutation(N)
    assert epochs[1] == order[:20].tolist()


def test_train_batch_converts_uint8_and_keeps_targets(mesh):
    batch = train_batch_fn(_data(), 4, seed=0, mesh=mesh)(0)
    x, digit, angle = (np.asarray(a) for a in (batch["x"], batch["y"]["digit"],
                                                batch["y"]["angle"]))
    assert x.dtype == np.float32 and x.shape == (4, 3, 3, 1)
    np.testing.assert_allclose(x[:, 1, 2, 0], digit / 255, rtol=1e-6)
    assert digit.dtype == np.int32 and angle.dtype == np.float32
    np.testing.assert_array_equal(angle, -digit / 2)


def test_float_inputs_pass_unchanged(mesh):
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(8, 1)
    batch = train_batch_fn(Arrays(x, {"label": np.arange(8)}), 8, seed=0, mesh=mesh)(0)
    np.testing.assert_array_equal(np.sort(np.asarray(batch["x"])[:, 0]), x[:, 0])


@pytest.mark.timeout(120)
def test_batches_are_sharded_over_four_devices(mesh4):
    batch = train_batch_fn(_data(), 8, seed=0, mesh=mesh4)(0)
    for leaf in jax.tree.leaves(batch):
        assert len(leaf.sharding.device_set) == 4
        assert leaf.sharding.shard_shape(leaf.shape)[0] == 2
    eval_batch = next(iter(eval_batches(_data(), 8, mesh4)))
    assert eval_batch["mask"].sharding.shard_shape((8,)) == (2,)
    assert len(eval_batch["x"].sharding.device_set) == 4


def test_batch_size_checks(mesh, mesh4):
    with pytest.raises(ConfigError, match="--batch_size=23 exceeds the 22 training examples"):
        train_batch_fn(_data(), 23, seed=0, mesh=mesh)
    with pytest.raises(ConfigError, match="--batch_size=6 must be a multiple"):
        train_batch_fn(_data(), 6, seed=0, mesh=mesh4)
    with pytest.raises(ConfigError, match="--eval_batch_size=6 must be a multiple"):
        eval_batches(_data(), 6, mesh4)


def test_eval_batches_pad_the_last_batch_with_a_mask(mesh):
    batches = eval_batches(_data(), 8, mesh)
    assert len(batches) == 3
    for _ in range(2):  # Iterable more than once, same content.
        placed = list(batches)
        assert [b["x"].shape[0] for b in placed] == [8, 8, 8]
        masks = np.concatenate([np.asarray(b["mask"]) for b in placed])
        assert masks.dtype == np.float32
        np.testing.assert_array_equal(masks, [1] * N + [0] * 2)
        digits = np.concatenate([_ids(b) for b in placed])
        np.testing.assert_array_equal(digits[:N], np.arange(N))
        last_x = np.asarray(placed[-1]["x"])
        assert last_x.dtype == np.float32
        np.testing.assert_allclose(last_x[:6, 0, 0, 0], np.arange(16, 22) / 255, rtol=1e-6)
        np.testing.assert_array_equal(last_x[6:], 0)


def test_eval_batches_of_an_exact_multiple_and_of_nothing(mesh):
    placed = list(eval_batches(_data(8), 4, mesh))
    assert len(placed) == 2 and all(np.asarray(b["mask"]).all() for b in placed)
    assert list(eval_batches(_data().take([]), 4, mesh)) == []
