"""A resumable training loop shared by every algorithm family.

The loop knows nothing of what it trains. It is given a jitted
`train_step(state, batch) -> (state, metrics)`, a deterministic
`batch_fn(step) -> batch` and an optional validation function, and it owns
the bookkeeping that makes a run survive being killed at any moment:

* a checkpoint every `checkpoint_every` steps holding the train state and the
  loop's own state (best validation value and step, validations since the
  best, whether the run stopped early, wall time so far);
* on start, the latest checkpoint is restored and training continues from
  it; `metrics.jsonl` is cut back to that step, so the metrics of a resumed
  run equal those of an uninterrupted one;
* the best-validation state is kept in a separate checkpoint slot, for testing;
* early stopping: after `patience` validations in a row without improvement
  of the select metric, the loop checkpoints and stops (a resumed run that
  had stopped stays stopped);
* a guard on the training loss: a non-finite value raises
  `core.errors.TrainingDiverged` naming the step, before any checkpoint of a
  diverged state is written, so the last good checkpoint survives. Each
  step's loss is checked once the next step has been dispatched, so the
  check does not stall the device queue.

Because batches are a pure function of the step and every step is
deterministic, a resumed run ends with bit-identical parameters.
"""

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from core.checkpoint import Checkpointer
from core.errors import TrainingDiverged
from core.metrics import MetricsWriter
from core.progress import ProgressBar


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """When the loop does what.

    Attributes:
      num_steps: total number of training steps.
      eval_every: validate every this many steps (and at the last step); 0 = never.
      checkpoint_every: checkpoint every this many steps (and at the last step).
      log_every: write training metrics every this many steps.
      select_metric: the validation metric that picks the best checkpoint.
      select_mode: 'max' or 'min' for `select_metric`.
      patience: stop after this many validations in a row that do not improve
        on the best one; 0 never stops early.
      guard_metric: the training metric that must stay finite.
    """

    num_steps: int
    eval_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 100
    select_metric: str = "accuracy"
    select_mode: str = "max"
    patience: int = 0
    guard_metric: str = "loss"

    def __post_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.eval_every < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1, eval_every >= 0")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {self.select_mode!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")


@dataclasses.dataclass
class LoopResult:
    """What a finished loop hands back.

    Attributes:
      state: the final train state.
      step: the step it was taken at (`num_steps`, or earlier if stopped early).
      best_step: step of the best validation value (None without validation).
      best_value: that value.
      stopped_early: whether `patience` ended the run before `num_steps`.
      wall_seconds: training wall time summed over all resumptions.
      resumed_from: the step the loop restarted from (0 for a fresh run).
    """

    state: Any
    step: int
    best_step: int | None
    best_value: float | None
    stopped_early: bool
    wall_seconds: float
    resumed_from: int


@dataclasses.dataclass
class _Bookkeeping:
    """The loop's own state, checkpointed next to the train state."""

    best_value: float = float("nan")
    best_step: int = -1
    stale_validations: int = 0
    stopped_early: bool = False
    wall_seconds: float = 0.0

    def as_tree(self) -> dict:
        return {"best_value": np.asarray(self.best_value, np.float64),
                "best_step": np.asarray(self.best_step, np.int64),
                "stale_validations": np.asarray(self.stale_validations, np.int64),
                "stopped_early": np.asarray(self.stopped_early, np.int64),
                "wall_seconds": np.asarray(self.wall_seconds, np.float64)}

    @classmethod
    def from_tree(cls, tree: Mapping) -> "_Bookkeeping":
        return cls(best_value=float(tree["best_value"]), best_step=int(tree["best_step"]),
                   stale_validations=int(tree["stale_validations"]),
                   stopped_early=bool(tree["stopped_early"]),
                   wall_seconds=float(tree["wall_seconds"]))


def checkpoint_template(state: Any) -> dict:
    """The tree `run` stores in a checkpoint, with `state` as the train state."""
    return {"state": state, "loop": _Bookkeeping().as_tree()}


def _is_better(value: float, best: float, mode: str) -> bool:
    """Whether `value` beats `best`; NaN (a diverged evaluation) never does."""
    if np.isnan(value):
        return False
    if np.isnan(best):
        return True
    return value > best if mode == "max" else value < best


class _LossGuard:
    """Checks each step's training loss once the next step is queued."""

    def __init__(self, metric: str, checkpointer: Checkpointer):
        self._metric = metric
        self._checkpointer = checkpointer
        self._pending: tuple[int, Any] | None = None

    def push(self, step: int, metrics: Mapping) -> None:
        """Checks the previous step, then holds this one's loss until the next call."""
        if self._metric not in metrics:
            raise ValueError(f"the train step's metrics have no {self._metric!r} to guard; "
                             f"they have {sorted(metrics)}")
        self.check()
        self._pending = (step, metrics[self._metric])

    def check(self) -> None:
        """Checks the held loss now (waits for its step)."""
        if self._pending is None:
            return
        step, value = self._pending
        self._pending = None
        value = float(value)
        if not np.isfinite(value):
            good = self._checkpointer.latest_step()
            kept = (f"the last good checkpoint (step {good}) is kept in "
                    f"{self._checkpointer.directory}" if good is not None
                    else "no checkpoint was written")
            raise TrainingDiverged(
                f"the training {self._metric} is {value} at step {step}; {kept}; no results "
                f"are written (lower the learning rate, or clip gradients)")


def run(config: LoopConfig, state: Any, train_step: Callable[[Any, Any], tuple[Any, Mapping]],
        batch_fn: Callable[[int], Any], *, checkpointer: Checkpointer,
        best_checkpointer: Checkpointer | None, writer: MetricsWriter,
        eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
        progress: bool = True) -> LoopResult:
    """Trains from the latest checkpoint (or `state`) to `config.num_steps`.

    Args:
      config: schedule of the loop.
      state: the initial train state; also the template for restoring.
      train_step: the (jitted) step; metrics are scalars and include
        `config.guard_metric`.
      batch_fn: step -> batch for that step (deterministic in the step).
      checkpointer: where the latest states go.
      best_checkpointer: where the best-validation state goes (None: not kept).
      writer: metrics sink; it must have been opened with the resume step
        (`checkpointer.latest_step()`).
      eval_fn: (state, step) -> validation metrics, containing
        `config.select_metric`.
      progress: show a progress bar.

    Returns:
      A `LoopResult`.

    Raises:
      TrainingDiverged: when the guarded training metric is not finite.
    """
    book = _Bookkeeping()
    latest = checkpointer.latest_step()
    start = 0
    if latest is not None:
        restored = checkpointer.restore(checkpoint_template(state))
        state, book = restored["state"], _Bookkeeping.from_tree(restored["loop"])
        start = latest  # checkpoints are numbered by the steps done
    resumed_from = start
    validating = eval_fn is not None and config.eval_every > 0

    def validate(step: int) -> float:
        metrics = dict(eval_fn(state, step))
        writer.write(step, "val", metrics)
        value = float(metrics[config.select_metric])
        if _is_better(value, book.best_value, config.select_mode):
            book.best_value, book.best_step, book.stale_validations = value, step, 0
            if best_checkpointer is not None:
                best_checkpointer.save(step, checkpoint_template(state) | {
                    "loop": dataclasses.replace(book, wall_seconds=0.0).as_tree()})
        else:
            book.stale_validations += 1
        book.stopped_early = bool(config.patience
                                  and book.stale_validations >= config.patience)
        return value

    guard = _LossGuard(config.guard_metric, checkpointer)
    bar = ProgressBar(config.num_steps, start_step=start, disable=not progress)
    t_last = time.perf_counter()
    last_scalars: dict[str, float] = {}
    step = start
    try:
        if latest is None and validating:
            last_scalars = {f"val_{config.select_metric}": validate(0)}
        while step < config.num_steps and not book.stopped_early:
            step += 1
            state, metrics = train_step(state, batch_fn(step - 1))
            guard.push(step, metrics)
            is_last = step == config.num_steps
            if step % config.log_every == 0 or is_last:
                scalars = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
                writer.write(step, "train", scalars)
                last_scalars.update({k: scalars[k] for k in list(scalars)[:2]})
            if validating and (step % config.eval_every == 0 or is_last):
                guard.check()
                last_scalars[f"val_{config.select_metric}"] = validate(step)
            if step % config.checkpoint_every == 0 or is_last or book.stopped_early:
                guard.check()
                now = time.perf_counter()
                book.wall_seconds += now - t_last
                t_last = now
                checkpointer.save(step, {"state": state, "loop": book.as_tree()})
                writer.flush()
            bar.update(step - 1, **last_scalars)
    finally:
        bar.close()
    return LoopResult(state=state, step=step,
                      best_step=None if book.best_step < 0 else book.best_step,
                      best_value=None if np.isnan(book.best_value) else book.best_value,
                      stopped_early=book.stopped_early, wall_seconds=book.wall_seconds,
                      resumed_from=resumed_from)


def restore_best(best_checkpointer: Checkpointer, template_state: Any) -> Any:
    """The best-validation train state saved by `run`."""
    return best_checkpointer.restore(checkpoint_template(template_state))["state"]
