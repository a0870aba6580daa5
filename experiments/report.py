r"""A report over run and study directories: a markdown table and, for studies, plots.

    python -m experiments.report studies/fashion_finetune_n10 runs/fashion_finetune_n10_s* \
      --out=reports/fashion_finetune

Each argument is a run directory, a study directory (its trials/ and
best_seeds/ runs) or a folder of run directories. `<out>/report.md` has one
row per configuration (runs whose config differs only in seeds and workdir):
the number of seeds, mean ± 95% CI over them of best_val and of each test
metric, the steps and wall time (`core/search/summary.py`). For each study,
`<out>/<study>_history.png` (best value against trial number),
`<study>_params.png` (each parameter against the objective) and
`<study>_importances.png` (Optuna's parameter importances).

Exit status: 0 done; 2 bad input (one line on stderr).
"""

import os
import sys

from absl import app
from absl import flags
import optuna

from core import run_dir
from core.errors import UserInputError
from core.search import plots
from core.search import study as study_lib
from core.search import summary

flags.DEFINE_string("out", None, "Where report.md and the plots go.")
flags.DEFINE_string("storage", None, "The storage URL of the studies, when study.json's is "
                    "masked (it had a password).")


def _study_section(path: str, out: str) -> list[str]:
    study = study_lib.load_study(path, flags.FLAGS.storage)
    prefix = os.path.basename(os.path.abspath(path))
    drawn = plots.plot_study(study, out, prefix)
    lines = [f"## Study {study.study_name} ({path})", ""]
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    lines.append(", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials")
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines.append(f"\nbest trial {best.number}: best_val {best.value:.6g}, {best.params}")
    attrs = [t.user_attrs for t in study.get_trials(deepcopy=False)]
    workers = summary.worker_counts(attrs)
    lines.append("\ntrials per worker: " + (", ".join(f"{w} {n}" for w, n in sorted(
        workers.items())) or "none recorded"))
    repeated = summary.repeated_runs(attrs)
    lines.append("run twice: " + (", ".join(repeated) if repeated else "none"))
    lines.append(f"\nparameter importances: {drawn['method']}")
    for name, value in sorted(drawn["importances"].items(), key=lambda kv: -kv[1]):
        lines.append(f"* {name}: {value:.3f}")
    lines += [""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in drawn["files"]]
    return lines + [""]


def _comparison_section(study_paths: list[str], out: str) -> list[str]:
    """Several studies: best value against trials, grouped by their sampler (and pruner)."""
    groups: dict[str, list[optuna.Study]] = {}
    for path in study_paths:
        record = study_lib.read_config(path) or {}
        label = record.get("sampler", "?")
        if record.get("pruner", "none") != "none":
            label += f" + {record['pruner']} pruner"
        groups.setdefault(label, []).append(study_lib.load_study(path, flags.FLAGS.storage))
    figure = plots.plot_comparison(groups, os.path.join(out, "comparison_best_so_far.png"))
    curves = {label: [plots.best_so_far(s) for s in studies] for label, studies in groups.items()}
    return ["## Searches compared", "", summary.compare_searches(curves), "",
            f"![{os.path.basename(figure)}]({os.path.basename(figure)})", ""]


def report(paths: list[str], out: str) -> str:
    """Writes report.md and the plots; returns the markdown."""
    os.makedirs(out, exist_ok=True)
    patterns = [p for path in paths for p in summary.run_patterns(path)]
    rows = summary.summarize(summary.load_runs(run_dir.finished_run_dirs(patterns)))
    sections = ["# Report", "", summary.markdown(rows)]
    study_paths = [p for p in paths if os.path.exists(os.path.join(p, study_lib.STUDY_FILE))]
    if len(study_paths) > 1:
        sections += _comparison_section(study_paths, out)
    for path in study_paths:
        sections += _study_section(path, out)
    text = "\n".join(sections)
    run_dir.atomic_write_text(os.path.join(out, "report.md"), text)
    return text


def main(argv: list[str]) -> None:
    paths = argv[1:]
    try:
        if not paths:
            raise UserInputError("name at least one run or study directory")
        if not flags.FLAGS.out:
            raise UserInputError("--out is required")
        missing = [p for p in paths if not os.path.isdir(p)]
        if missing:
            raise UserInputError(f"not a directory: {', '.join(missing)}")
        print(report(paths, flags.FLAGS.out))
        print(f"report: {os.path.join(flags.FLAGS.out, 'report.md')}")
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
