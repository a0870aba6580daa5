"""Tests of core/launch.py with plain Python children (no JAX)."""

import io
import sys

import pytest

from core import launch
from core.errors import ConfigError


def test_each_child_gets_the_command_and_its_coordinator_flags():
    commands = launch.child_commands(["py", "-m", "x", "--a=1"], 2, 1234)
    assert commands == [
        ["py", "-m", "x", "--a=1", "--coordinator_address=127.0.0.1:1234", "--num_processes=2",
         "--process_id=0"],
        ["py", "-m", "x", "--a=1", "--coordinator_address=127.0.0.1:1234", "--num_processes=2",
         "--process_id=1"]]
    assert launch.child_env(3, {})["JAX_NUM_CPU_DEVICES"] == "3"
    assert "JAX_NUM_CPU_DEVICES" not in launch.child_env(None, {})


@pytest.mark.parametrize("call,message", [
    (lambda: launch.child_commands([], 2, 1), "give the command to launch"),
    (lambda: launch.child_commands(["py"], 0, 1), "must be >= 1"),
    (lambda: launch.child_env(0, {}), "must be >= 1"),
])
def test_bad_launch_input_is_one_clear_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


_CHILD = ("import sys, time\n"
          "i = int(sys.argv[-1].split('=')[1])\n"
          "print('hello from', i, flush=True)\n"
          "if i == 1: sys.exit(3)\n"
          "time.sleep(60)\n")


@pytest.mark.timeout(60)
def test_a_failing_child_stops_the_others_and_its_status_is_returned():
    out = io.StringIO()
    status = launch.run([sys.executable, "-c", _CHILD], 2, out=out)
    assert status == 3
    assert "[1] hello from 1" in out.getvalue()


@pytest.mark.timeout(60)
def test_all_children_succeeding_is_status_0():
    out = io.StringIO()
    assert launch.run([sys.executable, "-c", "print('ok')"], 3, out=out) == 0
    assert sorted(out.getvalue().splitlines()) == ["[0] ok", "[1] ok", "[2] ok"]
