"""A lock on a run directory: one live run per workdir.

Two processes training in one workdir would interleave checkpoints and
metrics. `hold(workdir)` takes an exclusive `flock` on `workdir/.lock` for
the lifetime of the run and writes the holder's host and process id into the
file. A second run on the same workdir fails at once with a `ConfigError`
naming the holder.

The kernel drops an `flock` when its process dies, however it dies, so a
lock left by a run killed with `kill -9` is stale by construction: the file
is still there, but nothing holds it, and the next run takes it over. That
is what makes "kill it and rerun the same command" work without a manual
clean-up step.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator

from core.errors import ConfigError

LOCK_FILE = ".lock"


def _holder(path: str) -> str:
    """Who the lock file says holds it, for the error message."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return f"process {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file names no holder)"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds the run directory's lock for the duration of the `with` block.

    Args:
      workdir: the run directory (created if needed).

    Raises:
      ConfigError: when a live process already holds it.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"the run directory {workdir} is in use by {_holder(path)}; "
                              f"wait for that run to end, or use another --workdir") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
