"""Strict parameter transfer: initialise a target model from another run's parameters.

A parameter is named by its path, the '/'-joined keys of the nested dict
("trunk/conv0/kernel"). Batch-norm statistics (`model_state`) are named the
same way under their collection ("batch_stats/trunk/bn0/mean").

`transfer_params` is strict both ways, as big_vision's `merge_params` is: every
target leaf is loaded from the source, or the user said it is not (`dont_load`,
`zero_init`); every source leaf is used, or its counterpart was not loaded, or
the user said to drop it (`ignore_source`). Anything else is a `ConfigError`
that lists the paths and names the argument that fixes it, so a renamed layer
never silently keeps its random init.

Patterns (`dont_load`, `ignore_source`, `zero_init`, the keys of `rename`, and
the rules of `transfer.param_groups`) follow one rule (`compile_pattern`, from
`core.param_paths`, which the meta-learning family shares):

* a pattern containing any of ``\\ . ^ $ + { } ( ) |`` is a regular
  expression; otherwise it is a shell glob (`fnmatch`: `*` also crosses '/',
  `?` is one character, `[01]` a set). A plain path is the same either way.
* it matches a path when it matches the whole path or a whole ancestor of it,
  so "heads" (or "heads/.*", or "heads/*") covers every leaf under heads/, and
  "trunk/block1" does not match "trunk/block10/...".

A pattern that matches no path is an error too: it is almost always misspelt.

Inside `model_state` patterns see the path without its collection, so
`dont_load=("trunk/bn0",)` keeps both the layer's scale and bias and its
running statistics fresh, and `rename` moves both together.

A source is a run directory of this library (its best or latest checkpoint)
or an `.npz` file (`save_npz` documents the layout):

    source = read_source("/runs/pretrain")
    params, model_state, record = transfer_params(fresh_params, source["params"],
        target_model_state=fresh_state, source_model_state=source["model_state"],
        dont_load=("heads",))
"""

import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from core import experiment
from core.errors import ConfigError, DataError
# The path and pattern rule is core's (shared with the meta-learning family); re-exported here.
from core.param_paths import (compile_pattern, flatten, is_regex, listing,  # noqa: F401
                              match_path)

Tree = Any
Flat = dict[str, Any]

_COLLECTIONS = ("params", "model_state")


def unflatten(flat: Mapping[str, Any]) -> dict:
    """The nested dict of a {path: leaf} dict (the inverse of `flatten`)."""
    tree: dict = {}
    for path, leaf in flat.items():
        *parents, name = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"path {path!r} runs through the leaf {key!r}")
        if name in node:
            raise ConfigError(f"path {path!r} names a subtree and a leaf at once")
        node[name] = leaf
    return tree


def select_subtree(tree: Tree, prefix: str) -> Tree:
    """The sub-tree at `prefix` (e.g. 'trunk'), to load only part of a source."""
    node, keys = tree, prefix.strip("/").split("/")
    for depth, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            raise ConfigError(f"no sub-tree {prefix!r}: {'/'.join(keys[:depth]) or 'the root'} "
                              f"has no key {key!r} (it has {', '.join(sorted(node)) or 'none'})")
        node = node[key]
    return node


def _split(path: str, in_state: bool) -> tuple[str, str]:
    """(collection prefix, path the patterns see): model_state paths lose their collection."""
    if not in_state:
        return "", path
    collection, _, inner = path.partition("/")
    if not inner:
        raise ConfigError(f"model_state leaf {path!r} is not under a collection (batch_stats)")
    return collection + "/", inner


class _Rules:
    """The compiled patterns of one transfer, remembering which ones matched anything."""

    def __init__(self, dont_load, ignore_source, zero_init, rename):
        self.lists = {}
        for name, patterns in (("dont_load", dont_load), ("ignore_source", ignore_source),
                               ("zero_init", zero_init)):
            if isinstance(patterns, str):
                raise ConfigError(f"{name} must be a list of patterns, got the string "
                                  f"{patterns!r}")
            self.lists[name] = [(p, compile_pattern(p)) for p in patterns]
        if rename is not None and not isinstance(rename, Mapping):
            raise ConfigError(f"rename must map target patterns to source paths, got {rename!r}")
        for pattern, new in (rename or {}).items():
            if not isinstance(new, str) or not new.strip("/"):
                raise ConfigError(f"rename {pattern!r} must map to a non-empty source path, "
                                  f"got {new!r}")
        self.rename = [(p, compile_pattern(p), new.strip("/")) for p, new in (rename or {}).items()]
        self.used: set[tuple[str, str]] = set()

    def hit(self, name: str, path: str) -> bool:
        for pattern, compiled in self.lists[name]:
            if match_path(compiled, path):
                self.used.add((name, pattern))
                return True
        return False

    def source_of(self, path: str) -> str:
        """The source path of a target path: the first `rename` entry that matches, else itself."""
        for pattern, compiled, new in self.rename:
            found = match_path(compiled, path)
            if found:
                self.used.add(("rename", pattern))
                try:
                    head = found.expand(new) if is_regex(pattern) else new
                except (re.error, IndexError) as e:
                    raise ConfigError(f"rename {pattern!r} -> {new!r}: {e}") from None
                return head + path[found.end():]
        return path

    def check_all_used(self) -> None:
        names = [(n, p) for n, rules in self.lists.items() for p, _ in rules]
        names += [("rename", p) for p, _, _ in self.rename]
        idle = [f"{n} {p!r}" for n, p in names if (n, p) not in self.used]
        if idle:
            raise ConfigError(f"these patterns match no parameter: {listing(idle)}; check their "
                              f"spelling against the parameter paths, or remove them")


_KINDS = ((jnp.bool_, "bool"), (jnp.complexfloating, "complex"), (jnp.floating, "float"),
          (jnp.unsignedinteger, "unsigned int"), (jnp.signedinteger, "int"))


def _dtype(leaf) -> np.dtype:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _kind(dtype: np.dtype) -> str:
    """The dtype's kind (float, int, ...): bfloat16 and float32 are of one kind."""
    return next((name for base, name in _KINDS if jnp.issubdtype(dtype, base)), str(dtype))


def _mismatch(path: str, src: str, target, source) -> str | None:
    t_shape, s_shape = tuple(np.shape(target)), tuple(np.shape(source))
    if t_shape != s_shape:
        return f"{path} has target shape {t_shape} but source {src} has shape {s_shape}"
    t_dtype, s_dtype = _dtype(target), _dtype(source)
    if _kind(t_dtype) != _kind(s_dtype):
        return (f"{path} has target dtype {t_dtype} ({_kind(t_dtype)}) but source {src} has "
                f"{s_dtype} ({_kind(s_dtype)})")
    return None


def _plan(target: Flat, source: Flat, rules: _Rules, in_state: bool, problems: dict):
    """The new flat leaves, the record entries and the unused source paths of one tree."""
    leaves, record, loaded, skipped = {}, {}, set(), set()
    for path, leaf in target.items():
        collection, inner = _split(path, in_state)
        src = collection + rules.source_of(inner)
        zero, fresh = rules.hit("zero_init", inner), rules.hit("dont_load", inner)
        if zero or fresh:
            leaves[path] = jnp.zeros(np.shape(leaf), _dtype(leaf)) if zero else leaf
            record[path] = {"source": None, "init": "zeros" if zero else "fresh"}
            skipped.add(src)
        elif src not in source:
            problems["missing"].append(path if src == path else f"{path} (as {src})")
        elif (wrong := _mismatch(path, src, leaf, source[src])) is not None:
            problems["mismatch"].append(wrong)
        else:
            leaves[path] = jnp.asarray(source[src], dtype=_dtype(leaf))
            record[path] = {"source": src, "init": "loaded"}
            loaded.add(src)
    ignored = []
    for path in source:
        dropped = rules.hit("ignore_source", _split(path, in_state)[1])
        if path in loaded:
            if dropped:
                problems["contradiction"].append(path)
        elif path in skipped or dropped:
            ignored.append(path)
        else:
            problems["unexpected"].append(path)
    return leaves, record, ignored


_ADVICE = {
    "missing": ("target leaves have no source leaf", "add a pattern matching them to dont_load "
                "(keep their fresh init) or zero_init, or map them to source paths with rename"),
    "unexpected": ("source leaves are not used by the target", "add a pattern matching them "
                   "to ignore_source, or map target paths to them with rename"),
    "mismatch": ("target leaves disagree with their source", "add these target paths to "
                 "dont_load to keep their fresh init"),
    "contradiction": ("source leaves matched by ignore_source are loaded by the target",
                      "remove the pattern, or add the target paths to dont_load"),
}


def _raise(problems: dict[str, list[str]]) -> None:
    """One ConfigError for every problem found, each with what fixes it."""
    parts = [f"{len(found)} {what}: {listing(found)}; {fix}"
             for key, (what, fix) in _ADVICE.items() if (found := problems[key])]
    if parts:
        raise ConfigError("cannot transfer the parameters: " + "\n".join(parts))


def transfer_params(target_params: Tree, source_params: Tree, *, dont_load: Iterable[str] = (),
                    ignore_source: Iterable[str] = (), rename: Mapping[str, str] | None = None,
                    zero_init: Iterable[str] = (), target_model_state: Tree | None = None,
                    source_model_state: Tree | None = None) -> tuple[dict, dict | None, dict]:
    """The target's parameters (and model_state) loaded from the source, strictly.

    Args:
      target_params: the freshly initialised parameters of the target model.
      source_params: the parameters to load from (e.g. `read_source(...)["params"]`).
      dont_load: patterns of target paths kept at their fresh init. The source
        leaf each would have loaded (after `rename`) counts as deliberately unused.
      ignore_source: patterns of source paths with no target counterpart to drop
        (e.g. a pre-training head of another name). A source leaf that is loaded
        must not match them.
      rename: {target pattern: source path}, kauldron's new_to_old: the first
        entry matching a target path replaces the matched ancestor, so
        {"trunk/block0": "encoder/layer0"} maps every leaf under it; a regex
        key may use groups (r"trunk/block(\\d)": r"encoder/layer\\1").
      zero_init: patterns of target paths set to zeros instead of loaded or
        fresh (big_vision's zero-initialised head); they are not loaded.
      target_model_state: the target's fresh non-parameter collections
        ({"batch_stats": ...}); None transfers parameters only.
      source_model_state: the source's collections, transferred by the same rules.

    Returns:
      (params, model_state, record): new trees of the target's structure and dtypes
      (model_state None without `target_model_state`; inputs are not modified) and
      the JSON-able record {"params": {path: {"source": path or None, "init": 'loaded' |
      'fresh' | 'zeros'}}, "model_state": {...}, "ignored_source": {"params": [...], ...}}.

    Raises:
      ConfigError: for any leaf not accounted for, a shape or dtype-kind
        mismatch, a pattern that matches nothing, or a bad argument.
    """
    rules = _Rules(dont_load, ignore_source, zero_init, rename)
    source_state = flatten(source_model_state or {})
    if target_model_state is None and source_state:
        raise ConfigError(f"the source has model_state ({listing(sorted(source_state))}) but no "
                          f"target_model_state was given; pass it, or source_model_state=None")
    trees = {"params": (flatten(target_params), flatten(source_params))}
    if target_model_state is not None:
        trees["model_state"] = (flatten(target_model_state), source_state)
    problems = {key: [] for key in _ADVICE}
    plans = {name: _plan(target, source, rules, name == "model_state", problems)
             for name, (target, source) in trees.items()}
    _raise(problems)
    rules.check_all_used()
    empty = ({}, {}, [])
    record = {name: plans.get(name, empty)[1] for name in _COLLECTIONS}
    record["ignored_source"] = {name: plans.get(name, empty)[2] for name in _COLLECTIONS}
    model_state = None if target_model_state is None else unflatten(plans["model_state"][0])
    return unflatten(plans["params"][0]), model_state, record


def save_npz(path: str, params: Tree, model_state: Tree | None = None) -> None:
    """Writes parameters (and model_state) as an `.npz` source for `read_source`.

    Layout: one array per leaf, keyed "params/<path>" and "model_state/<collection>/<path>",
    e.g. "params/trunk/conv0/kernel", "model_state/batch_stats/trunk/bn0/mean". Numpy
    has no bfloat16: floats of non-numpy types are stored as float32
    (`transfer_params` casts back to the target's dtype).
    """
    if not str(path).endswith(".npz"):
        raise ConfigError(f"save_npz writes .npz files; got {path!r}")
    arrays = {}
    for name, tree in (("params", params), ("model_state", model_state or {})):
        for leaf_path, leaf in flatten(tree).items():
            value = np.asarray(leaf)
            if value.dtype.kind == "V" and jnp.issubdtype(value.dtype, jnp.floating):
                value = value.astype(np.float32)
            arrays[f"{name}/{leaf_path}"] = value
    np.savez(path, **arrays)


def _read_npz(path: str) -> dict[str, Tree]:
    trees: dict[str, Flat] = {name: {} for name in _COLLECTIONS}
    try:
        with open(path, "rb") as file:
            if file.read(4) != b"PK\x03\x04":
                raise DataError(f"{path} is not an .npz archive (a zip of .npy arrays); write "
                                f"it with transfer.params.save_npz")
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                name, _, leaf_path = key.partition("/")
                if name not in trees or not leaf_path:
                    raise DataError(f"{path} holds the key {key!r}; every key must start with "
                                    f"'params/' or 'model_state/' (see transfer.params.save_npz)")
                trees[name][leaf_path] = archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds pickled Python objects, which are never loaded "
                            f"(they could run code); save plain arrays with "
                            f"transfer.params.save_npz") from None
        raise DataError(f"{path} is not a readable .npz archive ({e})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path} is not a readable .npz archive ({e})") from None
    if not trees["params"]:
        raise DataError(f"{path} holds no 'params/...' arrays; write it with "
                        f"transfer.params.save_npz")
    try:
        return {name: unflatten(flat) for name, flat in trees.items()}
    except ConfigError as e:
        raise DataError(f"{path} holds inconsistent keys: {e}") from None


def read_source(source: str, which: str = "best") -> dict[str, Tree]:
    """{'params', 'model_state'} of a run directory or an `.npz` file, as numpy arrays.

    Args:
      source: a run directory written by this library, or an `.npz` file in
        the layout of `save_npz`.
      which: for a run directory, 'best' or 'latest' checkpoint (see
        `core.experiment.load_train_state`); an `.npz` holds one state.

    Raises:
      DataError: when `source` does not exist, holds no checkpoint, or is corrupt.
      ConfigError: for an unknown `which`.
    """
    if which not in ("best", "latest"):
        raise ConfigError(f"which must be 'best' or 'latest', got {which!r}")
    if os.path.isdir(source):
        state = experiment.load_train_state(source, which)
        return {"params": state["params"], "model_state": state.get("model_state") or {}}
    if os.path.isfile(source):
        return _read_npz(source)
    raise DataError(f"transfer source {source} does not exist; give a run directory of this "
                    f"library or an .npz file written by transfer.params.save_npz")
