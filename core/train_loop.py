"""A resumable training loop shared by every algorithm family.

The loop knows nothing of what it trains. It is given a jitted
`train_step(state, batch) -> (state, metrics)`, a deterministic
`batch_fn(step) -> batch` and an optional validation function, and it owns
the bookkeeping that makes a run survive being killed at any moment:

* a checkpoint every `checkpoint_every` steps holding the train state and the
  loop's own state (best validation value and step, wall time so far);
* on start, the latest checkpoint is restored and training continues from
  it; `metrics.jsonl` is cut back to that step, so the metrics of a resumed
  run equal those of an uninterrupted one;
* the best-validation state is kept in a separate checkpoint slot, for testing.

Because batches are a pure function of the step and every step is
deterministic, a resumed run ends with bit-identical parameters.
"""

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from core.checkpoint import Checkpointer
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
    """

    num_steps: int
    eval_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 100
    select_metric: str = "accuracy"
    select_mode: str = "max"

    def __post_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.eval_every < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1, eval_every >= 0")
        if self.select_mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {self.select_mode!r}")


@dataclasses.dataclass
class LoopResult:
    """What a finished loop hands back.

    Attributes:
      state: the final train state.
      best_step: step of the best validation value (None without validation).
      best_value: that value.
      wall_seconds: training wall time summed over all resumptions.
      resumed_from: the step the loop restarted from (0 for a fresh run).
    """

    state: Any
    best_step: int | None
    best_value: float | None
    wall_seconds: float
    resumed_from: int


def _loop_state(best_value: float, best_step: int, wall_seconds: float) -> dict:
    return {"best_value": np.asarray(best_value, np.float64),
            "best_step": np.asarray(best_step, np.int64),
            "wall_seconds": np.asarray(wall_seconds, np.float64)}


def _is_better(value: float, best: float, mode: str) -> bool:
    """Whether `value` beats `best`; NaN (a diverged evaluation) never does."""
    if np.isnan(value):
        return False
    if np.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def run(config: LoopConfig, state: Any, train_step: Callable[[Any, Any], tuple[Any, Mapping]],
        batch_fn: Callable[[int], Any], *, checkpointer: Checkpointer,
        best_checkpointer: Checkpointer | None, writer: MetricsWriter,
        eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
        progress: bool = True) -> LoopResult:
    """Trains from the latest checkpoint (or `state`) to `config.num_steps`.

    Args:
      config: schedule of the loop.
      state: the initial train state; also the template for restoring.
      train_step: the (jitted) step; metrics are scalars.
      batch_fn: step -> batch for that step (deterministic in the step).
      checkpointer: where the latest states go.
      best_checkpointer: where the best-validation state goes (None: not kept).
      writer: metrics sink; it must have been opened with the resume step
        (`resume_step(checkpointer)`).
      eval_fn: (state, step) -> validation metrics, containing
        `config.select_metric`.
      progress: show a progress bar.

    Returns:
      A `LoopResult`.
    """
    start = 0
    best_value, best_step, wall = float("nan"), -1, 0.0
    latest = checkpointer.latest_step()
    if latest is not None:
        restored = checkpointer.restore({"state": state, "loop": _loop_state(0.0, 0, 0.0)})
        state = restored["state"]
        loop = restored["loop"]
        best_value, best_step = float(loop["best_value"]), int(loop["best_step"])
        wall = float(loop["wall_seconds"])
        start = latest  # checkpoints are numbered by the steps done
    resumed_from = start

    def validate(step: int):
        nonlocal best_value, best_step
        metrics = dict(eval_fn(state, step))
        writer.write(step, "val", metrics)
        value = float(metrics[config.select_metric])
        if _is_better(value, best_value, config.select_mode):
            best_value, best_step = value, step
            if best_checkpointer is not None:
                best_checkpointer.save(step, {"state": state,
                                              "loop": _loop_state(best_value, best_step, 0.0)})
        return metrics

    bar = ProgressBar(config.num_steps, start_step=start, disable=not progress)
    t_last = time.perf_counter()
    last_scalars: dict[str, float] = {}
    try:
        if start == 0 and eval_fn is not None and config.eval_every and latest is None:
            val = validate(0)
            last_scalars = {f"val_{config.select_metric}": float(val[config.select_metric])}
        for step in range(start + 1, config.num_steps + 1):
            state, metrics = train_step(state, batch_fn(step - 1))
            is_last = step == config.num_steps
            if step % config.log_every == 0 or is_last:
                scalars = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
                writer.write(step, "train", scalars)
                last_scalars.update({k: scalars[k] for k in list(scalars)[:2]})
            if eval_fn is not None and config.eval_every and (
                    step % config.eval_every == 0 or is_last):
                val = validate(step)
                last_scalars[f"val_{config.select_metric}"] = float(val[config.select_metric])
            if step % config.checkpoint_every == 0 or is_last:
                now = time.perf_counter()
                wall += now - t_last
                t_last = now
                checkpointer.save(step, {"state": state,
                                         "loop": _loop_state(best_value, best_step, wall)})
                writer.flush()
            bar.update(step - 1, **last_scalars)
    finally:
        bar.close()
    return LoopResult(state=state, best_step=None if best_step < 0 else best_step,
                      best_value=None if np.isnan(best_value) else best_value,
                      wall_seconds=wall, resumed_from=resumed_from)


def loop_state_template() -> dict:
    """The template of the loop bookkeeping stored next to the state in checkpoints."""
    return _loop_state(0.0, 0, 0.0)


def resume_step(checkpointer: Checkpointer) -> int | None:
    """The step a run in this checkpoint directory will resume from (None: fresh)."""
    return checkpointer.latest_step()


def restore_best(best_checkpointer: Checkpointer, template_state: Any) -> Any:
    """The best-validation train state saved by `run`."""
    return best_checkpointer.restore(
        {"state": template_state, "loop": _loop_state(0.0, 0, 0.0)})["state"]
