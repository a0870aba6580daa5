"""The few-shot evaluation protocol of MAML and its successors.

For each of a fixed, seeded set of test tasks (600 in the MAML paper), adapt
the meta-learned θ to the support set with `steps` inner SGD steps and
measure the query metric after each step (0 = before adaptation). Report the
mean over tasks with the 95% interval 1.96·std/√n (cbfinn/maml main.py).

The tasks come from a `batch_fn(index) -> episodes` whose output for a given
index never changes (the episode samplers in `core.datasets` are counter
based), so the test set is identical across runs and resumptions.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from core import evaluate as evaluate_lib
from core.losses import LossFn
from meta import maml
from meta import task_map as task_map_lib


def make_adaptation_eval(loss_fn: LossFn, *, inner_lr: float, steps: int, metric: str,
                         task_map: str = "vmap", loss_scale: float = 1.0,
                         adapts: Callable[[str], bool] | None = None) -> Callable:
    """Builds `fn(params, model_state, tasks) -> {'loss', metric}` of shape [tasks, steps + 1].

    Adaptation runs the model with `train=False`: with transductive batch norm
    that still uses the batch's statistics (as the reference code does); with
    running batch norm it uses the running statistics.

    Args:
      loss_fn: a `core.losses` loss function.
      inner_lr: α at test time.
      steps: number of test-time inner steps.
      metric: the name of the task metric in the loss function's metrics.
      task_map: how to map over tasks (`meta.task_map`).
      loss_scale: multiplies the support loss of the inner steps, as in
        meta-training (`maml.MamlConfig.inner_loss_scale`).
      adapts: which parameters the inner steps update, as in meta-training
        (`maml.MamlConfig.adapts`).

    Returns:
      A pure function (jit it once; it does not retrace across batches).
    """

    def per_task(params, model_state, task):
        trajectory = maml.inner_loop(loss_fn, params, model_state, task.support_x,
                                     task.support_y, inner_lr=inner_lr, steps=steps,
                                     first_order=True, train=False, loss_scale=loss_scale,
                                     adapts=adapts)
        results = [loss_fn(p, model_state, task.query_x, task.query_y, False)[1][1]
                   for p in trajectory]
        return {"loss": jnp.stack([r["loss"] for r in results]),
                metric: jnp.stack([r[metric] for r in results])}

    def evaluate_batch(params, model_state, tasks):
        return task_map_lib.map_tasks(lambda t: per_task(params, model_state, t), tasks,
                                      task_map)

    return evaluate_batch


def summarize(values: np.ndarray, scale: float = 1.0) -> dict[str, Any]:
    """Mean and 95% interval per inner step of a [tasks, steps + 1] array.

    Args:
      values: per-task metric after 0..steps inner steps.
      scale: multiplies the values (100 for accuracies in percent).

    Returns:
      {'mean', 'ci95', 'std'} of the last step, 'per_step' and
      'per_step_ci95' lists over steps 0..steps, and 'num_tasks'.
    """
    values = np.asarray(values, np.float64) * scale
    n = values.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        mean = values.mean(axis=0)
        std = values.std(axis=0)
    ci95 = 1.96 * std / math.sqrt(n)
    return {
        "mean": float(mean[-1]),
        "ci95": float(ci95[-1]),
        "std": float(std[-1]),
        "per_step": [float(v) for v in mean],
        "per_step_ci95": [float(v) for v in ci95],
        # Robust companions: a few tasks whose inner loop diverges make the mean inf/NaN.
        # A diverged (NaN) task counts as infinitely bad in the median.
        "per_step_median": [float(v) for v in np.median(np.nan_to_num(values, nan=np.inf),
                                                        axis=0)],
        "per_step_diverged": [int(v) for v in (~np.isfinite(values)).sum(axis=0)],
        "num_tasks": int(n),
    }


def evaluate(eval_fn: Callable, params, model_state, batch_fn: Callable[[int], Any], *,
             num_tasks: int, batch_size: int, metric: str) -> dict[str, Any]:
    """Runs the protocol on `num_tasks` tasks, `batch_size` at a time.

    Batches are drawn as `batch_fn(0), batch_fn(1), ...`; the surplus tasks
    of the last batch are evaluated and dropped, so every batch has the same
    shape and `eval_fn` compiles once.

    Args:
      eval_fn: from `make_adaptation_eval`, usually jitted.
      params: θ.
      model_state: non-differentiated model collections.
      batch_fn: index -> a stacked batch of `batch_size` episodes.
      num_tasks: how many tasks to evaluate.
      batch_size: tasks per call of `eval_fn`.
      metric: 'accuracy' (reported in percent) or 'mse'.

    Returns:
      `summarize` of the metric plus 'metric', 'unit' and 'loss' (the query
      loss summary).
    """
    metric_chunks, loss_chunks = [], []
    for index in range(math.ceil(num_tasks / batch_size)):
        out = eval_fn(params, model_state, batch_fn(index))
        out = evaluate_lib.to_host({"metric": out[metric], "loss": out["loss"]})
        metric_chunks.append(np.asarray(out["metric"]))
        loss_chunks.append(np.asarray(out["loss"]))
    values = np.concatenate(metric_chunks)[:num_tasks]
    losses = np.concatenate(loss_chunks)[:num_tasks]
    scale = 100.0 if metric == "accuracy" else 1.0
    summary = summarize(values, scale)
    summary.update(metric=metric, unit="%" if metric == "accuracy" else "",
                   loss=summarize(losses)["per_step"])
    return summary
