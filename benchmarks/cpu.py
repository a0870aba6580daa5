"""Process set-up shared by the speed benchmarks."""

import os


def pin_threads(threads: int) -> None:
    """Pins the process to its first `threads` CPUs, as the PyTorch peers are run."""
    try:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, set(cpus))
    except (AttributeError, OSError):
        pass
