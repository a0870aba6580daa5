"""Tests of core/seed_runs.py: per-seed commands, skipping finished seeds, failures."""

import os

import pytest

from core import seed_runs
from core.errors import ConfigError


def test_child_argv_appends_the_seed_flags_and_its_workdir_after_the_users_flags():
    argv = seed_runs.child_argv(["py", "-m", "experiments.maml"], ["--flagfile=f", "--seed=7"],
                                3, ["seed", "data_seed"], "/runs/x")
    assert argv == ["py", "-m", "experiments.maml", "--flagfile=f", "--seed=7", "--seeds=",
                    "--seed=3", "--data_seed=3", "--workdir=/runs/x/seed_3"]


@pytest.mark.parametrize("seeds,seed_flags,message", [
    (["0", "a"], ["seed"], "comma-separated integers"),
    (["1", "1"], ["seed"], "names a seed twice"),
    (["0"], [], "--seed_flags is empty"),
    (["0"], ["seed", "sed"], "no such flag of this experiment: sed"),
])
def test_bad_seeds_or_seed_flags_are_one_clear_error(seeds, seed_flags, message):
    with pytest.raises(ConfigError, match=message):
        seed_runs.validate(seeds, seed_flags, ["seed", "data_seed"])


def _fake_call(calls, status=0, finish=True):
    def call(argv):
        calls.append(argv)
        workdir = argv[-1].split("=", 1)[1]
        if finish:
            with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
                f.write("{}")
        return status
    return call


def test_every_seed_runs_once_in_its_own_directory_and_finished_ones_are_skipped(tmp_path):
    calls = []
    done = seed_runs.run_seeds(["py"], ["--a=1"], [0, 2], ["seed"], str(tmp_path),
                               call=_fake_call(calls), log=lambda _: None)
    assert done == [str(tmp_path / "seed_0"), str(tmp_path / "seed_2")]
    assert [c[-1] for c in calls] == [f"--workdir={tmp_path}/seed_0", f"--workdir={tmp_path}/seed_2"]
    assert (tmp_path / "seed_0" / "command").read_text().startswith("py --a=1 --seeds= --seed=0")
    seed_runs.run_seeds(["py"], ["--a=1"], [0, 1, 2], ["seed"], str(tmp_path),
                        call=_fake_call(calls), log=lambda _: None)
    assert len(calls) == 3 and calls[-1][-1].endswith("seed_1")


def test_a_failed_seed_stops_the_set_and_carries_its_exit_status(tmp_path):
    calls = []
    with pytest.raises(seed_runs.ChildFailed, match="seed 0 .* status 3") as info:
        seed_runs.run_seeds(["py"], [], [0, 1], ["seed"], str(tmp_path),
                            call=_fake_call(calls, status=3, finish=False), log=lambda _: None)
    assert info.value.status == 3 and len(calls) == 1


def test_an_interrupted_seed_interrupts_the_set(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        seed_runs.run_seeds(["py"], [], [0, 1], ["seed"], str(tmp_path),
                            call=_fake_call([], status=130, finish=False), log=lambda _: None)
