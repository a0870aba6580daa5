"""End-to-end test of `--seeds` on an experiment entry point (core/seed_runs.py)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--dataset=sinusoid", "--shots=5", "--query=5", "--meta_batch_size=4", "--num_steps=6",
        "--eval_every=3", "--checkpoint_every=3", "--log_every=3", "--eval_tasks=8",
        "--val_tasks=8", "--eval_inner_steps=1", "--num_devices=1", "--noprogress"]


def _maml(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.maml", *TINY, *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(400)
def test_seeds_run_one_directory_per_seed_and_a_rerun_skips_them(tmp_path):
    out = _maml("--seeds=0,1", "--seed=5", f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr
    results = {s: json.loads((tmp_path / f"seed_{s}" / "results.json").read_text())
               for s in (0, 1)}
    assert [results[s]["config"]["seed"] for s in (0, 1)] == [0, 1]
    assert results[0]["test"] != results[1]["test"]
    again = _maml("--seeds=0,1", f"--workdir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished before") == 2


def test_an_unknown_seed_flag_is_refused_before_any_run(tmp_path):
    out = _maml("--seeds=0", "--seed_flags=seed,nope", f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert "no such flag of this experiment: nope" in out.stderr
    assert not (tmp_path / "seed_0").exists()
