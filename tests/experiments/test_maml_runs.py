"""End-to-end tests of MAML runs: results, determinism, resumption, Omniglot files, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from core import experiment
from core.datasets.fake import write_fake_omniglot
from core.metrics import read_metrics
from meta import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sinusoid_config(workdir, **overrides):
    base = dict(workdir=str(workdir), dataset="sinusoid", shots=5, query=5, meta_batch_size=4,
                num_steps=20, eval_every=10, checkpoint_every=5, log_every=5, eval_tasks=40,
                val_tasks=16, eval_inner_steps=3, num_devices=1, progress=False)
    base.update(overrides)
    return runner.MamlRunConfig(**base)


def _train(config):
    return experiment.train_and_evaluate(config, runner.build)


def _state(config, which):
    return experiment.load_train_state(config.workdir, which)


def _metrics_without_time(workdir):
    return [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(workdir)]


def test_sinusoid_run_writes_valid_results(tmp_path):
    results = _train(_sinusoid_config(tmp_path / "run"))
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["test"] == results["test"]
    assert set(on_disk) >= {"dataset", "ways", "shots", "steps", "wall_seconds", "test",
                            "config", "versions"}
    test = on_disk["test"]
    assert test["metric"] == "mse" and test["num_tasks"] == 40
    assert len(test["per_step"]) == 4 and test["mean"] == test["per_step"][-1]
    assert test["inner_steps"] == 3 and test["ci95"] == test["per_step_ci95"][-1]
    assert test["per_step"][3] < test["per_step"][0]  # adaptation helps
    assert on_disk["versions"]["jax"] == jax.__version__
    for name in ("config.json", "versions.json", "metrics.jsonl",
                 "val_mse_vs_steps.png", "test_mse_vs_inner_steps.png"):
        assert (tmp_path / "run" / name).exists(), name
    assert os.listdir(tmp_path / "run" / "tensorboard")
    splits = {row["split"] for row in read_metrics(tmp_path / "run")}
    assert splits == {"train", "val", "test"}


def test_same_seed_gives_bit_identical_parameters_and_evaluation(tmp_path):
    a = _train(_sinusoid_config(tmp_path / "a"))
    b = _train(_sinusoid_config(tmp_path / "b"))
    assert a["test"]["per_step"] == b["test"]["per_step"]
    state_a = _state(_sinusoid_config(tmp_path / "a"), "latest")
    state_b = _state(_sinusoid_config(tmp_path / "b"), "latest")
    chex.assert_trees_all_equal(state_a["params"], state_b["params"])
    _train(_sinusoid_config(tmp_path / "c", seed=1))
    state_c = _state(_sinusoid_config(tmp_path / "c", seed=1), "latest")
    assert not np.array_equal(state_a["params"]["trunk"]["dense0"]["kernel"],
                              state_c["params"]["trunk"]["dense0"]["kernel"])


def test_resume_after_stop_matches_uninterrupted_run(tmp_path):
    full = _train(_sinusoid_config(tmp_path / "full"))
    _train(_sinusoid_config(tmp_path / "split", num_steps=10))
    resumed = _train(_sinusoid_config(tmp_path / "split"))
    assert resumed["test"]["per_step"] == full["test"]["per_step"]
    chex.assert_trees_all_equal(
        _state(_sinusoid_config(tmp_path / "full"), "latest"),
        _state(_sinusoid_config(tmp_path / "split"), "latest"))
    assert _metrics_without_time(tmp_path / "full") == [
        row for row in _metrics_without_time(tmp_path / "split")
        if not (row["split"] == "test" and row["step"] == 10)]


def _cli(*args, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.maml", "--noprogress", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          **kwargs)


@pytest.mark.timeout(400)
def test_kill_9_and_rerun_ends_with_the_same_numbers(tmp_path):
    args = ["--shots=5", "--query=5", "--meta_batch_size=4", "--num_steps=3000",
            "--eval_every=1000", "--checkpoint_every=200", "--log_every=100",
            "--eval_tasks=40", "--val_tasks=16", "--eval_inner_steps=2"]
    reference = _cli(*args, f"--workdir={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.maml", "--noprogress", *args,
                             f"--workdir={killed_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 200
    ckpt_dir = killed_dir / "checkpoints"
    while time.time() < deadline:
        steps = [d for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else []) if d.isdigit()]
        if steps and max(int(s) for s in steps) >= 600:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "results.json").exists(), "the run finished before the kill"
    rerun = _cli(*args, f"--workdir={killed_dir}")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())
    got = json.loads((killed_dir / "results.json").read_text())
    assert got["test"]["per_step"] == ref["test"]["per_step"]
    assert _metrics_without_time(killed_dir) == _metrics_without_time(tmp_path / "ref")


def _omniglot_config(tmp_path, **overrides):
    data_dir = tmp_path / "omniglot"
    if not data_dir.exists():
        write_fake_omniglot(str(data_dir), n_alphabets=2, chars_per_alphabet=3)
    base = dict(workdir=str(tmp_path / "run"), dataset="omniglot", data_dir=str(data_dir),
                cache_dir=str(tmp_path / "cache"), omniglot_split=(6, 3), ways=3, shots=1,
                query=2, meta_batch_size=2, inner_lr=0.4, num_steps=6, eval_every=3,
                checkpoint_every=3, log_every=3, eval_tasks=6, val_tasks=4,
                eval_inner_steps=2, num_devices=1, progress=False)
    base.update(overrides)
    return runner.MamlRunConfig(**base)


@pytest.mark.parametrize("bn_mode", ["transductive", "running"])
def test_omniglot_from_official_zip_layout_writes_valid_results(tmp_path, bn_mode):
    results = _train(_omniglot_config(tmp_path, bn_mode=bn_mode))
    assert results["bn_mode"] == bn_mode
    state = _state(_omniglot_config(tmp_path, bn_mode=bn_mode), "best")
    assert ("batch_stats" in state["model_state"]) == (bn_mode == "running")
    test = results["test"]
    assert test["metric"] == "accuracy" and test["unit"] == "%"
    assert test["num_tasks"] == 6 and len(test["per_step"]) == 3
    assert all(0.0 <= v <= 100.0 for v in test["per_step"])
    assert results["ways"] == 3 and results["shots"] == 1 and results["steps"] == 6
    assert (tmp_path / "run" / "val_accuracy_vs_steps.png").exists()
    assert not (tmp_path / "omniglot" / "cache").exists()
    assert sorted(os.listdir(tmp_path / "omniglot")) == ["images_background.zip",
                                                          "images_evaluation.zip"]


def test_changed_hyperparameter_on_resume_is_refused(tmp_path):
    from core.errors import ConfigError
    _train(_sinusoid_config(tmp_path / "run", num_steps=5))
    with pytest.raises(ConfigError, match="inner_lr"):
        _train(_sinusoid_config(tmp_path / "run", inner_lr=0.5))


@pytest.mark.parametrize("case", ["missing_data_dir", "no_data_dir_flag", "corrupt_zip",
                                  "too_many_ways", "unknown_dataset", "bad_meta_batch"])
def test_bad_input_gives_one_clear_error(tmp_path, case):
    data_dir = tmp_path / "omniglot"
    write_fake_omniglot(str(data_dir), n_alphabets=2, chars_per_alphabet=3)
    common = [f"--workdir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}",
              "--omniglot_split=6,3", "--num_steps=2", "--eval_tasks=2", "--val_tasks=2"]
    omni = ["--dataset=omniglot", "--ways=3", "--shots=1", "--query=1", "--meta_batch_size=2"]
    if case == "missing_data_dir":
        args, expect = omni + [f"--data_dir={tmp_path / 'nowhere'}"], "nowhere"
    elif case == "no_data_dir_flag":
        args, expect = omni, "--data_dir is required"
    elif case == "corrupt_zip":
        (data_dir / "images_background.zip").write_bytes(b"this is not a zip file")
        args, expect = omni + [f"--data_dir={data_dir}"], "images_background.zip"
    elif case == "too_many_ways":
        args = ["--dataset=omniglot", "--ways=200", "--shots=1", "--query=1",
                "--meta_batch_size=2", f"--data_dir={data_dir}"]
        expect = "200"
    elif case == "unknown_dataset":
        args, expect = ["--dataset=imagenet21k"], "imagenet21k"
    else:
        args, expect = ["--meta_batch_size=0"], "meta_batch_size"
    proc = _cli(*common, *args)
    assert proc.returncode != 0
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 6, proc.stderr


def test_devices_default_to_all_that_split_the_meta_batch(tmp_path):
    assert len(jax.devices()) == 4  # tests/conftest.py
    choose = lambda **kw: experiment.choose_devices(
        _sinusoid_config(tmp_path, **kw).sharded_batch(), kw.get("num_devices"))
    assert len(choose(num_devices=None, meta_batch_size=8)) == 4
    assert len(choose(num_devices=None, meta_batch_size=6)) == 3
    assert len(choose(num_devices=None, meta_batch_size=5)) == 1
    assert len(choose(num_devices=2, meta_batch_size=8)) == 2
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="num_devices"):
        choose(num_devices=9)


def test_diverged_training_exits_3_and_writes_no_results(tmp_path):
    proc = _cli(f"--workdir={tmp_path / 'run'}", "--shots=5", "--query=5",
                "--meta_batch_size=4", "--num_steps=50", "--eval_every=0",
                "--checkpoint_every=10", "--meta_lr=1e30", "--eval_tasks=4")
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the training loss is nan at step ")
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_held_workdir_is_refused_with_the_holder(tmp_path):
    from core import run_lock
    with run_lock.hold(str(tmp_path / "run")):
        proc = _cli(f"--workdir={tmp_path / 'run'}", "--num_steps=2")
    assert proc.returncode == 2
    assert f"in use by process {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr
