"""Tests for the four-scenario transfer table."""

import json
import math
import os
import subprocess
import sys

import pytest

from core.errors import ConfigError
from transfer import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(root, strategy, n, seed, accuracy, **config):
    workdir = os.path.join(root, f"{strategy}_n{n}_s{seed}")
    os.makedirs(workdir)
    base = {"dataset": "mnist", "classes": [5, 6, 7, 8, 9], "train_per_class": n,
            "strategy": strategy, "seed": seed, "data_seed": seed, "workdir": workdir,
            "num_steps": 100, "learning_rate": 1e-3}
    base.update(config)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"config": base, "test": {"accuracy": accuracy}}, f)
    return workdir


def _grid(root):
    accuracies = {"scratch": (0.80, 0.82, 0.84), "finetune": (0.90, 0.91, 0.92),
                  "feature_extraction": (0.60, 0.70, 0.80)}
    return [_write(root, s, 10, seed, a) for s, values in accuracies.items()
            for seed, a in enumerate(values)]


def test_cells_give_mean_and_t_interval_in_percent_and_the_winner(tmp_path):
    table = report.summarize(report.read_run(d) for d in _grid(str(tmp_path)))
    cell = table["mnist 5-9"]["10/class"]
    mean, half = cell["strategies"]["finetune"]["accuracy"]
    assert mean == pytest.approx(91.0)
    assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)  # std 1 point
    assert cell["best"] == "finetune"
    # Finetune 91 ± 2.48; scratch 82 ± 4.97 stops short of 88.52, feature extraction
    # 70 ± 24.8 reaches it.
    assert cell["tied"] == ["feature_extraction"]
    text = report.markdown(table)
    assert "**91.00 ± 2.48**" in text and "| mnist 5-9 | 10/class | finetune |" in text


def test_a_cell_mixing_protocols_or_seeds_is_refused(tmp_path):
    dirs = _grid(str(tmp_path / "a"))
    dirs.append(_write(str(tmp_path / "a"), "lp_ft", 10, 0, 0.9, num_steps=999))
    with pytest.raises(ConfigError, match="num_steps"):
        report.summarize(report.read_run(d) for d in dirs)
    dirs = _grid(str(tmp_path / "b"))
    dirs.append(_write(str(tmp_path / "b"), "lp_ft", 10, 0, 0.9))
    with pytest.raises(ConfigError, match=r"lp_ft lacks seeds \[1, 2\]"):
        report.summarize(report.read_run(d) for d in dirs)
    table = report.summarize((report.read_run(d) for d in dirs), allow_unequal_seeds=True)
    assert table["mnist 5-9"]["10/class"]["strategies"]["lp_ft"]["seeds"] == [0]


def test_the_entry_point_prints_the_table_and_exits_2_without_runs(tmp_path):
    _grid(str(tmp_path))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ok = subprocess.run([sys.executable, "-m", "experiments.transfer_report",
                         f"--runs={tmp_path}/*"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| finetune |" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.transfer_report",
                          f"--runs={tmp_path}/nothing*"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no run directory with a results.json" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_distillation_and_domain_adaptation_rows_are_labelled_by_their_options(tmp_path):
    root = str(tmp_path)
    dirs = []
    for seed in range(2):
        dirs.append(_write(root, "distill", 0, seed, 0.97, distill_lambda=1.0,
                           distill_temperature=4.0, classes=[], workdir=f"t4_{seed}"))
        dirs.append(_write(root + "/b", "distill", 0, seed, 0.96, distill_lambda=0.0,
                           distill_temperature=4.0, classes=[], workdir=f"a_{seed}"))
    table = report.summarize(report.read_run(d) for d in dirs)
    assert sorted(table["mnist"]["all"]["strategies"]) == ["alone (λ=0)", "distill T=4"]
    da = [_write(root + f"/da{seed}", "dann", 0, seed, 0.5, da_target="inverted",
                 da_selection="oracle", classes=[]) for seed in range(2)]
    table = report.summarize(report.read_run(d) for d in da)
    assert list(table["mnist → inverted"]["all"]["strategies"]) == ["dann (oracle)"]


def test_a_run_fine_tuned_from_a_maml_run_is_its_own_row(tmp_path):
    from transfer import report as report_lib  # pylint: disable=g-import-not-at-top
    maml, plain = tmp_path / "maml", tmp_path / "plain"
    for path, config in ((maml, {"inner_lr": 0.4, "dataset": "omniglot"}),
                         (plain, {"strategy": "scratch", "dataset": "omniglot_maml_train"})):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
    assert report_lib.strategy_label({"strategy": "finetune",
                                      "source_workdir": str(maml)}) == "finetune (MAML source)"
    assert report_lib.strategy_label({"strategy": "finetune",
                                      "source_workdir": str(plain)}) == "finetune"
    assert report_lib.strategy_label({"strategy": "scratch"}) == "scratch"
