"""Parameter paths and the one pattern rule that selects them.

A parameter is named by its path, the '/'-joined keys of the nested dict
("trunk/block0/conv/kernel", "head/bias"). Every family that picks
parameters by name uses the rule of `compile_pattern` and `match_path`:

* a pattern containing any of ``\\ . ^ $ + { } ( ) |`` is a regular
  expression; otherwise it is a shell glob (`fnmatch`: `*` also crosses '/',
  `?` is one character, `[01]` a set). A plain path is the same either way.
* it matches a path when it matches the whole path or a whole ancestor of it,
  so "head" (or "head/.*", or "head/*") covers every leaf under head/, and
  "trunk/block1" does not match "trunk/block10/...".

The transfer family (`transfer.params`, `transfer.param_groups`) loads,
freezes and groups parameters with it; the meta-learning family chooses with
a `PathFilter` which parameters its inner loop adapts (MAML: all, or all but
batch norm as the reference code; ANIL: 'head' only).
"""

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from core.errors import ConfigError

Tree = Any
Flat = dict[str, Any]

_REGEX_ONLY = frozenset("\\.^$+{}()|")
_LISTED = 10


def flatten(tree: Tree) -> Flat:
    """{path: leaf} of a nested mapping; empty sub-mappings have no path and vanish."""
    flat = {}

    def visit(node, prefix):
        for key, value in node.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ConfigError(f"parameter key {key!r} under {prefix or 'the root'!r} is "
                                  f"not a non-empty string without '/'; paths cannot name it")
            path = f"{prefix}/{key}" if prefix else key
            if isinstance(value, Mapping):
                visit(value, path)
            else:
                flat[path] = value

    if not isinstance(tree, Mapping):
        raise ConfigError(f"parameters must be a nested dict, got {type(tree).__name__}")
    visit(tree, "")
    return flat


def is_regex(pattern: str) -> bool:
    """Whether a pattern is read as a regular expression (it has a regex-only character)."""
    return not _REGEX_ONLY.isdisjoint(pattern)


def compile_pattern(pattern: str) -> re.Pattern:
    """The regex of a pattern, by the module's rule (regex if it has a regex-only character)."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"a parameter pattern must be a non-empty string, got {pattern!r}")
    if not is_regex(pattern):
        return re.compile(fnmatch.translate(pattern))
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"parameter pattern {pattern!r} is not a valid regular expression "
                          f"({e}); escape regex characters with '\\' or use a glob") from None


def match_path(compiled: re.Pattern, path: str) -> re.Match | None:
    """The match of the shortest ancestor-or-self of `path` that `compiled` fully matches."""
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        found = compiled.fullmatch("/".join(parts[:end]))
        if found:
            return found
    return None


def listing(paths: list[str]) -> str:
    """Up to ten paths, comma-separated, with a count of the rest (for error messages)."""
    more = f" (and {len(paths) - _LISTED} more)" if len(paths) > _LISTED else ""
    return ", ".join(paths[:_LISTED]) + more


def keypath_name(keypath: Sequence[Any]) -> str:
    """The '/'-joined path of a `jax.tree_util` key path (dict keys, attributes, indices)."""
    names = []
    for key in keypath:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
        else:
            names.append(str(key))
    return "/".join(names)


@dataclasses.dataclass(frozen=True)
class PathFilter:
    """Selects parameter paths: those an `include` pattern matches and no `exclude` pattern does.

    Patterns follow the module's rule. `PathFilter(exclude=("*/bn*",))`
    selects every parameter but the batch-norm ones of `core.trunks`
    ('trunk/block0/bn/bias', 'trunk/bn0/scale', ...);
    `PathFilter(include=("head",))` selects the output layer only. The
    filter is hashable, so it can sit in a frozen config.

    Attributes:
      include: patterns of the selected paths; ("*",) selects every path.
      exclude: patterns of paths removed from the selection.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for pattern in self.include + self.exclude:
            compile_pattern(pattern)  # a bad pattern fails here, not at trace time

    def __call__(self, path: str) -> bool:
        """Whether `path` is selected."""
        matches = lambda patterns: any(match_path(compile_pattern(p), path) for p in patterns)
        return matches(self.include) and not matches(self.exclude)

    def selected(self, tree: Tree, include_flag: str = "include",
                 exclude_flag: str = "exclude") -> list[str]:
        """The selected paths of `tree`, checking that every pattern is used.

        Args:
          tree: a nested dict of parameters.
          include_flag, exclude_flag: how the patterns are named in errors
            (e.g. '--inner_adapt').

        Raises:
          ConfigError: a pattern matches no path of `tree` (almost always a
            misspelling), or no path is selected.
        """
        paths = list(flatten(tree))
        for flag, patterns in ((include_flag, self.include), (exclude_flag, self.exclude)):
            idle = [p for p in patterns
                    if not any(match_path(compile_pattern(p), path) for path in paths)]
            if idle:
                raise ConfigError(f"{flag}: no parameter matches {listing(idle)}; the "
                                  f"parameters are {listing(paths)}")
        chosen = [path for path in paths if self(path)]
        if not chosen:
            raise ConfigError(f"{include_flag}={','.join(self.include)} with {exclude_flag}="
                              f"{','.join(self.exclude)} selects no parameter of "
                              f"{listing(paths)}")
        return chosen

    def mask(self, tree: Tree) -> Tree:
        """A tree like `tree` (any pytree of dicts) with True at the selected leaves."""
        return jax.tree_util.tree_map_with_path(lambda keypath, _: self(keypath_name(keypath)),
                                                tree)
