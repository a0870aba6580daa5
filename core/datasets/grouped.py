"""Training batches that hold the same number of examples of every group.

Data whose examples each belong to one group (School's students, each of one
school; one task per school) sampled uniformly give batches in which most
groups are absent: with 139 groups and 128 examples per batch, at least 11
groups have no example in any batch. A method that compares groups within a
batch (a loss weighting that reads each task's loss, an aggregator that reads
each task's gradient) then sees a task whose loss and gradient are zero
because it was not sampled, not because it is solved: MGDA's min-norm
combination is then the zero vector, FAMO's log-loss differences blow up.
LibMTL's multi-input benchmarks avoid this by drawing one batch from every
task's loader at each step; `grouped_batch_fn` does the same in one batch.

Batches are a pure function of (seed, step), as `core.datasets.arrays`'
uniform ones: the g-th group (in increasing order of group id) is read in
the order of its own epoch permutations,
`np.random.default_rng([seed, g, epoch]).permutation(n_g)`,
`per_group` examples per step, so a resumed run sees exactly the batches an
uninterrupted one would. A group's epoch ends after n_g examples, whatever
the other groups' sizes: small groups are revisited more often, which is what
gives every task the same weight in every batch.
"""

from collections.abc import Callable

import numpy as np
from jax.sharding import Mesh

from core import mesh as mesh_lib
from core.datasets import arrays
from core.errors import ConfigError

__all__ = ["grouped_batch_fn"]


def grouped_batch_fn(data: arrays.Arrays, groups: np.ndarray, per_group: int, seed: int,
                     mesh: Mesh, flag: str = "--batch_per_task") -> Callable[[int], dict]:
    """A deterministic `step -> batch` function, `per_group` examples of every group.

    Args:
      data: the training split.
      groups: [n] integer group of each example of `data`.
      per_group: examples of each group per batch; the batch has
        `per_group * number of groups` rows, group by group in increasing
        group order.
      seed: non-negative seed of the per-group epoch permutations.
      mesh: the device mesh; batches are split along their leading axis.
      flag: how to name `per_group` in error messages.

    Returns:
      A function mapping a step >= 0 to `{"x": [B, ...], "y": {name: [B, ...]}}`
      placed on the mesh, as `arrays.train_batch_fn`'s, with a
      `steps_per_epoch` attribute (uniform-epoch equivalent: n // B).

    Raises:
      ConfigError: `per_group` is not positive or exceeds the smallest
        group's size, the batch does not split over the devices, `groups`
        does not have one entry per example, or the seed is invalid.
    """
    if not arrays.is_int(per_group) or per_group < 1:
        raise ConfigError(f"{flag} must be a positive integer; got {per_group!r}.")
    groups = np.asarray(groups)
    if groups.shape != (len(data),) or not np.issubdtype(groups.dtype, np.integer):
        raise ConfigError(f"The group of every training example is needed: got an array of "
                          f"shape {groups.shape} and dtype {groups.dtype} for {len(data)} "
                          f"examples.")
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    smallest = min(len(m) for m in members)
    if per_group > smallest:
        raise ConfigError(f"{flag}={per_group} exceeds the {smallest} training examples of the "
                          f"smallest group; use {flag} <= {smallest}.")
    mesh_lib.check_divisible(per_group * len(members), mesh,
                             f"{flag} x {len(members)} groups")
    arrays.check_seed(seed)
    return _GroupedBatches(data, members, int(per_group), int(seed), mesh)


class _GroupedBatches:
    """The callable behind `grouped_batch_fn`, caching each group's current permutation."""

    def __init__(self, data: arrays.Arrays, members: list[np.ndarray], per_group: int,
                 seed: int, mesh: Mesh):
        self._data = data
        self._members = members
        self._per_group = per_group
        self._seed = seed
        self._mesh = mesh
        self.batch_size = per_group * len(members)
        self.steps_per_epoch = max(1, len(data) // self.batch_size)
        self._cached: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, step: int) -> dict:
        if not arrays.is_int(step) or step < 0:
            raise ConfigError(f"Training step must be a non-negative integer; got {step!r}.")
        indices = np.concatenate([self._of_group(g, int(step))
                                  for g in range(len(self._members))])
        return arrays.put_examples(self._data, indices, self._mesh)

    def _of_group(self, group: int, step: int) -> np.ndarray:
        """The data indices of group `group`'s `per_group` examples at `step`."""
        members = self._members[group]
        positions = step * self._per_group + np.arange(self._per_group)
        epochs, within = np.divmod(positions, len(members))
        # per_group <= n_g, so the positions span at most two consecutive epochs.
        order = np.where(epochs == epochs[0], self._permutation(group, int(epochs[0]))[within],
                         self._permutation(group, int(epochs[-1]))[within])
        return members[order]

    def _permutation(self, group: int, epoch: int) -> np.ndarray:
        key = (group, epoch)
        if key not in self._cached:
            # Keep only the newest epochs: a group never goes back.
            for old in [k for k in self._cached if k[0] == group and k[1] < epoch - 1]:
                del self._cached[old]
            self._cached[key] = np.random.default_rng(
                [self._seed, group, epoch]).permutation(len(self._members[group]))
        return self._cached[key]
