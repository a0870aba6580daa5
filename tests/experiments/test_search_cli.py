"""`python -m experiments.search` and `experiments.report` end to end, on a fake experiment."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE_DIR = os.path.join(REPO, "tests", "core", "search")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([FAKE_DIR, REPO]))
SPACE = {"x": {"type": "uniform", "low": 0.0, "high": 1.0},
         "depth": {"type": "int", "low": 0, "high": 3}}


def _files(tmp_path, space=SPACE, base="--num_steps=3\n--eval_every=1\n"):
    (tmp_path / "base.flags").write_text(base)
    (tmp_path / "space.json").write_text(json.dumps(space) if isinstance(space, dict) else space)
    return str(tmp_path / "base.flags"), str(tmp_path / "space.json")


def _command(tmp_path, *extra, sampler="random", num_trials=3, study="study"):
    flagfile, space = str(tmp_path / "base.flags"), str(tmp_path / "space.json")
    return [sys.executable, "-m", "experiments.search", "--experiment=search_fake_family",
            f"--flagfile={flagfile}", f"--space={space}", f"--sampler={sampler}",
            f"--num_trials={num_trials}", f"--study_dir={tmp_path / study}",
            "--poll_seconds=0.05", *extra]


def _run(command, **kwargs):
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120, **kwargs)


def _study(tmp_path, study="study"):
    return optuna.load_study(study_name=study,
                             storage=f"sqlite:///{tmp_path / study / 'study.db'}")


@pytest.mark.parametrize("space, extra, message", [
    ({"nope": [1]}, [], "entry 'nope': unknown flag"),
    ({"x": {"type": "uniform", "low": 1.0, "high": 0.0}}, [], "entry 'x': low (1.0) > high"),
    ({"x": {"type": "uniform", "low": 0.0, "high": 1.0}}, ["--sampler=grid"],
     "entry 'x': the grid sampler needs values"),
    ({"x": {"type": "int", "low": 2, "high": 2}}, [], "entry 'x': empty range"),
    (SPACE, ["--", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (SPACE, ["--experiment=nonexistent_module"], "unknown --experiment"),
    (SPACE, ["--pruner=sometimes"], "pruner"),
])
@pytest.mark.timeout(120)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, space, extra, message):
    _files(tmp_path, space)
    result = _run(_command(tmp_path) + extra)
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "study" / "trials")


@pytest.mark.timeout(120)
def test_a_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    _files(tmp_path, base="--num_steps=20\n--eval_every=1\n--step_seconds=0.04\n")
    command = _command(tmp_path, num_trials=3)
    search = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    second = tmp_path / "study" / "trials" / "1" / "metrics.jsonl"
    deadline = time.time() + 60
    while not (second.exists() and second.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(search.pid, signal.SIGKILL)
    search.wait()
    assert (tmp_path / "study" / "trials" / "0" / "results.json").exists()
    result = _run(command)
    assert result.returncode == 0, result.stderr
    assert "retrying it with the same parameters in trials/1" in result.stdout
    trials = _study(tmp_path).get_trials()
    killed, retry = trials[1], [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert killed.state == TrialState.FAIL and len(retry) == 1
    assert retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    attempts = {d: (tmp_path / "study" / "trials" / d / "attempts.jsonl").read_text()
                .splitlines() for d in os.listdir(tmp_path / "study" / "trials")}
    third = f"{done[-1].number}"  # trial 2 is the retry (in trials/1), trial 3 the last one
    assert sorted(attempts) == sorted(["0", "1", third])
    assert len(attempts["0"]) == 1 and len(attempts[third]) == 1  # finished ones not rerun
    assert len(attempts["1"]) == 2  # the killed one retried in its own run directory
    first, again = (json.loads(a)["flags"] for a in attempts["1"])
    assert first == again
    flags = (tmp_path / "study" / "trials" / "1" / "flags").read_text()
    assert f"--workdir={tmp_path / 'study' / 'trials' / '1'}" in flags


@pytest.mark.timeout(120)
def test_two_workers_on_one_storage_do_disjoint_trials(tmp_path):
    _files(tmp_path, base="--num_steps=4\n--eval_every=1\n--step_seconds=0.05\n")
    command = _command(tmp_path, num_trials=6)
    workers = [subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=110) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = _study(tmp_path).get_trials()
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.user_attrs["run_dir"] for t in counted}) == 6
    ran = [set(int(line.split(":")[0].split()[1]) for line in out.splitlines()
               if line.startswith("trial ") and "best_val" in line) for out, _ in outputs]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {t.number for t in counted}
    for d in os.listdir(tmp_path / "study" / "trials"):
        lines = (tmp_path / "study" / "trials" / d / "attempts.jsonl").read_text().splitlines()
        assert len(lines) == 1  # every trial done exactly once


@pytest.mark.timeout(120)
def test_best_seeds_and_the_report(tmp_path):
    _files(tmp_path, {"x": [0.1, 0.3]})
    result = _run(_command(tmp_path, "--best_seeds=0,1,2", sampler="grid", num_trials=10))
    assert result.returncode == 0, result.stderr
    seeds = sorted(os.listdir(tmp_path / "study" / "best_seeds"))
    assert seeds == ["seed_0", "seed_1", "seed_2"]
    flags = (tmp_path / "study" / "best_seeds" / "seed_2" / "flags").read_text()
    assert "--seed=2" in flags and "--x=0.3" in flags
    out = tmp_path / "report"
    report = _run([sys.executable, "-m", "experiments.report", str(tmp_path / "study"),
                   f"--out={out}"])
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "parameter importances" in text
    for name in ("study_history.png", "study_params.png"):
        assert (out / name).stat().st_size > 0
    bad = _run([sys.executable, "-m", "experiments.report", str(tmp_path / "nothing"),
                f"--out={out}"])
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
