"""Process set-up and subprocess measurement shared by the speed benchmarks."""

import json
import os
import subprocess
import sys


def pin_threads(threads: int) -> None:
    """Pins the process to its first `threads` CPUs, as the PyTorch peers are run."""
    try:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, set(cpus))
    except (AttributeError, OSError):
        pass


def measure_in_subprocess(cmd: list[str]) -> dict | None:
    """Runs one measurement process; its last stdout line as JSON, or None (reported) if it failed.

    One process per measurement keeps each row's peak RSS its own.
    """
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"failed: {' '.join(cmd)}\n{out.stderr[-1000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])
