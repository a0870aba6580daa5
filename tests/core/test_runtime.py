"""Tests for core.runtime (glibc malloc tunables and the self-restart)."""

import os
import subprocess
import sys
import textwrap

import pytest

from core import runtime

_ALL = ":".join(f"{k}={v}" for k, v in runtime.MALLOC_TUNABLES.items())


def test_tunables_env_adds_every_tunable():
    env = runtime.tunables_env({"PATH": "/bin"}, glibc=True)
    assert env["PATH"] == "/bin"
    assert runtime.malloc_tunables_active(env)
    assert env["GLIBC_TUNABLES"] == _ALL


def test_tunables_env_keeps_user_values():
    user = "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"
    env = runtime.tunables_env({"GLIBC_TUNABLES": user}, glibc=True)
    tunables = env["GLIBC_TUNABLES"]
    assert tunables.startswith(user + ":")
    assert "glibc.malloc.hugetlb=1" not in tunables
    assert "glibc.malloc.mmap_max=0" in tunables


@pytest.mark.parametrize("environ, glibc", [
    ({}, False),                                     # musl, macOS, Windows
    ({runtime.OPT_OUT_VAR: "0"}, True),              # user opted out
    ({"GLIBC_TUNABLES": _ALL}, True),                # already in place
    ({"METATRANSFER_MALLOC_REEXEC": "1"}, True),     # restarted once already
])
def test_tunables_env_does_nothing(environ, glibc):
    assert runtime.tunables_env(environ, glibc=glibc) is None


def test_reexec_restarts_once_with_tunables(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        print("start", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
        from core import runtime
        runtime.reexec_with_malloc_tunables()
        print("running", runtime.malloc_tunables_active(), flush=True)
    """))
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "METATRANSFER_MALLOC_REEXEC", runtime.OPT_OUT_VAR)}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(runtime.__file__)))
    out = subprocess.run([sys.executable, str(script), "--flag=1"], env=env, text=True,
                         capture_output=True, timeout=120, check=True).stdout.splitlines()
    if not runtime.uses_glibc():
        assert out == ["start  ['--flag=1']", "running False"]
        return
    assert out[0] == "start  ['--flag=1']"
    assert out[1] == f"start {_ALL} ['--flag=1']"
    assert out[2:] == ["running True"]


def test_reexec_disabled_is_a_no_op(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not restart"))
    runtime.reexec_with_malloc_tunables(enabled=False)
