"""The table of `experiments/report.py`: finished runs grouped into configurations.

A configuration is a set of runs whose config differs only in its seeds
(`seed` and any `*_seed`), its workdir and what does not change the numbers
(`progress`, `num_devices`, the machine-resolved `resolved_*` values). Each row
has the number of seeds, mean ± 95% CI (Student t, `core.stats`) of
`best_val` and of every scalar of the test block, the mean steps and wall time.
The label of a row lists the config keys that differ between the rows.
"""

import json
import math
import os
from typing import Any, Mapping, Sequence

from core import run_dir
from core import stats
from core.search import study as study_lib

IGNORED_KEYS = ("workdir", "seed", "progress", "num_devices", "checkpoint_layout")


def run_patterns(path: str) -> list[str]:
    """Glob patterns of the run directories a report argument stands for."""
    if os.path.exists(os.path.join(path, study_lib.STUDY_FILE)):
        return [os.path.join(path, "trials", "*"), os.path.join(path, "best_seeds", "*")]
    if os.path.exists(os.path.join(path, run_dir.RESULTS_FILE)):
        return [path]
    return [os.path.join(path, "*")]


def _scalars(block: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric scalars of a (nested) test block, with dotted names."""
    out = {}
    for key, value in block.items():
        if isinstance(value, Mapping):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _parse(results: Mapping[str, Any]) -> dict[str, Any]:
    return {"config": dict(results["config"]), "best_val": results.get("best_val"),
            "steps": results.get("steps"), "wall_seconds": results.get("wall_seconds"),
            "test": _scalars(results["test"])}


def is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.endswith("_seed") or key.startswith("resolved_")


def configuration_key(config: Mapping[str, Any]) -> str:
    """What identifies a configuration: the config without seeds and paths."""
    return json.dumps({k: v for k, v in config.items() if not is_ignored(k)}, sort_keys=True,
                      default=str)


def load_runs(run_dirs: Sequence[str]) -> list[dict[str, Any]]:
    """Each finished run's config, best_val, steps, wall time and test scalars."""
    runs = []
    for workdir in run_dirs:
        record = run_dir.load_finished_results(workdir, "run", _parse)
        runs.append(dict(record, workdir=workdir))
    return runs


def _ci(values: Sequence[float | None]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return stats.mean_ci95(values) if values else None


def _short(value: Any) -> Any:
    """A float with 4 significant digits (searched values carry 17); others as they are."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _labels(groups: Mapping[str, list[dict[str, Any]]]) -> dict[str, str]:
    configs = {key: json.loads(key) for key in groups}
    keys = sorted({k for c in configs.values() for k in c})
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True)
                                       for c in configs.values()}) > 1]
    return {key: (", ".join(f"{k}={_short(c.get(k))}" for k in varying) or "all runs")
            for key, c in configs.items()}


def seed_key(config: Mapping[str, Any]) -> str:
    """The seeds of a run (`seed` and every `*_seed`)."""
    return json.dumps({k: v for k, v in config.items() if k == "seed" or k.endswith("_seed")},
                      sort_keys=True)


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration, in the order of their first run.

    A configuration counts each set of seeds once: a run repeating another
    run's configuration and seeds (a study's best trial and its rerun with the
    same seed, or two grid searches that chose the same point) is the same
    sample, so only the first is kept and `duplicates` counts the others.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    duplicates: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for run in runs:
        key = configuration_key(run["config"])
        if (key, seed_key(run["config"])) in seen:
            duplicates[key] = duplicates.get(key, 0) + 1
            continue
        seen.add((key, seed_key(run["config"])))
        groups.setdefault(key, []).append(dict(run))
    labels = _labels(groups)
    rows = []
    for key, members in groups.items():
        metrics = sorted({m for r in members for m in r["test"]})
        rows.append({
            "configuration": labels[key], "seeds": len(members),
            "best_val": _ci([r["best_val"] for r in members]),
            "test": {m: _ci([r["test"].get(m) for r in members]) for m in metrics},
            "steps": _ci([r["steps"] for r in members]),
            "wall_seconds": _ci([r["wall_seconds"] for r in members]),
            "runs": [r["workdir"] for r in members], "duplicates": duplicates.get(key, 0)})
    return rows


def _cell(value: tuple[float, float] | None, digits: int = 4) -> str:
    return "—" if value is None else stats.format_ci(value, digits)


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a markdown table (mean ± 95% CI over seeds)."""
    metrics = sorted({m for row in rows for m in row["test"]})
    header = (["configuration", "seeds", "best_val"] + [f"test {m}" for m in metrics]
              + ["steps", "wall s"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seeds = str(row["seeds"]) + (f" (+{row['duplicates']} repeated)"
                                     if row.get("duplicates") else "")
        cells = [row["configuration"], seeds, _cell(row["best_val"])]
        cells += [_cell(row["test"].get(m)) for m in metrics]
        steps, wall = row["steps"], row["wall_seconds"]
        cells += ["—" if steps is None else f"{steps[0]:.0f}",
                  "—" if wall is None else f"{wall[0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmean ± 95% CI (Student t) over the seeds of each row.\n"


def compare_searches(curves: Mapping[str, Sequence[Sequence[float | None]]],
                     checkpoints: Sequence[int] = (4, 8, 16, 32)) -> str:
    """A markdown table: per group of studies, the best value after n trials, mean ± 95% CI.

    Args:
      curves: group label (e.g. the sampler) -> each study's best-so-far curve
        (`core.search.plots.best_so_far`).
      checkpoints: the trial counts shown (those no study of a group reached are left out).
    """
    longest = max((len(c) for group in curves.values() for c in group), default=0)
    shown = [n for n in checkpoints if n <= longest] or ([longest] if longest else [])
    header = ["searches", "studies"] + [f"best after {n} trials" for n in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, group in sorted(curves.items()):
        cells = [_cell(_ci([c[n - 1] if len(c) >= n else None for c in group])) for n in shown]
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worker_counts(user_attrs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counted trials per worker (`host:pid` of the `owner` attribute)."""
    counts: dict[str, int] = {}
    for attrs in user_attrs:
        if attrs.get("superseded") or attrs.get("surplus") or "owner" not in attrs:
            continue
        owner = f"{attrs['owner']['host']}:{attrs['owner']['pid']}"
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def repeated_runs(user_attrs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Run directories or flag sets that more than one counted trial ran (should be none)."""
    seen: dict[str, int] = {}
    for attrs in user_attrs:
        if attrs.get("superseded") or attrs.get("surplus") or "run_dir" not in attrs:
            continue
        for key in (attrs["run_dir"], json.dumps(attrs.get("flags"), sort_keys=True, default=str)):
            seen[key] = seen.get(key, 0) + 1
    return sorted(k for k, n in seen.items() if n > 1)
