"""`--seeds=0,1,2` on any experiment: the same configuration once per seed.

A published number is a mean over seeds, so every entry point takes
`--seeds`: instead of one run, it starts itself once per seed, one process
after another, each with `--<flag>=<seed>` for every flag in `--seed_flags`
(`seed` by default; add e.g. `data_seed` for a new draw of the data) and its
own run directory `<workdir>/seed_<s>/`. Each child is an ordinary run: its
command line is written to `<workdir>/seed_<s>/command` so it reruns alone,
an interrupted one resumes, and one that already has results.json is skipped,
so rerunning the same command finishes the set. `python -m experiments.report
<workdir> --out=...` then tabulates mean ± 95% CI over the seeds.

The children are argument lists (never a shell) built from this process's own
command line, with the per-seed flags appended: absl lets a later flag win,
so nothing of the user's command line has to be parsed or rewritten here.
"""

import os
import subprocess
import sys
from typing import Callable, Sequence

from core import run_dir
from core.errors import ConfigError

COMMAND_FILE = "command"


def seed_workdir(workdir: str, seed: int) -> str:
    """The run directory of one seed."""
    return os.path.join(workdir, f"seed_{int(seed)}")


def child_argv(program: Sequence[str], argv: Sequence[str], seed: int,
               seed_flags: Sequence[str], workdir: str) -> list[str]:
    """One seed's command: this command line, then `--seeds=` and the seed's flags.

    Args:
      program: how this entry point is started (e.g. [python, '-m', 'experiments.maml']).
      argv: this process's flags (sys.argv[1:]).
      seed: the seed.
      seed_flags: the flags set to `seed`.
      workdir: the parent's run directory; the child's is `seed_workdir(workdir, seed)`.
    """
    extra = ["--seeds="] + [f"--{name}={int(seed)}" for name in seed_flags]
    return [*program, *argv, *extra, f"--workdir={seed_workdir(workdir, seed)}"]


def this_program() -> list[str]:
    """How the running entry point was started: `python -m <module>` or `python <file>`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name]
    return [sys.executable, os.path.abspath(sys.argv[0])]


def validate(seeds: Sequence[str], seed_flags: Sequence[str], known_flags: Sequence[str]) -> list[int]:
    """The seeds as integers; a bad seed or an unknown seed flag is a ConfigError."""
    try:
        parsed = [int(s) for s in seeds]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {','.join(seeds)!r}") from None
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"--seeds names a seed twice: {','.join(seeds)}")
    if not seed_flags:
        raise ConfigError("--seed_flags is empty: name the flags each seed sets (e.g. seed)")
    unknown = [name for name in seed_flags if name not in known_flags]
    if unknown:
        raise ConfigError(f"--seed_flags: no such flag of this experiment: {', '.join(unknown)}")
    return parsed


def run_seeds(program: Sequence[str], argv: Sequence[str], seeds: Sequence[int],
              seed_flags: Sequence[str], workdir: str,
              call: Callable[[list[str]], int] = subprocess.call,
              log: Callable[[str], None] = print) -> list[str]:
    """Runs every seed that has no results.json yet; returns the seeds' run directories.

    Raises:
      KeyboardInterrupt: a child was interrupted (rerun the command to resume).
      ConfigError: a child failed; its exit status and run directory are named.
    """
    done = []
    for seed in seeds:
        child_dir = seed_workdir(workdir, seed)
        if os.path.exists(os.path.join(child_dir, run_dir.RESULTS_FILE)):
            log(f"seed {seed}: finished before, {child_dir}")
        else:
            command = child_argv(program, argv, seed, seed_flags, workdir)
            os.makedirs(child_dir, exist_ok=True)
            run_dir.atomic_write_text(os.path.join(child_dir, COMMAND_FILE),
                                      " ".join(command) + "\n")
            log(f"seed {seed}: {child_dir}")
            status = call(command)
            if status in (130, -2):
                raise KeyboardInterrupt
            if status != 0:
                raise ChildFailed(status, f"seed {seed} ({child_dir}) exited with status {status}")
        done.append(child_dir)
    return done


class ChildFailed(Exception):
    """A seed's run failed; `status` is its exit status, which the parent exits with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
