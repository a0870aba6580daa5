"""Multi-task runs end to end on generated files: results, Δm against single-task runs,
weights, resume, bad input."""

import json
import os
import subprocess
import sys

import chex
import pytest

from core import experiment
from core.datasets.fake_idx import write_fake_idx_dataset
from core.datasets.fake_school import write_fake_school
from core.errors import ConfigError
from mtl import metrics as mtl_metrics
from mtl import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mnist")
    write_fake_idx_dataset(str(path), n_train=48, n_test=20)
    return str(path)


def _config(workdir, data_dir, **overrides):
    base = dict(workdir=str(workdir), benchmark="rotated_mnist", data_dir=data_dir,
                val_size=16, batch_size=16, eval_batch_size=16, num_steps=6, eval_every=3,
                checkpoint_every=3, log_every=1, num_devices=1, progress=False)
    base.update(overrides)
    return runner.MtlRunConfig(**base)


def _train(config):
    return experiment.train_and_evaluate(config, runner.build)


def test_mixed_heads_report_per_task_metrics_and_delta_m(tmp_path, mnist_dir):
    stl = {task: _train(_config(tmp_path / task, mnist_dir, tasks=(task,)))
           for task in ("digit", "angle")}
    pairs = tuple(f"{t}={tmp_path / t}" for t in stl)
    results = _train(_config(tmp_path / "mtl", mnist_dir, method="gradnorm",
                             stl_workdirs=pairs))
    on_disk = json.loads((tmp_path / "mtl" / "results.json").read_text())
    assert on_disk["tasks"] == results["tasks"]
    assert set(results["tasks"]) == {"digit", "angle"}
    assert set(results["tasks"]["digit"]) == {"accuracy"}
    assert set(results["tasks"]["angle"]) == {"mae", "mse"}
    baselines = {t: r["tasks"][t] for t, r in stl.items()}
    directions = {"digit": {"accuracy": True}, "angle": {"mae": False, "mse": False}}
    assert results["delta_m"] == pytest.approx(
        mtl_metrics.delta_m(results["tasks"], baselines, directions))
    assert set(results["final_weights"]) == {"digit", "angle"}
    assert sum(results["final_weights"].values()) == pytest.approx(2.0, rel=1e-4)
    for task in ("digit", "angle"):
        assert (tmp_path / "mtl" / f"weight_{task}_vs_steps.png").exists()


def test_resumed_stateful_weighting_ends_bit_identical(tmp_path, mnist_dir):
    full = _train(_config(tmp_path / "full", mnist_dir, method="famo"))
    _train(_config(tmp_path / "split", mnist_dir, method="famo", num_steps=3))
    resumed = _train(_config(tmp_path / "split", mnist_dir, method="famo"))
    assert resumed["tasks"] == full["tasks"]
    chex.assert_trees_all_equal(experiment.load_train_state(str(tmp_path / "full"), "latest"),
                                experiment.load_train_state(str(tmp_path / "split"), "latest"))


def test_last_k_protocol_averages_the_last_test_evaluations(tmp_path, mnist_dir):
    results = _train(_config(tmp_path / "run", mnist_dir, protocol="last_k", last_k=2))
    assert results["test"]["protocol"] == "last_k" and results["test"]["last_k"] == 2
    assert 0 <= results["tasks"]["digit"]["accuracy"] <= 100


def test_school_is_task_indexed_and_reports_explained_variance(tmp_path):
    write_fake_school(str(tmp_path / "school" / "school.mat"), n_tasks=4, seed=0,
                      students=(20, 30))
    results = _train(runner.MtlRunConfig(
        workdir=str(tmp_path / "run"), benchmark="school", data_dir=str(tmp_path / "school"),
        method="upgrad", val_size=8, batch_size=16, num_steps=4, eval_every=2,
        checkpoint_every=2, num_devices=1, progress=False))
    assert set(results["tasks"]) == {"all"}
    assert set(results["tasks"]["all"]) == {"explained_variance", "mse", "mae"}
    with pytest.raises(ConfigError, match="mgda_ub"):
        _train(runner.MtlRunConfig(workdir=str(tmp_path / "ub"), benchmark="school",
                                   data_dir=str(tmp_path / "school"), method="mgda_ub",
                                   val_size=8, batch_size=16, num_devices=1, progress=False))


@pytest.mark.parametrize("args, message", [
    (["--method=adamw"], "unknown --method='adamw'"),
    (["--method=static", "--weights=1,-1"], "static"),
    (["--tasks=digit,colour"], "colour"),
    (["--benchmark=rotated_mnist"], "--data_dir is required"),
])
def test_bad_input_gives_one_clear_error(tmp_path, mnist_dir, args, message):
    common = [f"--workdir={tmp_path / 'run'}", "--num_steps=2", "--val_size=16",
              "--batch_size=16", "--noprogress", "--benchmark=rotated_mnist"]
    if args != ["--benchmark=rotated_mnist"]:
        common.append(f"--data_dir={mnist_dir}")
    proc = subprocess.run([sys.executable, "-m", "experiments.mtl", *common, *args], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
