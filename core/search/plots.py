"""PNG figures of a study: its history, each parameter against the objective, importances.

Drawn on matplotlib's Agg canvas without pyplot (as `core.plots`), so they
work headless. Parameter importances use Optuna's fANOVA (it needs
scikit-learn); without scikit-learn they fall back to Optuna's PED-ANOVA,
which needs nothing more, and the report says which one it used.
"""

import math
import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import optuna
from optuna.trial import TrialState


def _save(figure: Figure, path: str) -> str:
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def plot_history(study: optuna.Study, path: str) -> str:
    """Each complete trial's objective and the best so far, against the trial number."""
    trials = _complete(study)
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best, bests = None, []
    for trial in trials:
        best = trial.value if best is None else better(best, trial.value)
        bests.append(best)
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    axes.plot([t.number for t in trials], [t.value for t in trials], "o", markersize=4,
              label="trial")
    axes.step([t.number for t in trials], bests, where="post", label="best so far")
    axes.set_xlabel("trial number")
    axes.set_ylabel("best_val (objective)")
    axes.set_title(f"{study.study_name}: {study.direction.name.lower()}")
    axes.legend()
    return _save(figure, path)


def plot_params(study: optuna.Study, path: str) -> str | None:
    """One panel per parameter: its value against the objective (None: no parameter)."""
    trials = _complete(study)
    names = sorted({n for t in trials for n in t.params})
    if not names:
        return None
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.2 * rows))
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        points = [(t.params[name], t.value) for t in trials if name in t.params]
        xs = [p[0] for p in points]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            distribution = next(t.distributions[name] for t in trials if name in t.params)
            if getattr(distribution, "log", False):
                axes.set_xscale("log")
        else:
            labels = sorted({str(x) for x in xs})
            axes.set_xticks(range(len(labels)), labels)
            xs = [labels.index(str(x)) for x in xs]
        axes.plot(xs, [p[1] for p in points], "o", markersize=4)
        axes.set_xlabel(name)
        axes.set_ylabel("best_val")
    figure.tight_layout()
    return _save(figure, path)


def importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """(parameter -> importance, which evaluator or why there are none)."""
    if len(_complete(study)) < 2:
        return {}, "too few complete trials for parameter importances"
    try:
        import sklearn  # pylint: disable=g-import-not-at-top,unused-import
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        name = "PED-ANOVA (scikit-learn is not installed, so no fANOVA)"
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), name
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return {}, f"no parameter importances ({err})"


def plot_importances(values: dict[str, float], method: str, path: str) -> str | None:
    """A bar per parameter (None when there are no importances)."""
    if not values:
        return None
    names = sorted(values, key=values.get)
    figure = Figure(figsize=(6.4, 0.5 * len(names) + 1.5))
    axes = figure.add_subplot()
    axes.barh(names, [values[n] for n in names])
    axes.set_xlabel(f"importance ({method.split(' ')[0]})")
    return _save(figure, path)


def best_so_far(study: optuna.Study) -> list[float | None]:
    """After each finished trial (complete or pruned, in number order), the best complete value.

    Pruned trials spend budget without a value, so they advance the count;
    failed trials (a killed run later retried, a surplus) do not.
    """
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    best, out = None, []
    for trial in sorted(finished, key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE:
            best = trial.value if best is None else better(best, trial.value)
        out.append(best)
    return out


def plot_comparison(groups: dict[str, list[optuna.Study]], path: str) -> str:
    """Best value so far against trials spent: a thin line per study, the group mean bold."""
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    for index, (label, studies) in enumerate(sorted(groups.items())):
        color = f"C{index}"
        curves = [best_so_far(s) for s in studies]
        for curve in curves:
            axes.step(range(1, len(curve) + 1), [math.nan if v is None else v for v in curve],
                      where="post", color=color, alpha=0.3, linewidth=1)
        length = min(len(c) for c in curves)
        mean = [sum(math.nan if c[i] is None else c[i] for c in curves) / len(curves)
                for i in range(length)]
        axes.step(range(1, length + 1), mean, where="post", color=color, linewidth=2.2,
                  label=f"{label} (mean of {len(curves)})")
    axes.set_xlabel("trials finished")
    axes.set_ylabel("best validation value so far")
    axes.legend()
    return _save(figure, path)


def plot_study(study: optuna.Study, out_dir: str, prefix: str) -> dict[str, Any]:
    """Every figure of a study in `out_dir`; returns the files and the importances."""
    os.makedirs(out_dir, exist_ok=True)
    files = []
    if _complete(study):
        files.append(plot_history(study, os.path.join(out_dir, f"{prefix}_history.png")))
        files.append(plot_params(study, os.path.join(out_dir, f"{prefix}_params.png")))
    values, method = importances(study)
    files.append(plot_importances(values, method,
                                  os.path.join(out_dir, f"{prefix}_importances.png")))
    return {"files": [f for f in files if f], "importances": values, "method": method}
