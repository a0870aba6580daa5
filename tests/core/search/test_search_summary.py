"""The report's table: configurations grouped over seeds, mean ± 95% CI by hand."""

import json
import math
import os

from core.search import summary


def _run(root, name, accuracy, best_val, seed, lr=0.1):
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    results = {"steps": 10, "wall_seconds": 2.0, "best_val": best_val, "best_step": 5,
               "test": {"accuracy": accuracy, "loss": 1.0 - accuracy, "per_step": [1, 2]},
               "config": {"learning_rate": lr, "seed": seed, "data_seed": seed,
                          "workdir": workdir, "resolved_conv_impl": "xla"}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)
    return workdir


def test_mean_and_ci_over_seeds_equal_a_hand_computation(tmp_path):
    dirs = [_run(str(tmp_path), f"s{i}", acc, val, i)
            for i, (acc, val) in enumerate([(0.5, 0.4), (0.6, 0.5), (0.7, 0.9)])]
    dirs.append(_run(str(tmp_path), "other", 0.2, 0.1, 0, lr=0.01))
    rows = summary.summarize(summary.load_runs(dirs))
    assert [r["configuration"] for r in rows] == ["learning_rate=0.1", "learning_rate=0.01"]
    row = rows[0]
    assert row["seeds"] == 3
    # t(0.975, df=2) = 4.302653; std (ddof 1) of 0.5, 0.6, 0.7 is 0.1.
    mean, half = row["test"]["accuracy"]
    assert math.isclose(mean, 0.6) and math.isclose(half, 4.302653 * 0.1 / math.sqrt(3),
                                                    rel_tol=1e-6)
    vals = [0.4, 0.5, 0.9]
    std = math.sqrt(sum((v - 0.6) ** 2 for v in vals) / 2)
    assert math.isclose(row["best_val"][1], 4.302653 * std / math.sqrt(3), rel_tol=1e-6)
    assert "per_step" not in row["test"]
    assert math.isnan(rows[1]["test"]["accuracy"][1])
    table = summary.markdown(rows)
    assert "| learning_rate=0.1 | 3 | 0.6000 ± 0.6572 | 0.6000 ± 0.2484 |" in table
    assert "| learning_rate=0.01 | 1 | 0.1000 |" in table


def test_searches_compared_after_n_trials_equal_a_hand_computation():
    curves = {"tpe": [[0.5, 0.6, 0.6, 0.7], [0.4, 0.8, 0.8, 0.8]], "grid": [[None, 0.3, 0.3, 0.9]]}
    table = summary.compare_searches(curves, checkpoints=(1, 2, 4, 8))
    lines = table.splitlines()
    assert lines[0] == "| searches | studies | best after 1 trials | best after 2 trials | best after 4 trials |"
    # grid: no value after 1 trial; tpe after 2 trials: mean 0.7, t(0.975, 1) = 12.7062 * 0.1414 / √2.
    assert lines[2].startswith("| grid | 1 | — | 0.3000")
    half = 12.7062047 * math.sqrt(0.02) / math.sqrt(2)
    assert f"0.7000 ± {half:.4f}" in lines[3]
    assert lines[3].endswith(f"0.7500 ± {12.7062047 * math.sqrt(0.005) / math.sqrt(2):.4f} |")


def test_workers_and_repeated_runs_count_only_counted_trials():
    owner_a, owner_b = {"host": "h", "pid": 1}, {"host": "h", "pid": 2}
    attrs = [{"owner": owner_a, "run_dir": "trials/0", "flags": {"lr": 1}},
             {"owner": owner_b, "run_dir": "trials/1", "flags": {"lr": 2}},
             {"owner": owner_b, "run_dir": "trials/0", "flags": {"lr": 1}, "superseded": True},
             {"owner": owner_a, "run_dir": "trials/2", "flags": {"lr": 3}, "surplus": True}]
    assert summary.worker_counts(attrs) == {"h:1": 1, "h:2": 1}
    assert summary.repeated_runs(attrs) == []
    attrs.append({"owner": owner_a, "run_dir": "trials/3", "flags": {"lr": 2}})
    assert summary.repeated_runs(attrs) == ['{"lr": 2}']


def test_best_so_far_counts_pruned_trials_and_the_comparison_plot_is_written(tmp_path):
    import optuna  # pylint: disable=g-import-not-at-top
    from core.search import plots  # pylint: disable=g-import-not-at-top
    study = optuna.create_study(direction="maximize")
    for value, state in [(None, "pruned"), (0.3, "complete"), (0.2, "complete"),
                         (None, "fail"), (0.5, "complete")]:
        trial = study.ask()
        if state == "complete":
            study.tell(trial, value)
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state.upper()))
    assert plots.best_so_far(study) == [None, 0.3, 0.3, 0.5]
    path = plots.plot_comparison({"random": [study, study]}, str(tmp_path / "c.png"))
    assert os.path.getsize(path) > 1000


def test_a_run_repeating_a_configuration_and_its_seeds_counts_once(tmp_path):
    dirs = [_run(str(tmp_path), "trial", 0.5, 0.4, 0), _run(str(tmp_path), "rerun_0", 0.9, 0.9, 0),
            _run(str(tmp_path), "rerun_1", 0.7, 0.5, 1),
            _run(str(tmp_path), "other", 0.2, 0.1, 0, lr=0.012345678)]
    rows = summary.summarize(summary.load_runs(dirs))
    assert rows[0]["seeds"] == 2 and rows[0]["duplicates"] == 1
    assert rows[0]["test"]["accuracy"][0] == 0.6
    assert rows[1]["configuration"] == "learning_rate=0.01235"
    assert "| 2 (+1 repeated) |" in summary.markdown(rows)
