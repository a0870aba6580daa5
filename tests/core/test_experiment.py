"""The run skeleton on a tiny supervised family: results, kill -9 and resume,
early stopping, the loss guard, the workdir lock, old layouts, template-free loading."""

import json
import os
import subprocess
import sys

import chex
import jax
import pytest

from core import experiment
from core import run_lock
from core.errors import ConfigError, DataError, TrainingDiverged
from core.metrics import read_metrics
from tests.core import toy_family

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(workdir, **overrides):
    config = toy_family.ToyConfig(workdir=str(workdir), **overrides)
    return experiment.train_and_evaluate(config, toy_family.build)


def _rows(workdir):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    return workdir, _run(workdir, dropout=0.3, weight_decay=0.01)


def test_run_writes_results_and_selects_the_best_validation_state(reference):
    workdir, results = reference
    assert json.loads((workdir / "results.json").read_text())["test"] == results["test"]
    assert set(results["test"]) == {"accuracy", "loss"}
    assert results["steps"] == 12 and results["stopped_early"] is False
    val = {r["step"]: r["accuracy"] for r in read_metrics(workdir, split="val")}
    assert sorted(val) == [0, 4, 8, 12]
    assert results["best_step"] == results["tested_checkpoint_step"]
    assert val[results["best_step"]] == max(val.values()) == results["best_val"]
    assert results["config"]["checkpoint_layout"] == experiment.CHECKPOINT_LAYOUT


def test_kill_9_mid_run_and_rerun_is_bit_identical(reference, tmp_path):
    workdir, results = reference
    killed = tmp_path / "killed"
    # The same XLA settings as this process (tests/conftest.py), so both runs compile alike.
    code = ("import jax; jax.config.update('jax_disable_most_optimizations', "
            f"{jax.config.values['jax_disable_most_optimizations']}); "
            "from core import experiment; from tests.core import toy_family; "
            f"experiment.train_and_evaluate(toy_family.ToyConfig(workdir={str(killed)!r}, "
            "dropout=0.3, weight_decay=0.01, kill_at_step=7), toy_family.build)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "results.json").exists()
    assert experiment.load_train_state(str(killed), "latest")["step"] == 6
    resumed = _run(killed, dropout=0.3, weight_decay=0.01)
    assert resumed["test"] == results["test"]
    chex.assert_trees_all_equal(experiment.load_train_state(str(killed), "latest"),
                                experiment.load_train_state(str(workdir), "latest"))
    assert _rows(killed) == _rows(workdir)


def test_dropout_and_weight_decay_change_the_run(reference, tmp_path):
    workdir, _ = reference
    plain = tmp_path / "plain"
    _run(plain)
    a = experiment.load_params(str(workdir), "latest")
    b = experiment.load_params(str(plain), "latest")
    assert a["Dense_0"]["kernel"].tolist() != b["Dense_0"]["kernel"].tolist()


def test_patience_stops_early_and_a_rerun_stays_stopped(tmp_path):
    # A vanishing learning rate: validation accuracy never improves after step 0.
    results = _run(tmp_path / "run", learning_rate=1e-12, patience=2, eval_every=2)
    assert results["stopped_early"] is True
    assert results["steps"] == 4 and results["best_step"] == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run", split="val")] == [0, 2, 4]
    again = _run(tmp_path / "run", learning_rate=1e-12, patience=2, eval_every=2)
    assert again["steps"] == 4 and again["test"] == results["test"]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"nan at step 5\b.*step 3"):
        _run(tmp_path / "run", nan_from_step=4, eval_every=0)
    assert not (tmp_path / "run" / "results.json").exists()
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3"]


def test_a_live_run_holds_its_workdir(tmp_path):
    workdir = tmp_path / "run"
    with run_lock.hold(str(workdir)):
        with pytest.raises(ConfigError, match=rf"in use by process {os.getpid()} on host"):
            _run(workdir)
    assert not (workdir / "results.json").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / run_lock.LOCK_FILE).write_text(
        json.dumps({"host": "elsewhere", "pid": 999999, "since": "yesterday"}))
    assert _run(workdir, num_steps=2)["steps"] == 2


def test_a_workdir_of_an_older_checkpoint_layout_is_refused(tmp_path):
    workdir = tmp_path / "run"
    _run(workdir, num_steps=3)
    config = json.loads((workdir / "config.json").read_text())
    del config["checkpoint_layout"]
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="older layout.*new --workdir"):
        _run(workdir, num_steps=6)


def test_load_params_reads_another_run_without_its_model(reference, tmp_path):
    workdir, _ = reference
    best = experiment.load_train_state(str(workdir), "best")
    assert int(best["step"]) == _run(workdir, dropout=0.3, weight_decay=0.01)["best_step"]
    params = experiment.load_params(str(workdir))
    assert params["Dense_1"]["kernel"].shape == (16, 2)
    with pytest.raises(DataError, match="no checkpoint"):
        experiment.load_params(str(tmp_path))
