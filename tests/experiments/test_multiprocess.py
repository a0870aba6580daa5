"""Multi-process runs on this CPU: 2 processes x 2 devices (gloo) against one process.

For each family (MAML; multi-task with the UPGrad aggregator; transfer
fine-tuning) the results.json test block of `experiments.launch` with 2
processes x 2 CPU devices equals one process x 4 devices and one process x 1
device to float tolerance (rtol 1e-6: the reductions run in another order).
Killing both processes mid-run and relaunching ends bit-identical to an
uninterrupted 2-process run, and a 2-process checkpoint resumes on 1 process.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core import launch
from core.datasets.fake_idx import write_fake_idx_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 240
MAML = ["experiments.maml", "--dataset=sinusoid", "--shots=5", "--query=5", "--meta_batch_size=4",
        "--eval_tasks=8", "--val_tasks=8", "--eval_inner_steps=1"]
MTL = ["experiments.mtl", "--benchmark=regression", "--num_tasks=2", "--method=upgrad",
       "--val_size=100", "--batch_size=48", "--eval_batch_size=100"]
TRANSFER = ["experiments.transfer", "--network=mlp", "--mlp_hidden=16,12,8",
            "--learning_rate=0.01", "--val_size=16", "--batch_size=8", "--eval_batch_size=16"]
SHORT = ["--num_steps=6", "--eval_every=3", "--checkpoint_every=3", "--log_every=1",
         "--noprogress"]


def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))


def _one_process(args, workdir, devices):
    command = [sys.executable, "-m", *args, f"--workdir={workdir}"]
    if devices == 1:
        command.append("--num_devices=1")
    out = subprocess.run(command, cwd=REPO, env=_env(devices), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-2000:]
    return _results(workdir)


def _two_processes(args, workdir):
    command = [sys.executable, "-m", "experiments.launch", "--num_processes=2", "--cpu_devices=2",
               "--", sys.executable, "-m", *args, f"--workdir={workdir}"]
    out = subprocess.run(command, cwd=REPO, env=_env(1), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "[1] process 1 of 2: 2 local of 4 devices" in out.stdout
    return _results(workdir)


def _results(workdir):
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        return json.load(f)


def _numbers(block):
    """The numeric leaves of a results block, flattened in key order."""
    if isinstance(block, dict):
        return [v for k in sorted(block) for v in _numbers(block[k])]
    if isinstance(block, list):
        return [v for item in block for v in _numbers(item)]
    return [float(block)] if isinstance(block, (int, float)) and not isinstance(block, bool) else []


@pytest.fixture(scope="module")
def transfer_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp_idx")
    write_fake_idx_dataset(str(root), n_train=64, n_test=24)
    source = root / "source"
    args = [*TRANSFER, f"--data_dir={root}", "--strategy=scratch", "--classes=0,1,2,3,4", *SHORT]
    _one_process(args, source, 1)
    return [f"--data_dir={root}", "--strategy=finetune", f"--source_workdir={source}",
            "--classes=5,6,7,8,9"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["maml", "mtl", "transfer"])
def test_two_processes_give_the_numbers_of_one(tmp_path, family, request):
    args = {"maml": MAML, "mtl": MTL, "transfer": TRANSFER}[family] + SHORT
    if family == "transfer":
        args += request.getfixturevalue("transfer_data")
    two = _two_processes(args, tmp_path / "2x2")
    assert two["versions"]["process_count"] == 2
    for devices in (4, 1):
        one = _one_process(args, tmp_path / f"1x{devices}", devices)
        np.testing.assert_allclose(_numbers(two["test"]), _numbers(one["test"]), rtol=1e-6)
        assert two["best_val"] == pytest.approx(one["best_val"], rel=1e-6)
        assert two["best_step"] == one["best_step"]
    # One set of run-directory files, written by process 0.
    assert sorted(os.listdir(tmp_path / "2x2" / "checkpoints")) == ["3", "6"]


def _start_pair(args, workdir, port):
    commands = launch.child_commands([sys.executable, "-m", *args, f"--workdir={workdir}"], 2,
                                     port)
    env = launch.child_env(2, _env(2))
    return [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for c in commands]


@pytest.mark.timeout(900)
def test_both_processes_killed_and_relaunched_end_bit_identical(tmp_path):
    args = [*MAML, "--num_steps=60", "--eval_every=20", "--checkpoint_every=10", "--log_every=10",
            "--noprogress"]
    whole = _two_processes(args, tmp_path / "whole")
    children = _start_pair(args, tmp_path / "killed", launch.free_port())
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    while not (checkpoints / "20").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in children:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not (tmp_path / "killed" / "results.json").exists(), "killed too late"
    resumed = _two_processes(args, tmp_path / "killed")
    assert resumed["test"] == whole["test"]
    assert resumed["best_val"] == whole["best_val"]
    # The same checkpoint resumes on one process (parameters are replicated).
    os.remove(tmp_path / "killed" / "results.json")
    one = _one_process([*args, "--num_steps=70"], tmp_path / "killed", 1)
    assert one["steps"] == 70
