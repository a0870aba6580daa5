"""The results table over run directories: Δm against the baselines, CIs, mean rank."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.errors import ConfigError
from mtl import report

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(root, name, method, tasks, seed, metrics, **config):
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    cfg = {"benchmark": "multi_mnist", "method": method, "tasks": list(tasks), "seed": seed,
           "num_steps": 10, "learning_rate": 1e-3, "workdir": workdir, **config}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"config": cfg, "task_names": list(tasks), "tasks": metrics}, f)
    return workdir


def _grid(root):
    dirs = []
    for seed, (left, right) in enumerate([(90.0, 80.0), (92.0, 82.0)]):
        dirs.append(_write(root, f"stl_l{seed}", "equal", ["left"], seed,
                           {"left": {"accuracy": left}}))
        dirs.append(_write(root, f"stl_r{seed}", "equal", ["right"], seed,
                           {"right": {"accuracy": right}}))
    for seed, (a, b) in enumerate([(91.0, 79.0), (93.0, 83.0)]):
        dirs.append(_write(root, f"eq{seed}", "equal", ["left", "right"], seed,
                           {"left": {"accuracy": a}, "right": {"accuracy": b}}))
        dirs.append(_write(root, f"up{seed}", "upgrad", ["left", "right"], seed,
                           {"left": {"accuracy": a + 1}, "right": {"accuracy": b + 1}}))
    return dirs


def test_table_has_delta_m_per_seed_against_the_mean_baseline(tmp_path):
    table = report.summarize(report.read_run(d) for d in _grid(str(tmp_path)))
    entry = table["multi_mnist"]
    assert entry["baselines"] == {"left": {"accuracy": 91.0}, "right": {"accuracy": 81.0}}
    # equal, seed 0: -(91-91)/91 and -(79-81)/81, averaged, in percent.
    seed0 = 100 * np.mean([0.0, 2.0 / 81])
    seed1 = 100 * np.mean([-2.0 / 91, -2.0 / 81])
    mean, half = entry["methods"]["equal"]["delta_m"]
    assert mean == pytest.approx((seed0 + seed1) / 2)
    assert half == pytest.approx(12.706 * abs(seed0 - seed1) / 2, rel=1e-3)  # t(0.975, 1)
    assert entry["mean_rank"] == {"equal": 2.0, "upgrad": 1.0}
    assert entry["ranked_methods"] == ["equal", "upgrad"]
    text = report.markdown(table)
    assert "| upgrad | 0,1 |" in text and "Mean rank over: equal, upgrad." in text


def test_mixed_protocols_are_refused(tmp_path):
    dirs = _grid(str(tmp_path))
    dirs.append(_write(str(tmp_path), "long", "famo", ["left", "right"], 0,
                       {"left": {"accuracy": 1.0}, "right": {"accuracy": 1.0}}, num_steps=99))
    with pytest.raises(ConfigError, match="num_steps"):
        report.summarize(report.read_run(d) for d in dirs)


def test_the_entry_point_prints_the_table_and_refuses_no_runs(tmp_path):
    _grid(str(tmp_path))
    cmd = [sys.executable, "-m", "experiments.mtl_report", f"--runs={tmp_path}/*"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=_REPO)
    assert out.returncode == 0, out.stderr
    assert "**multi_mnist**" in out.stdout and "single-task" in out.stdout
    empty = subprocess.run(cmd[:-1] + [f"--runs={tmp_path}/nothing*"], capture_output=True,
                           text=True, cwd=_REPO)
    assert empty.returncode == 2 and "no run directory" in empty.stderr
