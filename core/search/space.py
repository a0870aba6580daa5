"""The search space: a declarative JSON file, one entry per flag.

    {
      "comment": "python -m experiments.search --experiment=transfer ...",
      "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
      "weight_decay": [0.0, 1e-4, 1e-3],
      "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
      "freeze_blocks": {"type": "int", "low": 0, "high": 2, "when": {"strategy": "finetune"}}
    }

An entry is a list of values (a grid; categorical for the random and TPE
samplers), or an object: `{"type": "uniform" | "log_uniform", "low", "high"}`,
`{"type": "int", "low", "high"[, "log": true]}` or `{"type": "categorical",
"values": [...]}`. Any object may hold `"when": {flag: value or [values]}`:
the flag is searched only when that flag has one of those values. A `when`
on a flag the space does not search is decided once from the base flags; a
`when` on a searched flag is decided per trial (it may name only entries
without a `when` of their own). `"comment"` is free text.

Every mistake (an unknown flag, an empty range, low > high, a continuous
range under the grid sampler, a value of the wrong type) is one
`SpaceError` naming the file and the entry, before any trial runs.
"""

import dataclasses
import itertools
import json
import math
from typing import Any, Mapping

from core.errors import ConfigError

RANGE_TYPES = ("uniform", "log_uniform", "int")
ENTRY_TYPES = RANGE_TYPES + ("categorical",)
# Flags the search sets itself.
RESERVED = ("workdir",)
MAX_GRID_POINTS = 100_000


class SpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched flag.

    Attributes:
      name: the flag.
      kind: 'grid' (a list in the file), 'categorical' or one of RANGE_TYPES.
      values: the values of 'grid' and 'categorical'.
      low, high: the bounds of a range (both included).
      log: sample an 'int' range on a log scale.
      when: flag -> the values under which this flag is searched (per trial).
    """

    name: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    when: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)

    def is_active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the flag is searched, given the values chosen so far."""
        return all(chosen.get(flag) in allowed for flag, allowed in self.when.items())

    def grid_values(self) -> list[Any]:
        """The values the grid sampler visits (an 'int' range is every integer in it)."""
        if self.kind in ("grid", "categorical"):
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        raise ValueError(f"{self.name}: a {self.kind} range has no grid")

    def suggest(self, trial) -> Any:
        """Asks an Optuna trial for this flag's value."""
        if self.kind in ("grid", "categorical"):
            return trial.suggest_categorical(self.name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high,
                                   log=self.kind == "log_uniform")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The checked space: its entries in file order (unconditional ones first)."""

    path: str
    params: tuple[Param, ...]
    comment: Any = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's flag values: each active entry, asked of the trial in order."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.is_active(chosen):
                chosen[param.name] = param.suggest(trial)
        return chosen

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: flag -> values.

        Raises:
          SpaceError: an entry is a continuous range or is conditional on a
            searched flag (the grid is a full product of fixed values).
        """
        grid = {}
        for param in self.params:
            if param.kind in ("uniform", "log_uniform"):
                raise SpaceError(f"{self.path}: entry '{param.name}': the grid sampler needs "
                                 f"values, but '{param.kind}' is a continuous range (list the "
                                 f"values, or use --sampler=random or --sampler=tpe)")
            if param.when:
                raise SpaceError(f"{self.path}: entry '{param.name}': the grid sampler cannot "
                                 f"search a flag only when a searched flag has some value "
                                 f"('when' on {', '.join(param.when)}); use --sampler=random "
                                 f"or --sampler=tpe")
            grid[param.name] = param.grid_values()
        size = math.prod(len(v) for v in grid.values())
        if size > MAX_GRID_POINTS:
            raise SpaceError(f"{self.path}: the grid has {size} points (more than "
                             f"{MAX_GRID_POINTS}); narrow the int ranges")
        return grid

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid, in product order."""
        grid = self.grid()
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _fail(path: str, name: str, reason: str) -> SpaceError:
    return SpaceError(f"{path}: entry '{name}': {reason}")


def _check_value(path: str, name: str, kind: Any, value: Any) -> None:
    """Refuses a value the flag's type cannot take (e.g. a string for a float flag)."""
    if value is None or isinstance(value, (dict, list)):
        raise _fail(path, name, f"{json.dumps(value)} is not a flag value")
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        raise _fail(path, name, f"the value {value!r} holds a line break")
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(kind, True)
    if not ok:
        raise _fail(path, name, f"{json.dumps(value)} is not a value of this "
                                f"{getattr(kind, '__name__', kind)} flag")


def _number(path: str, name: str, entry: Mapping[str, Any], key: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, name, f"'{key}' must be a finite number, got {json.dumps(value)}")
    return value


def _range(path: str, name: str, kind: str, flag_type: Any,
           entry: Mapping[str, Any]) -> Param:
    low, high = _number(path, name, entry, "low"), _number(path, name, entry, "high")
    if low > high:
        raise _fail(path, name, f"low ({low}) > high ({high})")
    if low == high:
        raise _fail(path, name, f"empty range: low = high = {low} (give the flag in the "
                                f"base flags instead)")
    if kind == "log_uniform" and low <= 0:
        raise _fail(path, name, f"a log_uniform range needs low > 0, got {low}")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise _fail(path, name, "an int range needs integer low and high")
        if flag_type not in (int, float):
            raise _fail(path, name, "an int range needs a numeric flag")
        if entry.get("log") and low < 1:
            raise _fail(path, name, "a log int range needs low >= 1")
    elif flag_type is not float:
        raise _fail(path, name, f"a {kind} range needs a float flag; this one is "
                                f"{getattr(flag_type, '__name__', flag_type)} (use 'int' "
                                f"or a list)")
    return Param(name, kind, low=low, high=high, log=bool(entry.get("log", False)))


def _values(path: str, name: str, flag_type: Any, values: Any, kind: str) -> Param:
    if not isinstance(values, list) or not values:
        raise _fail(path, name, "needs a non-empty list of values")
    for value in values:
        _check_value(path, name, flag_type, value)
    if len({json.dumps(v) for v in values}) != len(values):
        raise _fail(path, name, "lists a value twice")
    return Param(name, kind, values=tuple(values))


def _condition(path: str, name: str, when: Any, flag_types: Mapping[str, Any]
               ) -> dict[str, tuple[Any, ...]]:
    if not isinstance(when, dict) or not when:
        raise _fail(path, name, "'when' must be an object {flag: value or [values]}")
    condition = {}
    for flag, allowed in when.items():
        if flag not in flag_types:
            raise _fail(path, name, f"'when' names an unknown flag '{flag}'")
        condition[flag] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    return condition


def _entry(path: str, name: str, entry: Any, flag_types: Mapping[str, Any]) -> Param:
    """One checked entry (its 'when' not yet resolved against the base flags)."""
    if name in RESERVED:
        raise _fail(path, name, "is set by the search itself (each trial's run directory)")
    if name not in flag_types:
        raise _fail(path, name, "unknown flag (not a field of the experiment's config)")
    flag_type = flag_types[name]
    if isinstance(entry, list):
        return _values(path, name, flag_type, entry, "grid")
    if not isinstance(entry, dict):
        raise _fail(path, name, "must be a list of values or an object with a 'type'")
    kind = entry.get("type")
    if kind not in ENTRY_TYPES:
        raise _fail(path, name, f"unknown type {json.dumps(kind)}; expected one of "
                                f"{', '.join(ENTRY_TYPES)}")
    allowed_keys = {"type", "when", "comment"} | (
        {"values"} if kind == "categorical" else {"low", "high"} | ({"log"} if kind == "int"
                                                                   else set()))
    unknown = sorted(set(entry) - allowed_keys)
    if unknown:
        raise _fail(path, name, f"unknown key(s) {', '.join(unknown)} for type '{kind}'")
    if kind == "categorical":
        param = _values(path, name, flag_type, entry.get("values"), "categorical")
    else:
        param = _range(path, name, kind, flag_type, entry)
    if "when" in entry:
        param = dataclasses.replace(param, when=_condition(path, name, entry["when"],
                                                           flag_types))
    return param


def _resolve_conditions(path: str, params: list[Param],
                        base_values: Mapping[str, Any]) -> list[Param]:
    """Decides `when`s on unsearched flags from the base flags; orders the rest."""
    searched = {p.name for p in params}
    conditional = {p.name for p in params if p.when}
    resolved = []
    for param in params:
        static = {f: v for f, v in param.when.items() if f not in searched}
        dynamic = {f: v for f, v in param.when.items() if f in searched}
        if not Param(param.name, param.kind, when=static).is_active(base_values):
            continue  # e.g. freeze_blocks under a base --strategy other than finetune
        for flag in dynamic:
            if flag == param.name or flag in conditional:
                raise _fail(path, param.name, f"'when' names '{flag}', which has a 'when' of "
                                              f"its own (one level of conditions only)")
        resolved.append(dataclasses.replace(param, when=dynamic))
    return sorted(resolved, key=lambda p: bool(p.when))


def load_space(path: str, flag_types: Mapping[str, Any],
               base_values: Mapping[str, Any]) -> SearchSpace:
    """Reads and checks a search-space file.

    Args:
      path: the JSON file.
      flag_types: the experiment's flags -> their type (int, float, bool, str, ...).
      base_values: the base flags' values, which decide `when`s on flags the
        space does not search.

    Raises:
      SpaceError: the first problem, naming the file and the entry.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as err:
        raise SpaceError(f"{path}: cannot read the search space ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise SpaceError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the search space must be a JSON object {{flag: entry}}")
    comment = raw.pop("comment", None)
    if not raw:
        raise SpaceError(f"{path}: the search space names no flag")
    params = [_entry(path, name, entry, flag_types) for name, entry in raw.items()]
    params = _resolve_conditions(path, params, base_values)
    if not params:
        raise SpaceError(f"{path}: no entry applies under the base flags (every 'when' "
                         f"is false)")
    return SearchSpace(path=path, params=tuple(params), comment=comment)
