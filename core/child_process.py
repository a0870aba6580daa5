"""How the project starts a child process it may later stop with SIGINT.

Both the search (one run per trial) and the multi-process launcher stop their children the way
Ctrl-C would, so the run keeps its checkpoints. That only works if the child handles SIGINT,
and a parent started in the background by a non-interactive shell (`cmd &`, nohup, a batch
script) has SIGINT ignored, which a child inherits across exec.
"""

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def prepare_child() -> None:
    """`preexec_fn` for a child run: Ctrl-C works and the child dies with its parent.

    SIGINT is reset to its default, so Python installs its KeyboardInterrupt handler on it
    again. On Linux the child is also killed when its parent dies (`kill -9`, a lost machine),
    so no run outlives the process that started it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
