"""One configuration rerun once per seed, each in its own run directory.

A search picks a configuration on one seed; how good it is needs several.
`run_seeds` takes a flag file (e.g. the best trial's `flags`) and runs it once
per seed with `--<seed flag>=s` for each seed flag (`seed`, and e.g.
`data_seed` for a new data subsample) in `<out_dir>/seed_<s>/`, each run
directory holding its own `flags` file. A run that already has results.json
is skipped and an interrupted one resumes, so rerunning the same command
finishes the set. The runs are then tabulated by `experiments/report.py`.
"""

import os
import subprocess
from typing import Callable, Sequence

from core import run_dir
from core.errors import ConfigError
from core.search import experiment_spec
from core.search import trials as trials_lib


def seed_flag_lines(base_lines: Sequence[str], seed: int, seed_flags: Sequence[str],
                    workdir: str) -> list[str]:
    """The flag file of one seed's run: the base lines, the seed flags, its workdir."""
    lines = [*base_lines, "# This seed:"]
    lines += [experiment_spec.format_flag(name, seed) for name in seed_flags]
    lines.append(experiment_spec.format_flag("workdir", workdir))
    return lines


def run_seeds(command: Sequence[str], flags_path: str, seeds: Sequence[int],
              seed_flags: Sequence[str], out_dir: str,
              log: Callable[[str], None] = print) -> list[str]:
    """Runs the flag file once per seed; returns the finished run directories.

    Args:
      command: the experiment's argument list before its flags.
      flags_path: the configuration's flag file (its `--workdir` is overridden).
      seeds: the seeds.
      seed_flags: the flags set to each seed (e.g. ['seed', 'data_seed']).
      out_dir: where the `seed_<s>/` run directories go.
      log: where progress lines go.

    Raises:
      ConfigError: a run refused its flags, or failed.
      KeyboardInterrupt: interrupted (rerun to resume).
    """
    base_lines = [line for line in experiment_spec.read_flag_lines(flags_path)
                  if not line.startswith("--workdir=")]
    finished = []
    for seed in seeds:
        workdir = os.path.abspath(os.path.join(out_dir, f"seed_{int(seed)}"))
        if not os.path.exists(os.path.join(workdir, run_dir.RESULTS_FILE)):
            seed_flags_path = os.path.join(workdir, trials_lib.FLAGS_FILE)
            run_dir.atomic_write_text(seed_flags_path, "\n".join(
                seed_flag_lines(base_lines, seed, seed_flags, workdir)) + "\n")
            log(f"seed {seed}: {workdir}")
            _run_one(command, workdir, seed_flags_path)
        finished.append(workdir)
    return finished


def _run_one(command: Sequence[str], workdir: str, flags_path: str) -> None:
    argv = [*command, f"--flagfile={flags_path}", f"--workdir={workdir}", "--noprogress"]
    log_path = os.path.join(workdir, trials_lib.LOG_FILE)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    if code in (130, -2):
        raise KeyboardInterrupt
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = " | ".join(f.read().strip().splitlines()[-3:])
        raise ConfigError(f"the run {workdir} exited with status {code}: {tail}")
