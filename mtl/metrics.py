"""Multi-task summary metrics: Δm% (two conventions) and mean rank.

A multi-task result is a set of per-task metrics; comparing methods needs one
number, and the literature uses two incompatible ones. Both compare a method's
metrics M with single-task baselines B trained under the same protocol.

Maninis et al. (2019) convention, used by CAGrad, Nash-MTL and FAMO (lower is
better; negative means better than the single-task baselines), averaged over
all K metrics at once::

    Δm% = (100 / K) · Σ_k (−1)^{δ_k} · (M_k − B_k) / B_k,   δ_k = 1 if higher is better

LibMTL convention (`count_improvement`; higher is better), averaged over the
metrics of each task first, then over the T tasks::

    Δp = 100 · (1 / T) · Σ_t (1 / M_t) · Σ_m (−1)^{w_{t,m}} · (B_{t,m} − N_{t,m}) / B_{t,m}

They differ in sign and, whenever tasks have different numbers of metrics, in
magnitude. Mean rank MR(m) = (1/K) Σ_k rank_k(m) (rank 1 = best on metric k)
depends on the set of methods compared, which is therefore returned with it.
"""

from typing import Mapping, Sequence

import numpy as np

from core.errors import ConfigError

# {task: {metric: value}}
TaskMetrics = Mapping[str, Mapping[str, float]]
# {task: {metric: True if higher is better}}
Directions = Mapping[str, Mapping[str, bool]]


def _aligned(result: TaskMetrics, baseline: TaskMetrics, higher_is_better: Directions):
    """(task, metric, value, base, higher) for every metric of the baseline."""
    rows = []
    for task, metrics in baseline.items():
        if task not in result:
            raise ConfigError(f"task {task!r} has a baseline but no result; the result has "
                              f"{sorted(result)}")
        for name, base in metrics.items():
            if name not in result[task]:
                raise ConfigError(f"metric {task}/{name} has a baseline but no result")
            if base == 0:
                raise ConfigError(f"the baseline of {task}/{name} is 0: Δm is undefined")
            rows.append((task, name, float(result[task][name]), float(base),
                         bool(higher_is_better[task][name])))
    if not rows:
        raise ConfigError("no baseline metrics to compare with")
    return rows


def delta_m(result: TaskMetrics, baseline: TaskMetrics, higher_is_better: Directions) -> float:
    """Δm% of Maninis et al. (2019): lower is better, 0 = the single-task baselines.

    Args:
      result: the method's metrics, {task: {metric: value}}.
      baseline: the single-task baselines' metrics, same layout.
      higher_is_better: {task: {metric: bool}}.

    Returns:
      The mean relative change over all metrics, in percent.
    """
    terms = [(-1.0 if higher else 1.0) * (value - base) / base
             for _, _, value, base, higher in _aligned(result, baseline, higher_is_better)]
    return 100.0 * float(np.mean(terms))


def delta_p(result: TaskMetrics, baseline: TaskMetrics, higher_is_better: Directions) -> float:
    """Δp of LibMTL (`count_improvement`): higher is better, averaged per task first.

    Args:
      result: the method's metrics, {task: {metric: value}}.
      baseline: the single-task baselines' metrics, same layout.
      higher_is_better: {task: {metric: bool}}.

    Returns:
      The mean over tasks of the mean relative improvement of each task's metrics, in percent.
    """
    per_task: dict[str, list[float]] = {}
    for task, _, value, base, higher in _aligned(result, baseline, higher_is_better):
        per_task.setdefault(task, []).append((-1.0 if higher else 1.0) * (base - value) / base)
    return 100.0 * float(np.mean([np.mean(terms) for terms in per_task.values()]))


def mean_rank(results: Mapping[str, TaskMetrics], higher_is_better: Directions
              ) -> dict[str, object]:
    """Mean rank of each method over every metric (rank 1 = best; ties share the mean rank).

    Args:
      results: {method: {task: {metric: value}}}; every method must report
        every metric of `higher_is_better`.
      higher_is_better: {task: {metric: bool}}.

    Returns:
      {'mean_rank': {method: MR}, 'methods': the sorted method set the ranks are over}.
    """
    methods: Sequence[str] = sorted(results)
    if len(methods) < 2:
        raise ConfigError("a mean rank needs at least two methods")
    ranks = {m: [] for m in methods}
    for task, metrics in higher_is_better.items():
        for name, higher in metrics.items():
            values = np.array([float(results[m][task][name]) for m in methods])
            order = -values if higher else values
            # Average ranks for ties: rank = 1 + #strictly better + (#equal - 1) / 2.
            for i, m in enumerate(methods):
                better = np.sum(order < order[i])
                equal = np.sum(order == order[i])
                ranks[m].append(1.0 + better + (equal - 1) / 2.0)
    return {"mean_rank": {m: float(np.mean(r)) for m, r in ranks.items()},
            "methods": list(methods)}
