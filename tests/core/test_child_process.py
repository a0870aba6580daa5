"""core.child_process: children started by a search or the launcher handle SIGINT."""

import signal
import subprocess
import sys

from core import child_process


def test_a_child_handles_sigint_when_its_parent_ignores_it():
    # A background job of a non-interactive shell starts with SIGINT ignored; the child run
    # must still stop on the SIGINT that prunes or interrupts it.
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             preexec_fn=child_process.prepare_child, check=True).stdout
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.strip() == "True"
