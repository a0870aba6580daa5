"""A results table over many multi-task run directories.

For every benchmark found, every method's per-task test metrics over its seeds
(mean ± 95% Student-t interval), its Δm% (Maninis convention, lower is better)
and Δp (LibMTL convention, higher is better) against the single-task baselines,
and the mean rank over the methods of the table (the method set is stored with
it, since a rank means nothing without it).

A run is read from its `results.json` and identified by its config's
benchmark, method, tasks and seed. A run with one task (`--tasks=<task>`) is a
single-task baseline; the baseline of a task is the mean of its baseline runs
over seeds, and each multi-task run's Δm is taken against it, then averaged
over that method's seeds. Runs that differ in anything else than the seed
(steps, learning rate, ...) must not be mixed: `summarize` refuses a group
whose configs differ elsewhere.
"""

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from core import run_dir
from core.errors import ConfigError
from core.stats import format_ci, mean_ci95
from mtl import metrics as mtl_metrics

# Config fields that may differ within one table: the run's identity and bookkeeping.
_FREE_FIELDS = frozenset({"seed", "method", "tasks", "workdir", "stl_workdirs", "weights",
                          "data_dir", "second_data_dir", "progress", "num_devices",
                          "log_every", "checkpoint_every", "cagrad_c", "gradnorm_alpha",
                          "weighting_lr", "famo_lr", "famo_gamma", "dwa_temperature",
                          "mgda_normalization"})
_HIGHER_IS_BETTER = {"accuracy": True, "explained_variance": True, "mae": False,
                     "mse": False}


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run: its identity and test metrics {task: {metric: value}}."""

    workdir: str
    benchmark: str
    method: str
    tasks: tuple[str, ...]
    seed: int
    metrics: Mapping[str, Mapping[str, float]]
    config: Mapping[str, Any]

    @property
    def single_task(self) -> bool:
        return len(self.tasks) == 1


def read_run(workdir: str) -> Run:
    """The run in `workdir` (its results.json)."""

    def parse(results):
        config = results["config"]
        return Run(workdir=workdir, benchmark=config["benchmark"], method=config["method"],
                   tasks=tuple(results["task_names"]), seed=int(config["seed"]),
                   metrics=results["tasks"], config=config)

    return run_dir.load_finished_results(workdir, "multi-task", parse)


def higher_is_better(metric: str) -> bool:
    if metric not in _HIGHER_IS_BETTER:
        raise ConfigError(f"metric {metric!r} has no known direction; known: "
                          f"{', '.join(sorted(_HIGHER_IS_BETTER))}")
    return _HIGHER_IS_BETTER[metric]


def _check_same_protocol(runs: Sequence[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        differ = sorted(k for k in set(first.config) | set(run.config)
                        if k not in _FREE_FIELDS and first.config.get(k) != run.config.get(k))
        if differ:
            raise ConfigError(f"{run.workdir} and {first.workdir} ({first.benchmark}) differ in "
                              f"{', '.join(differ)}: runs of one table must share a protocol")


def _mean_metrics(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    tasks = runs[0].metrics
    return {t: {m: float(np.mean([r.metrics[t][m] for r in runs])) for m in ms}
            for t, ms in tasks.items()}


def _baselines(single: Sequence[Run]) -> dict[str, dict[str, float]]:
    by_task: dict[str, list[Run]] = {}
    for run in single:
        by_task.setdefault(run.tasks[0], []).append(run)
    return {task: _mean_metrics(runs)[task] for task, runs in by_task.items()}


def _summarize_method(runs: Sequence[Run], baselines, directions) -> dict[str, Any]:
    tasks = {t: {m: mean_ci95([r.metrics[t][m] for r in runs]) for m in ms}
             for t, ms in runs[0].metrics.items()}
    out: dict[str, Any] = {"seeds": sorted(r.seed for r in runs), "tasks": tasks}
    if baselines and all(t in baselines for t in runs[0].tasks):
        base = {t: baselines[t] for t in runs[0].tasks}
        dirs = {t: directions[t] for t in base}
        out["delta_m"] = mean_ci95([mtl_metrics.delta_m(r.metrics, base, dirs) for r in runs])
        out["delta_p"] = mean_ci95([mtl_metrics.delta_p(r.metrics, base, dirs) for r in runs])
    return out


def summarize(runs: Iterable[Run]) -> dict[str, Any]:
    """{benchmark: {'baselines', 'baseline_seeds', 'methods', 'mean_rank', 'ranked_methods'}}."""
    by_benchmark: dict[str, list[Run]] = {}
    for run in runs:
        by_benchmark.setdefault(run.benchmark, []).append(run)
    table = {}
    for benchmark, group in sorted(by_benchmark.items()):
        _check_same_protocol(group)
        single = [r for r in group if r.single_task]
        multi = [r for r in group if not r.single_task]
        if not multi:
            continue
        baselines = _baselines(single)
        directions = {t: {m: higher_is_better(m) for m in ms}
                      for t, ms in multi[0].metrics.items()}
        by_method: dict[str, list[Run]] = {}
        for run in multi:
            by_method.setdefault(run.method, []).append(run)
        entry: dict[str, Any] = {
            "baselines": baselines, "baseline_seeds": sorted({r.seed for r in single}),
            "methods": {m: _summarize_method(rs, baselines, directions)
                        for m, rs in sorted(by_method.items())}}
        if len(by_method) >= 2:
            ranked = mtl_metrics.mean_rank(
                {m: _mean_metrics(rs) for m, rs in by_method.items()}, directions)
            entry["mean_rank"] = ranked["mean_rank"]
            entry["ranked_methods"] = ranked["methods"]
        table[benchmark] = entry
    return table


def markdown(table: Mapping[str, Any]) -> str:
    """One markdown table per benchmark, methods sorted by mean rank."""
    parts = []
    for benchmark, entry in table.items():
        methods = entry["methods"]
        columns = [(t, m) for t, ms in next(iter(methods.values()))["tasks"].items() for m in ms]
        has_delta = any("delta_m" in v for v in methods.values())
        header = ["method", "seeds"] + [f"{t} {m}" for t, m in columns]
        header += ["Δm% ↓", "Δp ↑"] if has_delta else []
        header += ["mean rank"] if "mean_rank" in entry else []
        lines = [f"**{benchmark}**", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        if entry["baselines"]:
            base = ["single-task", ",".join(map(str, entry["baseline_seeds"]))]
            base += [f"{entry['baselines'][t][m]:.2f}" if t in entry["baselines"] else ""
                     for t, m in columns]
            base += ["0", "0"] if has_delta else []
            base += [""] if "mean_rank" in entry else []
            lines.append("| " + " | ".join(base) + " |")
        order = sorted(methods, key=lambda m: entry.get("mean_rank", {}).get(m, 0.0))
        for name in order:
            v = methods[name]
            row = [name, ",".join(map(str, v["seeds"]))]
            row += [format_ci(v["tasks"][t][m]) for t, m in columns]
            if has_delta:
                row += [format_ci(v["delta_m"]), format_ci(v["delta_p"])] if "delta_m" in v else ["", ""]
            if "mean_rank" in entry:
                row.append(f"{entry['mean_rank'][name]:.2f}")
            lines.append("| " + " | ".join(row) + " |")
        if "ranked_methods" in entry:
            lines += ["", f"Mean rank over: {', '.join(entry['ranked_methods'])}."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
