"""What the search needs to know of an experiment, and the flag files it writes.

The search never imports a family: the entry point hands it an `Experiment`
(the command that runs one run, the config class whose fields are the flags,
and which validation scalar the run selects on, and in which direction). The
base flags are parsed with the experiment's own flag definitions
(`core.cli.define_flags`) into a private `FlagValues`, so a bad base flag or
trial value is refused the way the experiment itself would refuse it, before
any subprocess starts.
"""

import dataclasses
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from absl import flags

from core import cli
from core import experiment
from core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment the search can run.

    Attributes:
      name: e.g. 'transfer'.
      command: the argument list that runs one run, before its flags, e.g.
        (sys.executable, '-m', 'experiments.transfer').
      config_class: the family's `RunConfig` subclass.
      selection: config -> (the validation scalar in metrics.jsonl whose best
        value is results.json's `best_val`, 'max' or 'min'), as the family's
        `build` chooses them for that config.
    """

    name: str
    command: tuple[str, ...]
    config_class: type
    selection: Callable[[Any], tuple[str, str]]

    def flag_types(self) -> dict[str, Any]:
        """Each flag's value type (Optional unwrapped; tuples stay tuple types)."""
        return {name: _base_type(opts["type"])
                for name, opts in experiment.field_options(self.config_class).items()}

    def direction(self, config: Any) -> str:
        """'maximize' or 'minimize', from the family's selection mode."""
        _, mode = self.selection(config)
        if mode not in ("max", "min"):
            raise ValueError(f"{self.name}: selection mode {mode!r} is not 'max' or 'min'")
        return "maximize" if mode == "max" else "minimize"


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; other annotations unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def format_flag(name: str, value: Any) -> str:
    """One flag-file line for a value (bools as true/false, lists comma-joined)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    if "\n" in text or "\r" in text:
        raise ConfigError(f"--{name}: the value {text!r} holds a line break")
    return f"--{name}={text}"


def parse_config(exp: Experiment, argv: Sequence[str]) -> Any:
    """The experiment's config from flag arguments (e.g. ['--flagfile=base.flags', ...]).

    Raises:
      ConfigError: an unknown or malformed flag, or a value the config refuses.
    """
    flag_values = flags.FlagValues()
    cli.define_flags(exp.config_class, flag_values)
    try:
        flag_values(["search"] + list(argv))
    except flags.Error as err:
        raise ConfigError(f"{exp.name} flags: {err}") from None
    config = cli.config_from_flags(exp.config_class, flag_values)
    config.validate()
    return config


def config_values(config: Any) -> dict[str, Any]:
    """The config's fields as a dict (what `when` conditions are decided on)."""
    return dataclasses.asdict(config)


def read_flag_lines(path: str) -> list[str]:
    """A flag file's lines, without blank lines (comments kept: absl skips them).

    Raises:
      ConfigError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as err:
        raise ConfigError(f"cannot read the flagfile {path} ({err.strerror})") from None


def trial_flag_lines(base_lines: Sequence[str], extra_flags: Sequence[str],
                     values: Mapping[str, Any], workdir: str, header: str) -> list[str]:
    """A trial's own flag file: the base flags, the extra flags, its values, its workdir.

    Later lines win in absl, so the trial's values override the base and the
    workdir, last, overrides everything.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    lines += ["# Base flags:", *base_lines]
    if extra_flags:
        lines += ["# Extra flags of the search command:", *extra_flags]
    lines += ["# This trial's values:", *(format_flag(k, v) for k, v in values.items())]
    lines.append(format_flag("workdir", workdir))
    return lines
