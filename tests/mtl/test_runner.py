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
from core.errors import ConfigError, DataError
from core.metrics import read_metrics
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


def _regression(workdir, **overrides):
    base = dict(workdir=str(workdir), benchmark="regression", num_tasks=2, val_size=100,
                batch_size=50, eval_batch_size=100, num_steps=6, eval_every=3,
                checkpoint_every=3, log_every=1, num_devices=1, progress=False)
    base.update(overrides)
    return runner.MtlRunConfig(**base)


def test_mixed_heads_report_per_task_metrics_weights_and_plots(tmp_path, mnist_dir):
    results = _train(_config(tmp_path / "mtl", mnist_dir, method="gradnorm"))
    on_disk = json.loads((tmp_path / "mtl" / "results.json").read_text())
    assert on_disk["tasks"] == results["tasks"]
    assert set(results["tasks"]["digit"]) == {"accuracy"}
    assert set(results["tasks"]["angle"]) == {"mae", "mse"}
    assert set(results["final_weights"]) == {"digit", "angle"}
    assert sum(results["final_weights"].values()) == pytest.approx(2.0, rel=1e-4)
    for task in ("digit", "angle"):
        assert (tmp_path / "mtl" / f"weight_{task}_vs_steps.png").exists()


def test_delta_m_against_single_task_runs_of_the_same_entry_point(tmp_path):
    stl = {task: _train(_regression(tmp_path / task, tasks=(task,))) for task in ("y0", "y1")}
    assert all(set(r["tasks"]) == {t} for t, r in stl.items())
    pairs = tuple(f"{t}={tmp_path / t}" for t in stl)
    results = _train(_regression(tmp_path / "mtl", method="upgrad", stl_workdirs=pairs))
    baselines = {t: r["tasks"][t] for t, r in stl.items()}
    directions = {t: {"mae": False, "mse": False} for t in stl}
    assert results["delta_m"] == pytest.approx(
        mtl_metrics.delta_m(results["tasks"], baselines, directions))
    assert results["delta_p"] == pytest.approx(
        mtl_metrics.delta_p(results["tasks"], baselines, directions))
    with pytest.raises(DataError, match="no finished single-task result"):
        _train(_regression(tmp_path / "bad", stl_workdirs=(f"y0={tmp_path / 'nowhere'}",)))


def test_resumed_stateful_weighting_ends_bit_identical(tmp_path):
    full = _train(_regression(tmp_path / "full", method="famo"))
    _train(_regression(tmp_path / "split", method="famo", num_steps=3))
    resumed = _train(_regression(tmp_path / "split", method="famo"))
    assert resumed["tasks"] == full["tasks"]
    chex.assert_trees_all_equal(experiment.load_train_state(str(tmp_path / "full"), "latest"),
                                experiment.load_train_state(str(tmp_path / "split"), "latest"))


def test_last_k_protocol_averages_the_last_test_evaluations(tmp_path):
    results = _train(_regression(tmp_path / "run", protocol="last_k", last_k=2))
    assert results["test"]["protocol"] == "last_k" and results["test"]["last_k"] == 2
    rows = [r for r in read_metrics(tmp_path / "run", split="val")][-2:]
    assert results["tasks"]["y0"]["mse"] == pytest.approx(
        sum(r["test:y0/mse"] for r in rows) / 2)


def test_school_is_task_indexed_and_reports_explained_variance(tmp_path):
    write_fake_school(str(tmp_path / "school" / "school.mat"), n_tasks=4, seed=0,
                      students=(20, 30))
    results = _train(runner.MtlRunConfig(
        workdir=str(tmp_path / "run"), benchmark="school", data_dir=str(tmp_path / "school"),
        method="upgrad", val_size=8, batch_per_task=2, num_steps=4, eval_every=2,
        checkpoint_every=2, num_devices=1, progress=False))
    assert set(results["tasks"]) == {"all"}
    assert set(results["tasks"]["all"]) == {"explained_variance", "mse", "mae"}
    with pytest.raises(ConfigError, match="set --batch_per_task"):
        _train(runner.MtlRunConfig(workdir=str(tmp_path / "uniform"), benchmark="school",
                                   data_dir=str(tmp_path / "school"), method="famo",
                                   val_size=8, batch_size=16, num_devices=1, progress=False))
    with pytest.raises(ConfigError, match="mgda_ub"):
        _train(runner.MtlRunConfig(workdir=str(tmp_path / "ub"), benchmark="school",
                                   data_dir=str(tmp_path / "school"), method="mgda_ub",
                                   val_size=8, batch_size=16, num_devices=1, progress=False))


@pytest.mark.parametrize("overrides, message", [
    ({"method": "static", "weights": (1.0, -1.0)}, "static"),
    ({"tasks": ("digit", "colour")}, "colour"),
    ({"data_dir": None}, "--data_dir is required for --benchmark=rotated_mnist"),
    ({"batch_per_task": 2}, "--batch_per_task is for task-indexed data"),
])
def test_bad_input_gives_one_clear_error(tmp_path, mnist_dir, overrides, message):
    data_dir = overrides.pop("data_dir", mnist_dir)
    with pytest.raises(ConfigError, match=message):
        _train(_config(tmp_path / "run", data_dir, **overrides))


def test_the_entry_point_exits_2_with_one_line_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.mtl", "--method=adamw",
                           f"--workdir={tmp_path / 'run'}", "--noprogress"], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown --method='adamw'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_school_subset_keeps_only_its_own_examples(tmp_path):
    from mtl.data import TASK_INDEX, load_benchmark
    write_fake_school(str(tmp_path / "school.mat"), n_tasks=4, seed=0, students=(20, 30))
    benchmark = load_benchmark("school", data_dir=str(tmp_path), val_size=4,
                               only_tasks=("school001", "school003"))
    assert list(benchmark.tasks) == ["school001", "school003"]
    assert benchmark.task_ids == {"school001": 1, "school003": 3}
    for split in benchmark.splits.values():
        assert set(split.y[TASK_INDEX].tolist()) == {1, 3}


def test_the_train_step_compiles_once(tmp_path):
    # The initial state is placed on the mesh as the step's outputs are; otherwise the
    # second step compiles the program again.
    import jax

    from core import mesh as mesh_lib
    config = runner.MtlRunConfig(workdir=str(tmp_path / "w"), benchmark="regression",
                                 method="upgrad", val_size=100, num_steps=3, num_devices=1)
    program = runner.build(config, mesh_lib.make_mesh(jax.devices()[:1]))
    state = program.state
    for step in range(3):
        state, _ = program.train_step(state, program.batch_fn(step))
    assert program.train_step._cache_size() == 1
