r"""Hyper-parameter search over any experiment's flags (Optuna).

    python -m experiments.search --experiment=transfer \
      --flagfile=experiments/flags/transfer/fashion_finetune.flags \
      --space=experiments/spaces/transfer_finetune_small.json \
      --sampler=tpe --num_trials=20 --study_dir=studies/fashion_finetune_n10 \
      -- --source_workdir=runs/transfer_source_mnist_0to4 --data_dir=/path/to/fashion-mnist \
         --train_per_class=10

Each trial is an ordinary run of `python -m experiments.<experiment>` in
`<study_dir>/trials/<number>/` (with its own `flags` file; flags after `--`
are added to the base flags of every trial). The objective is the run's
validation selection value (`best_val` of results.json), maximised or
minimised as the family selects. Kill the search at any moment and rerun the
same command: finished trials are kept and the interrupted one is retried with
the same values, resuming its run directory. Start the same command in
several terminals or machines (one `--storage`) to run trials in parallel.

`--best_seeds=0,1,2` then reruns the best trial once per seed in
`<study_dir>/best_seeds/seed_<s>/`; `python -m experiments.report <study_dir>
--out=<dir>` tabulates and plots the study.

Exit status: 0 done; 2 bad input (a flag, the space file, a trial's flags: one
line on stderr); 130 interrupted (rerun to resume).
"""

import dataclasses
import importlib
import os
import sys

from absl import app
from absl import flags
import optuna

from core.errors import UserInputError
from core.search import experiment_spec
from core.search import seeds as seeds_lib
from core.search import space as space_lib
from core.search import study as study_lib
from core.search import worker as worker_lib

FAMILIES = ("maml", "mtl", "transfer")

flags.DEFINE_string("experiment", None, f"The experiment: {', '.join(FAMILIES)}, or a module "
                    "defining SEARCH_EXPERIMENT (a core.search.experiment_spec.Experiment).")
flags.DEFINE_string("space", None, "The search-space JSON file (core/search/space.py).")
flags.DEFINE_enum("sampler", "tpe", study_lib.SAMPLERS, "How trials are chosen.")
flags.DEFINE_integer("num_trials", None, "Trials of the whole study, over all workers "
                     "(grid: at most the grid's size; default: the grid's size).", lower_bound=1)
flags.DEFINE_string("study_dir", None, "The study directory (trials/, study.json, study.db).")
flags.DEFINE_string("study_name", None, "The study's name in its storage (default: the "
                    "study directory's name).")
flags.DEFINE_string("storage", None, "Optuna storage: an SQLAlchemy URL of a database server, "
                    "or journal:<path> (a journal file for several machines); default: "
                    "SQLite <study_dir>/study.db.")
flags.DEFINE_enum("pruner", "none", study_lib.PRUNERS, "Stop unpromising trials early "
                  "from their validation values.")
flags.DEFINE_integer("pruner_startup_trials", 5, "median: prune nothing before this many "
                     "trials finished.", lower_bound=0)
flags.DEFINE_integer("tpe_startup_trials", 10, "tpe: trials drawn at random before TPE's "
                     "model takes over (Optuna's default).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "The search's seed (a trial's sampler is seeded from seed and trial number).")
flags.DEFINE_float("poll_seconds", 0.5, "How often a running trial's metrics are read.")
flags.DEFINE_list("best_seeds", [], "After the search, rerun the best trial once per seed.")
flags.DEFINE_list("seed_flags", ["seed"], "The flags --best_seeds sets to each seed.")


def _maml() -> experiment_spec.Experiment:
    from meta import runner  # pylint: disable=g-import-not-at-top
    return experiment_spec.Experiment(
        "maml", (sys.executable, "-m", "experiments.maml"), runner.MamlRunConfig,
        lambda c: (f"select_{c.metric}_step{c.select_step}",
                   "max" if c.metric == "accuracy" else "min"))


def _mtl() -> experiment_spec.Experiment:
    from mtl import runner  # pylint: disable=g-import-not-at-top
    return experiment_spec.Experiment("mtl", (sys.executable, "-m", "experiments.mtl"),
                                      runner.MtlRunConfig,
                                      lambda c: (runner.SELECT_METRIC, "min"))


def _transfer() -> experiment_spec.Experiment:
    from transfer import domain_adaptation, runner  # pylint: disable=g-import-not-at-top

    def selection(config):
        if config.strategy in runner.DOMAIN_ADAPTATION:
            return domain_adaptation.SELECT[config.da_selection]
        return runner.SELECT_METRIC, "max"

    return experiment_spec.Experiment("transfer", (sys.executable, "-m", "experiments.transfer"),
                                      runner.TransferRunConfig, selection)


def resolve_experiment(name: str) -> experiment_spec.Experiment:
    """A family by name, or the SEARCH_EXPERIMENT of a module."""
    if name in FAMILIES:
        return {"maml": _maml, "mtl": _mtl, "transfer": _transfer}[name]()
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise UserInputError(f"unknown --experiment={name!r}; expected one of "
                             f"{', '.join(FAMILIES)} or a module") from None
    if not isinstance(getattr(module, "SEARCH_EXPERIMENT", None), experiment_spec.Experiment):
        raise UserInputError(f"--experiment={name}: the module defines no SEARCH_EXPERIMENT")
    return module.SEARCH_EXPERIMENT


def _check_direction(exp, base_argv, space, direction) -> None:
    """Refuses a space whose values would change the objective's direction."""
    for param in space.params:
        for value in param.values:
            config = experiment_spec.parse_config(
                exp, [*base_argv, experiment_spec.format_flag(param.name, value)])
            if exp.direction(config) != direction:
                raise UserInputError(f"{space.path}: entry '{param.name}': the value {value!r} "
                                     f"changes the objective's direction; search it in "
                                     f"separate studies")


def _context(exp, flagfile, extra, space) -> worker_lib.SearchContext:
    grid_size = len(space.grid_points()) if flags.FLAGS.sampler == "grid" else None
    num_trials = flags.FLAGS.num_trials or grid_size
    if num_trials is None:
        raise UserInputError("--num_trials is required (except with --sampler=grid)")
    return worker_lib.SearchContext(
        experiment=exp, study_dir=flags.FLAGS.study_dir, space=space,
        base_lines=experiment_spec.read_flag_lines(flagfile), extra_flags=extra,
        num_trials=num_trials, grid_size=grid_size, poll_seconds=flags.FLAGS.poll_seconds,
        log=lambda line: print(line, flush=True))


def _open(exp, flagfile, extra, space, direction, ctx) -> optuna.Study:
    FLAGS = flags.FLAGS
    study_dir = FLAGS.study_dir
    name = FLAGS.study_name or os.path.basename(os.path.abspath(study_dir))
    url = FLAGS.storage or study_lib.default_storage(study_dir)
    record = {"experiment": exp.name, "flagfile": os.path.abspath(flagfile),
              "base_flags": list(ctx.base_lines), "extra_flags": list(extra),
              "space": [dataclasses.asdict(p) | {"when": dict(p.when)} for p in space.params],
              "space_file": os.path.abspath(space.path), "sampler": FLAGS.sampler,
              "pruner": FLAGS.pruner, "pruner_startup_trials": FLAGS.pruner_startup_trials,
              "tpe_startup_trials": FLAGS.tpe_startup_trials,
              "seed": FLAGS.seed, "num_trials": ctx.num_trials, "direction": direction,
              "study_name": name, "storage": study_lib.mask_url(url)}
    sampler = study_lib.make_sampler(FLAGS.sampler, FLAGS.seed,
                                     space.grid() if FLAGS.sampler == "grid" else None,
                                     FLAGS.tpe_startup_trials)
    pruner = study_lib.make_pruner(FLAGS.pruner, FLAGS.pruner_startup_trials)
    with study_lib.study_dir_lock(study_dir):
        study_lib.record_config(study_dir, record)
        return study_lib.open_study(study_dir, name, url, direction, sampler, pruner)


def _best_seeds(exp, study, study_dir) -> None:
    best = study.best_trial
    flags_path = os.path.join(study_dir, best.user_attrs["run_dir"], "flags")
    seeds = [int(s) for s in flags.FLAGS.best_seeds]
    runs = seeds_lib.run_seeds(exp.command, flags_path, seeds, flags.FLAGS.seed_flags,
                               os.path.join(study_dir, "best_seeds"))
    print(f"best trial {best.number} rerun with seeds {seeds}: {', '.join(runs)}")


def search(argv_extra: list[str], flagfile: str) -> None:
    """Checks the inputs, opens the study and runs this worker's trials."""
    FLAGS = flags.FLAGS
    for name in ("experiment", "space", "study_dir"):
        if not FLAGS[name].value:
            raise UserInputError(f"--{name} is required")
    exp = resolve_experiment(FLAGS.experiment)
    base_argv = [f"--flagfile={flagfile}", *argv_extra]
    base_config = experiment_spec.parse_config(exp, base_argv)
    if not base_config.eval_every:
        raise UserInputError("the search's objective is the validation metric: the base flags "
                             "need --eval_every > 0")
    space = space_lib.load_space(FLAGS.space, exp.flag_types(),
                                 experiment_spec.config_values(base_config))
    direction = exp.direction(base_config)
    _check_direction(exp, base_argv, space, direction)
    ctx = _context(exp, flagfile, argv_extra, space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open(exp, flagfile, argv_extra, space, direction, ctx)
    ran = worker_lib.run_worker(study, ctx)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    print(f"study {study.study_name}: {ran} trial(s) run here, {len(complete)} complete")
    if complete:
        print(f"best trial {study.best_trial.number}: best_val {study.best_value:.6g} "
              f"{study.best_trial.user_attrs.get('flags')} in "
              f"{os.path.join(FLAGS.study_dir, study.best_trial.user_attrs['run_dir'])}")
        if FLAGS.best_seeds:
            _best_seeds(exp, study, FLAGS.study_dir)


def _split_flagfile(argv: list[str]) -> tuple[list[str], list[str]]:
    """Takes --flagfile out of the command line: it holds the experiment's flags, not ours."""
    rest, flagfiles = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest.append(arg)
            rest.extend(args)
        elif arg.startswith("--flagfile="):
            flagfiles.append(arg.split("=", 1)[1])
        elif arg == "--flagfile":
            flagfiles.append(next(args, ""))
        else:
            rest.append(arg)
    return rest, flagfiles


_BASE_FLAGFILE: list[str] = []


def _parse_flags(argv: list[str]) -> list[str]:
    rest, flagfiles = _split_flagfile(argv)
    if len(flagfiles) != 1 or not flagfiles[0]:
        print("error: give the experiment's base flags as exactly one --flagfile=<file>",
              file=sys.stderr)
        sys.exit(2)
    _BASE_FLAGFILE.append(flagfiles[0])
    try:
        return flags.FLAGS(rest)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    try:
        search(list(argv[1:]), _BASE_FLAGFILE[0])
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume the search", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
