"""Command-line entry points derived from a family's config dataclass.

An entry point in `experiments/` is three lines::

    cli.define_flags(runner.MamlRunConfig)
    if __name__ == "__main__":
        cli.run(runner.MamlRunConfig, runner.build, runner.report)

Every config field (declared with `core.experiment.option`) becomes one absl
flag of the same name, type, default and help text, so adding a field to a
config touches one place. Choices and lower bounds are checked by the
config's own `validate`, not by absl, so every bad value, whether given on
the command line or in Python, gets the same one-line error.

The shared `main` also owns what every run does around the training: the
malloc re-exec (`core.runtime`), `--multihost`, quiet logs, the run
directory printed first and the results last, and the exit codes:

    0   the run finished (results.json written)
    2   bad input: a flag, a config value, a dataset file (one line on stderr)
    3   the training loss stopped being finite (no results written)
    130 interrupted (Ctrl-C); rerun the same command to resume
"""

import dataclasses
import sys
import types
import typing
from typing import Any, Callable, TypeVar

from absl import app
from absl import flags
from absl import logging

from core import distributed
from core import experiment
from core import runtime
from core import seed_runs
from core.errors import ConfigError, TrainingDiverged, UserInputError

C = TypeVar("C", bound=experiment.RunConfig)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed) of a field annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {annotation}")
        return args[0], True
    return annotation, False


def _help(opts: dict[str, Any]) -> str:
    text = opts["help"]
    if opts["choices"] is not None:
        text += f" One of: {', '.join(map(str, opts['choices']))}."
    return text


def define_flags(config_cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One flag per config field, plus `--multihost`, `--seeds`, `--seed_flags`, `--malloc_tuning`.

    Args:
      config_cls: a `RunConfig` subclass.
      flag_values: where to define them (absl's global FLAGS by default).
    """
    for name, opts in experiment.field_options(config_cls).items():
        kind, _ = _base_type(opts["type"])
        default, helptext = opts["default"], _help(opts)
        if kind is bool:
            flags.DEFINE_bool(name, default, helptext, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, helptext, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, helptext, flag_values=flag_values)
        elif kind is str:
            flags.DEFINE_string(name, default, helptext, flag_values=flag_values)
        elif typing.get_origin(kind) is tuple:
            listed = None if default is None else [str(v) for v in default]
            flags.DEFINE_list(name, listed, helptext + " (comma-separated)",
                              flag_values=flag_values)
        else:
            raise TypeError(f"{config_cls.__name__}.{name}: no flag type for {kind}")
    flags.DEFINE_bool("multihost", False,
                      "Call jax.distributed.initialize() for a multi-host run (the cluster "
                      "auto-detected unless the three flags below are given).",
                      flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "Multi-process run: host:port of "
                        "process 0's coordinator (core/distributed.py).", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes.",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index.",
                         flag_values=flag_values)
    flags.DEFINE_list("seeds", [], "Run the configuration once per seed, each in "
                      "<workdir>/seed_<s>/ (core/seed_runs.py).", flag_values=flag_values)
    flags.DEFINE_list("seed_flags", ["seed"], "With --seeds: the flags each seed sets "
                      "(e.g. seed,data_seed).", flag_values=flag_values)
    flags.DEFINE_bool("malloc_tuning", True,
                      "Restart once with glibc malloc tunables that spare XLA:CPU most page "
                      "faults (core/runtime.py).", flag_values=flag_values)


def _tuple_value(name: str, kind: Any, values: list[str]) -> tuple:
    item_types = [t for t in typing.get_args(kind) if t is not Ellipsis]
    item = item_types[0] if item_types else str
    try:
        parsed = tuple(item(v) for v in values)
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated {item.__name__} values, got "
                          f"{','.join(values)!r}") from None
    if Ellipsis not in typing.get_args(kind) and len(parsed) != len(typing.get_args(kind)):
        raise ConfigError(f"--{name} takes {len(typing.get_args(kind))} values, got "
                          f"{','.join(values)!r}")
    return parsed


def config_from_flags(config_cls: type[C], flag_values: flags.FlagValues = flags.FLAGS) -> C:
    """The typed config from parsed flags; a missing --workdir gets the config's default."""
    values = {}
    for name, opts in experiment.field_options(config_cls).items():
        kind, _ = _base_type(opts["type"])
        value = flag_values[name].value
        if typing.get_origin(kind) is tuple and value is not None:
            value = _tuple_value(name, kind, value)
        values[name] = value
    config = config_cls(**values)
    if config.workdir is None:
        config = dataclasses.replace(config, workdir=config.default_workdir())
    return config


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag as one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def main(config_cls: type[C], build: experiment.Build,
         report: Callable[[dict[str, Any]], str]) -> Callable[[list[str]], None]:
    """The `main(argv)` of an entry point: flags -> config -> run -> closing lines.

    Args:
      config_cls: the family's config class (its flags defined by `define_flags`).
      build: the family's `build(config, mesh) -> Program`.
      report: results -> the closing lines printed on the terminal.
    """

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
        runtime.reexec_with_malloc_tunables(flags.FLAGS.malloc_tuning)
        cluster = distributed.ClusterFlags(
            flags.FLAGS.multihost, flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
            flags.FLAGS.process_id)
        try:
            joined = distributed.initialize(cluster)
        except UserInputError as err:
            _fail(str(err), 2)
        if joined:
            print(joined, flush=True)
        if flags.FLAGS["verbosity"].using_default_value:
            # Keep the terminal to the progress bar and the results (--verbosity=0 shows INFO).
            logging.set_verbosity(logging.WARNING)
        try:
            config = config_from_flags(config_cls)
            if flags.FLAGS.seeds:
                _run_per_seed(config)
                return
            print(f"run directory: {config.workdir}", flush=True)
            results = experiment.train_and_evaluate(config, build)
        except seed_runs.ChildFailed as err:
            _fail(str(err), err.status)
        except UserInputError as err:
            _fail(str(err), 2)
        except TrainingDiverged as err:
            _fail(str(err), 3)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume from the latest checkpoint",
                  file=sys.stderr)
            sys.exit(130)
        print(report(results))
        print(f"results: {config.workdir}/results.json")

    return _main


def _run_per_seed(config: experiment.RunConfig) -> None:
    """`--seeds`: validates the config once, then runs it once per seed (core/seed_runs.py)."""
    known = list(experiment.field_options(type(config)))
    seeds = seed_runs.validate(flags.FLAGS.seeds, flags.FLAGS.seed_flags, known)
    config.validate()
    print(f"run directory: {config.workdir} ({len(seeds)} seeds)", flush=True)
    done = seed_runs.run_seeds(seed_runs.this_program(), sys.argv[1:], seeds,
                               flags.FLAGS.seed_flags, config.workdir)
    print(f"seeds finished: {', '.join(done)}")
    print(f"table: python -m experiments.report {config.workdir} --out={config.workdir}/report")


def run(config_cls: type[C], build: experiment.Build,
        report: Callable[[dict[str, Any]], str]) -> None:
    """Parses the command line and runs `main` (call under `if __name__ == '__main__'`)."""
    app.run(main(config_cls, build, report), flags_parser=_parse_flags)
