"""Process settings that make XLA:CPU fast: glibc's malloc tunables.

XLA:CPU allocates an executable's temporary buffers afresh on every call, and
a MAML meta-step on Omniglot needs about a gigabyte of them. glibc serves each
block over 32 MB with a new `mmap` and unmaps it on `free`, so every step
page-faults all of it in again as freshly zeroed 4 KB pages: a large share of
a second-order meta-step on a 2-core CPU (measured with `getrusage` around the
step: docs/results.md; `benchmarks/maml_speed.py` reports both).

Three glibc tunables remove it (`MALLOC_TUNABLES`):

* `glibc.malloc.hugetlb=1`: back large blocks with transparent huge pages
  (`madvise`), 512x fewer faults;
* `glibc.malloc.mmap_max=0`: serve every block from the heap instead of a
  private `mmap`, so freed memory is reused by the next step;
* `glibc.malloc.trim_threshold`: never give freed heap memory back to the OS
  (the process keeps its peak footprint, which a training run reaches anyway).

Together they remove almost all of those faults. `GLIBC_TUNABLES` is read once,
when a process starts, so the entry points call `reexec_with_malloc_tunables()`
first thing: it re-executes the same command with the variable set. Values the
user already put in `GLIBC_TUNABLES` win; `METATRANSFER_MALLOC_TUNING=0` (or
the entry points' `--nomalloc_tuning`) turns it off. Other platforms and C
libraries are left alone.
"""

import os
import platform
import sys
from typing import Mapping

from absl import logging

MALLOC_TUNABLES = {
    "glibc.malloc.hugetlb": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(1 << 40),
}
OPT_OUT_VAR = "METATRANSFER_MALLOC_TUNING"
_REEXEC_MARK = "METATRANSFER_MALLOC_REEXEC"


def _parse_tunables(value: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in value.split(":") if "=" in item)
    return {key: val for key, val in pairs}


def uses_glibc() -> bool:
    """Whether this process runs on Linux with the GNU C library."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tunables_env(environ: Mapping[str, str], glibc: bool | None = None) -> dict[str, str] | None:
    """The environment to restart with so that `MALLOC_TUNABLES` apply.

    Args:
      environ: the current environment.
      glibc: whether the C library is glibc; detected when None.

    Returns:
      A copy of `environ` whose `GLIBC_TUNABLES` holds every key of
      `MALLOC_TUNABLES` (keys already set keep the user's value), or None when
      nothing is to be done: not glibc, opted out with
      `METATRANSFER_MALLOC_TUNING=0`, already restarted once, or every key
      already present.
    """
    if glibc is None:
        glibc = uses_glibc()
    if not glibc or environ.get(OPT_OUT_VAR, "1") == "0" or environ.get(_REEXEC_MARK):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    present = _parse_tunables(current)
    missing = [f"{k}={v}" for k, v in MALLOC_TUNABLES.items() if k not in present]
    if not missing:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(([current] if current else []) + missing)
    env[_REEXEC_MARK] = "1"
    return env


def malloc_tunables_active(environ: Mapping[str, str] | None = None) -> bool:
    """Whether every key of `MALLOC_TUNABLES` is set in `GLIBC_TUNABLES`."""
    environ = os.environ if environ is None else environ
    present = _parse_tunables(environ.get("GLIBC_TUNABLES", ""))
    return all(key in present for key in MALLOC_TUNABLES)


def reexec_with_malloc_tunables(enabled: bool = True) -> None:
    """Re-executes the current command with `MALLOC_TUNABLES` set, if needed.

    Call it before any work whose effects must not happen twice (it is a no-op
    when the tunables are already in place, so the restarted process passes
    through). On failure to restart, logs a warning and returns.

    Args:
      enabled: False skips the restart (the `--nomalloc_tuning` flag).
    """
    if not enabled:
        return
    env = tunables_env(os.environ)
    if env is None:
        return
    argv = [sys.executable] + list(getattr(sys, "orig_argv", sys.argv)[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError as err:  # e.g. a sandbox that forbids exec: run untuned
        logging.warning("could not restart with GLIBC_TUNABLES (%s); running without them", err)
