"""The loop of one search worker; any number of them may share one storage.

Each worker, until the study holds `num_trials` counted trials and none is
left running or waiting:

1. recovers stale trials: a RUNNING trial whose trial lock is free was left by
   a worker that died (Ctrl-C, `kill -9`, a lost machine). It is marked
   `superseded` and failed, and its parameters are enqueued again with its run
   directory, so the retry runs the same values and resumes the same run;
2. asks Optuna for a trial (a waiting retry first); a trial beyond
   `num_trials` (two workers asked at once) or a grid point another trial
   already has is marked `surplus` and failed;
3. runs it (`trials.run`) and tells Optuna how it ended.

"Counted" trials are all but the superseded and surplus ones, so every
configuration is done once however often workers are killed. A worker with
nothing left to ask waits for the trials other workers are running, and
retries them if their worker dies.
"""

import dataclasses
import datetime
import os
import time
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from core import run_dir
from core.errors import ConfigError
from core.search import experiment_spec
from core.search import trials as trials_lib
from core.search.space import SearchSpace

SUPERSEDED = "superseded"
SURPLUS = "surplus"
# A RUNNING trial that has no owner this long after it started died before taking its lock.
UNOWNED_GRACE_SECONDS = 60.0


class SearchInputError(ConfigError):
    """A trial's run refused its flags: the base flags or the space are wrong."""


@dataclasses.dataclass
class SearchContext:
    """What every trial of a search shares.

    Attributes:
      experiment: the experiment run by each trial.
      study_dir: the study directory.
      space: the checked search space.
      base_lines: the base flagfile's lines.
      extra_flags: flags given after `--` on the search command.
      num_trials: the study's total number of trials.
      grid_size: the number of grid points (grid sampler), else None.
      poll_seconds: how often a running trial's metrics are read.
      log: where progress lines go.
    """

    experiment: experiment_spec.Experiment
    study_dir: str
    space: SearchSpace
    base_lines: Sequence[str]
    extra_flags: Sequence[str]
    num_trials: int
    grid_size: int | None = None
    poll_seconds: float = 0.5
    log: Callable[[str], None] = print

    @property
    def target(self) -> int:
        return self.num_trials if self.grid_size is None else min(self.num_trials,
                                                                   self.grid_size)


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards `num_trials` (not superseded, not surplus)."""
    return [t for t in trials if not t.user_attrs.get(SUPERSEDED) and not t.user_attrs.get(SURPLUS)]


def _params_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


def _is_stale(ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> bool:
    if "owner" not in trial.user_attrs:
        started = trial.datetime_start or datetime.datetime.now()
        return (datetime.datetime.now() - started).total_seconds() > UNOWNED_GRACE_SECONDS
    fd = trials_lib.try_lock(trials_lib.trial_dir(ctx.study_dir, trial.user_attrs["run_dir"]))
    if fd is None:
        return False
    os.close(fd)
    return True


def _supersede(study: optuna.Study, trial: optuna.trial.FrozenTrial, ctx: SearchContext) -> None:
    """Fails a stale trial and enqueues its parameters with its run directory."""
    storage = study._storage  # pylint: disable=protected-access
    lock_fd = None
    if "run_dir" in trial.user_attrs:
        lock_fd = trials_lib.try_lock(trials_lib.trial_dir(ctx.study_dir,
                                                           trial.user_attrs["run_dir"]))
        if lock_fd is None:
            return  # taken over meanwhile
    try:
        if storage.get_trial(trial._trial_id).state != TrialState.RUNNING:  # pylint: disable=protected-access
            return  # another worker recovered it first
        storage.set_trial_user_attr(trial._trial_id, SUPERSEDED, True)  # pylint: disable=protected-access
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # pylint: disable=protected-access
        params = _params_of(trial)
        if "run_dir" in trial.user_attrs:
            study.enqueue_trial(params, user_attrs={"run_dir": trial.user_attrs["run_dir"],
                                                    "retry_of": trial.number})
            ctx.log(f"trial {trial.number} was left running by a worker that died; "
                    f"retrying it with the same parameters in {trial.user_attrs['run_dir']}")
        elif params:
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def recover_stale(study: optuna.Study, ctx: SearchContext) -> None:
    """Retries every RUNNING trial whose worker died (see the module docstring)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(ctx, trial):
            _supersede(study, trial, ctx)


def _mark_surplus(study: optuna.Study, trial: optuna.Trial) -> None:
    trial.set_user_attr(SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)


def _is_surplus(study: optuna.Study, trial: optuna.Trial, ctx: SearchContext) -> bool:
    """A new trial beyond the target, or a grid point that another counted trial has."""
    frozen = study._storage.get_trial(trial._trial_id)  # pylint: disable=protected-access
    if "fixed_params" in frozen.system_attrs:
        return False  # a retry replaces a superseded trial
    earlier = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
    if len(earlier) >= ctx.target:
        return True
    grid_id = frozen.system_attrs.get("grid_id")
    return grid_id is not None and any(t.system_attrs.get("grid_id") == grid_id
                                       for t in earlier)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: trials_lib.Outcome,
          ctx: SearchContext) -> None:
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
        ctx.log(f"trial {trial.number}: best_val {outcome.value:.6g}")
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        ctx.log(f"trial {trial.number}: pruned at step {outcome.last_step}")
    else:
        trial.set_user_attr("failure", outcome.message)
        study.tell(trial, state=TrialState.FAIL)
        ctx.log(f"trial {trial.number}: failed: {outcome.message}")


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: SearchContext) -> None:
    """Suggests, writes the flags file, runs and tells one trial.

    Raises:
      SearchInputError: the run refused its flags (exit status 2).
      KeyboardInterrupt: the search was interrupted (the trial stays RUNNING
        and is retried by the next run of the same command).
    """
    values = ctx.space.suggest(trial)
    relative = trial.user_attrs.get("run_dir") or trials_lib.default_relative_dir(trial.number)
    workdir = trials_lib.trial_dir(ctx.study_dir, relative)
    lock_fd = trials_lib.try_lock(workdir)
    if lock_fd is None:
        raise ConfigError(f"the trial directory {workdir} is locked by another process")
    try:
        trial.set_user_attr("run_dir", relative)
        trial.set_user_attr("owner", trials_lib.owner())
        trial.set_user_attr("flags", values)
        header = (f"Trial {trial.number} of the study in {ctx.study_dir}; rerun it alone with:\n"
                  f"  python {' '.join(ctx.experiment.command[1:])} --flagfile="
                  f"{os.path.join(workdir, trials_lib.FLAGS_FILE)}")
        lines = experiment_spec.trial_flag_lines(ctx.base_lines, ctx.extra_flags, values,
                                                 workdir, header)
        flags_path = os.path.join(workdir, trials_lib.FLAGS_FILE)
        run_dir.atomic_write_text(flags_path, "\n".join(lines) + "\n")
        try:
            config = experiment_spec.parse_config(ctx.experiment, [f"--flagfile={flags_path}"])
        except ConfigError as err:
            _tell(study, trial, trials_lib.Outcome("failed", message=str(err)), ctx)
            return
        metric, _ = ctx.experiment.selection(config)
        ctx.log(f"trial {trial.number}: {values} -> {relative}")
        outcome = trials_lib.run(ctx.experiment.command, workdir, flags_path, trial, metric,
                                 lock_fd, ctx.poll_seconds)
        if outcome.state == "interrupted":
            raise KeyboardInterrupt
        _tell(study, trial, outcome, ctx)
        if outcome.state == "bad_input":
            raise SearchInputError(f"trial {trial.number} ({workdir}): {outcome.message}")
    finally:
        os.close(lock_fd)


def run_worker(study: optuna.Study, ctx: SearchContext, wait_seconds: float = 1.0) -> int:
    """Runs trials until the study is complete; returns how many this worker ran."""
    done_here, waiting_said = 0, False
    while True:
        recover_stale(study, ctx)
        all_trials = study.get_trials(deepcopy=False)
        live = counted(all_trials)
        queued = any(t.state == TrialState.WAITING for t in all_trials)
        if len(live) >= ctx.target and not queued:
            running = [t.number for t in live if t.state == TrialState.RUNNING]
            if not running:
                return done_here
            if not waiting_said:
                ctx.log(f"waiting for trial(s) {running}, running in other workers")
                waiting_said = True
            time.sleep(wait_seconds)
            continue
        trial = study.ask()
        if _is_surplus(study, trial, ctx):
            _mark_surplus(study, trial)
            continue
        run_trial(study, trial, ctx)
        done_here += 1
