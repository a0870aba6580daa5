"""Exact example-weighted metrics of a supervised model over a whole split.

The caller supplies a jitted `eval_step(state, batch) -> {name: values [B]}`
giving one value per example (e.g. 0/1 correctness, cross-entropy, squared
error). Batches come from `core.datasets.arrays.eval_batches`: all the same
size, the last one padded, with a float32 `"mask"` of 1 for real examples and
0 for padding. The result for each name is `sum(value * mask) / sum(mask)`
over the split, accumulated in float64 on the host, so padding never counts
and a split whose size the batch size does not divide gets the exact mean.

All steps are dispatched before any result is fetched, so building and
placing the next batch overlaps with the device computing the current one.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from core.errors import ConfigError

__all__ = ["evaluate", "masked_mean"]

EvalStep = Callable[[Any, Mapping[str, Any]], Mapping[str, Any]]


def evaluate(eval_step: EvalStep, state: Any,
             batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean per-example metrics over every real example of a split.

    Args:
      eval_step: `(state, batch) -> {name: per-example values [B]}`, jitted by
        the caller.
      state: passed unchanged to `eval_step` (e.g. params and model state).
      batches: batches with a float32 `"mask"` [B], e.g. from `eval_batches`.

    Returns:
      name -> example-weighted mean as a Python float.

    Raises:
      ConfigError: the split has no real examples (e.g. `--val_size=0` with
        validation switched on).
      ValueError: `eval_step` returned values whose shape is not the mask's.
    """
    outputs = [(eval_step(state, batch), batch["mask"]) for batch in batches]
    outputs = to_host(outputs)
    if not outputs:
        raise ConfigError("Cannot evaluate an empty split: it has no batches. Give the split "
                          "some examples (e.g. --val_size > 0) or switch its evaluation off.")
    mask = np.concatenate([np.asarray(m, np.float64).reshape(-1) for _, m in outputs])
    names = outputs[0][0].keys()
    for values, batch_mask in outputs:
        for name in names:
            if np.shape(values[name]) != np.shape(batch_mask):
                raise ValueError(f"eval_step returned {name!r} of shape {np.shape(values[name])}; "
                                 f"expected one value per example, {np.shape(batch_mask)}.")
    return {name: masked_mean(np.concatenate([np.ravel(v[name]) for v, _ in outputs]), mask)
            for name in names}


def masked_mean(values, mask) -> float:
    """`sum(values * mask) / sum(mask)` in float64.

    Args:
      values: per-example values [n].
      mask: weights [n], 1 for real examples and 0 for padding.

    Raises:
      ConfigError: the mask sums to zero (no real examples).
    """
    values = np.asarray(values, np.float64)
    mask = np.asarray(mask, np.float64)
    total = mask.sum()
    if total <= 0:
        raise ConfigError("Cannot average over zero examples: every example is masked out. "
                          "Give the split some examples or switch its evaluation off.")
    # Padded rows may hold inf or NaN (e.g. a loss on a zero row); they must not leak.
    return float(np.dot(np.where(mask != 0, values, 0.0), mask) / total)


def to_host(tree: Any) -> Any:
    """Device arrays to numpy; in a multi-host run, gathered from every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
