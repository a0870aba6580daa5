"""One trial: an ordinary run directory, a subprocess, pruning and a liveness lock.

A trial lives in `<study_dir>/trials/<number>/`: its own `flags` file (the base
flags, the trial's values and its workdir), so that

    python -m experiments.<family> --flagfile=<study_dir>/trials/<number>/flags

reruns it without the search tool, the run's own files (config.json,
metrics.jsonl, checkpoints/, results.json) and `trial.log`, its output. The
directory is named by a number Optuna gives, never by a value, and is checked
to lie inside the study directory.

The run is a subprocess started from an argument list (no shell). While it
runs, its metrics.jsonl is read for new validation values of the selection
metric, which are reported to Optuna; when the pruner says so the run is
stopped. The objective is results.json's `best_val`, never a test number.

Liveness: the worker holds an `flock` on `<trial dir>/.trial.lock` for as long
as the trial is its own, and the run subprocess inherits it (and is killed
when the worker dies, on Linux), so the lock is free exactly when nobody
works on the trial any more. A RUNNING trial with a free lock was left by a
killed worker (see `worker.recover_stale`).
"""

import dataclasses
import fcntl
import os
import signal
import socket
import subprocess
import time
from typing import Any, Sequence

from core import child_process
from core import metrics as metrics_lib
from core import run_dir as run_dir_lib
from core.errors import ConfigError

TRIALS_DIR = "trials"
FLAGS_FILE = "flags"
LOG_FILE = "trial.log"
LOCK_FILE = ".trial.lock"


def trial_dir(study_dir: str, relative: str) -> str:
    """The absolute trial directory `study_dir/relative`, refused if it leaves the study dir.

    Raises:
      ConfigError: the path would lie outside the study directory.
    """
    root = os.path.realpath(study_dir)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root or path == root:
        raise ConfigError(f"the trial directory {relative!r} is not inside {study_dir}")
    return path


def default_relative_dir(number: int) -> str:
    """`trials/<number>`: a new trial's directory inside the study directory."""
    return os.path.join(TRIALS_DIR, str(int(number)))


def try_lock(directory: str) -> int | None:
    """Takes the trial's lock: its file descriptor, or None when someone holds it."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def owner() -> dict[str, Any]:
    """Who holds a trial, for the trial's user attributes."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


@dataclasses.dataclass
class Outcome:
    """How a trial's run ended.

    Attributes:
      state: 'complete', 'pruned', 'failed', 'bad_input' or 'interrupted'.
      value: the objective (`best_val`) of a complete run.
      message: why it failed.
      last_step: the last reported validation step.
    """

    state: str
    value: float | None = None
    message: str = ""
    last_step: int | None = None


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _stop(process: subprocess.Popen, grace_seconds: float = 20.0) -> None:
    """Interrupts the run like Ctrl-C (it keeps its checkpoints), then kills it if needed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Watcher:
    """Reports a running trial's new validation values to Optuna.

    Args:
      trial: the Optuna trial.
      workdir: the run directory.
      metric: the validation scalar the run selects on.
    """

    def __init__(self, trial, workdir: str, metric: str):
        self._trial, self._workdir, self._metric = trial, workdir, metric
        self._reported: set[int] = set()
        self.last_step: int | None = None

    def poll(self) -> bool:
        """Reports what is new; returns whether the trial should be pruned."""
        try:
            records = metrics_lib.read_metrics(self._workdir, "val")
        except Exception:  # A file being replaced or cut mid-line: read it next time.
            return False
        new = False
        for record in records:
            step, value = int(record["step"]), record.get(self._metric)
            # Step 0 is the untrained model: its value says nothing about the trial's
            # hyper-parameters, and the median pruner would prune on it.
            if value is None or step == 0 or step in self._reported:
                continue
            self._trial.report(float(value), step)
            self._reported.add(step)
            self.last_step, new = step, True
        return new and self._trial.should_prune()


def _exit_outcome(code: int, log_path: str) -> Outcome:
    tail = _log_tail(log_path)
    if code == 2:
        return Outcome("bad_input", message=f"the run refused its flags: {tail}")
    if code == 130 or code == -signal.SIGINT:
        return Outcome("interrupted", message="the run was interrupted")
    if code == 3:
        return Outcome("failed", message=f"training diverged: {tail}")
    return Outcome("failed", message=f"the run exited with status {code}: {tail}")


def results_outcome(workdir: str) -> Outcome:
    """The outcome of a run that wrote results.json: its `best_val`."""
    results = run_dir_lib.read_results(workdir)
    best = results.get("best_val")
    if best is None:
        return Outcome("failed", message="the run has no validation value (best_val is null): "
                                         "the search needs --eval_every > 0 and a validation "
                                         "split")
    return Outcome("complete", value=float(best), last_step=results.get("best_step"))


def run(command: Sequence[str], workdir: str, flags_path: str, trial, metric: str,
        lock_fd: int, poll_seconds: float = 0.5) -> Outcome:
    """Runs (or resumes) one trial's run to its end, pruning it when told to.

    A run directory that already holds results.json (its worker died after the
    run finished) is not run again.

    Args:
      command: the experiment's argument list before its flags.
      workdir: the trial's run directory.
      flags_path: its flags file.
      trial: the Optuna trial (reported to, asked whether to prune).
      metric: the validation scalar reported.
      lock_fd: the trial lock, handed to the subprocess so it is held while the run lives.
      poll_seconds: how often metrics.jsonl is read.
    """
    if os.path.exists(os.path.join(workdir, run_dir_lib.RESULTS_FILE)):
        return results_outcome(workdir)
    argv = [*command, f"--flagfile={flags_path}", f"--workdir={workdir}", "--noprogress"]
    log_path = os.path.join(workdir, LOG_FILE)
    watcher = Watcher(trial, workdir, metric)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, pass_fds=(lock_fd,),
                                   preexec_fn=child_process.prepare_child)
        try:
            while process.poll() is None:
                if watcher.poll():
                    _stop(process)
                    return Outcome("pruned", last_step=watcher.last_step)
                time.sleep(poll_seconds)
        except KeyboardInterrupt:
            _stop(process)
            raise
    watcher.poll()
    if process.returncode != 0:
        return _exit_outcome(process.returncode, log_path)
    return results_outcome(workdir)
