"""Local multi-process runs: N copies of one command joined as one JAX cluster.

`experiments/launch.py` is its entry point. It rehearses, on one machine, what
a cluster does with one process per host: every process gets the same command
plus `--coordinator_address=127.0.0.1:<free port> --num_processes=N
--process_id=<i>`, and (on CPU) `JAX_NUM_CPU_DEVICES` devices of its own, so
N processes x D devices form one mesh of N·D devices with gloo collectives.

The children are argument lists, never a shell. Their output lines are
prefixed with `[<i>]`. If one exits with an error the others are stopped (they
would wait for it in a collective forever) and the launcher exits with the
first failing status; Ctrl-C is passed on to every child, which exit 130 and
resume on the next launch like any run.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

from core import child_process
from core.errors import ConfigError


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_commands(command: Sequence[str], num_processes: int, port: int) -> list[list[str]]:
    """Each process's command: the shared command and its coordinator flags."""
    if not command:
        raise ConfigError("give the command to launch after --, e.g. "
                          "-- python -m experiments.maml --flagfile=...")
    if num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes} must be >= 1")
    return [[*command, f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={num_processes}", f"--process_id={i}"]
            for i in range(num_processes)]


def child_env(cpu_devices: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: `JAX_NUM_CPU_DEVICES` when CPU devices are asked for."""
    env = dict(os.environ if base is None else base)
    if cpu_devices is not None:
        if cpu_devices < 1:
            raise ConfigError(f"--cpu_devices={cpu_devices} must be >= 1")
        env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _relay(index: int, stream, out: TextIO) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{index}] {line}")
        out.flush()
    stream.close()


def run(command: Sequence[str], num_processes: int, cpu_devices: int | None = None,
        port: int | None = None, out: TextIO = sys.stdout) -> int:
    """Starts the processes, relays their output, returns the run's exit status.

    Returns:
      0 when every process exited 0; else the first non-zero status seen
      (130 after Ctrl-C).
    """
    commands = child_commands(command, num_processes, port or free_port())
    env = child_env(cpu_devices)
    children, relays = [], []
    for index, argv in enumerate(commands):
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True,
                                 preexec_fn=child_process.prepare_child)
        relay = threading.Thread(target=_relay, args=(index, child.stdout, out), daemon=True)
        relay.start()
        children.append(child)
        relays.append(relay)
    status = 0
    try:
        status = _wait(children)
    except KeyboardInterrupt:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            child.wait()
        status = 130
    for relay in relays:
        relay.join(timeout=5)
    return status


def _wait(children: list[subprocess.Popen], grace_seconds: float = 30.0) -> int:
    """Waits for all; after the first failure, stops the rest (SIGINT, then SIGKILL)."""
    while True:
        codes = [c.poll() for c in children]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            _stop_all(children, grace_seconds)
            return 130 if failed[0] in (-signal.SIGINT, 130) else (
                failed[0] if failed[0] > 0 else 128 - failed[0])
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.2)


def _stop_all(children: list[subprocess.Popen], grace_seconds: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
