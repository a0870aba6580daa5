"""The run directory: config, versions and final results of a training run.

A run directory (the "workdir") holds everything a run produces::

    workdir/
        config.json      the resolved configuration (written at start)
        versions.json    library versions and hardware of the last start
        results.json     final results (written at the end)
        metrics.jsonl    see `core.metrics`
        tensorboard/     see `core.metrics`
        checkpoints/     see `core.checkpoint`

Every file here is written atomically (temporary file + `os.replace`), so a
process killed at any moment leaves either the old or the new file, never a
half-written one.

When a run is resumed in an existing workdir, `write_run_config` refuses a
configuration that differs from the stored one, except in keys the caller
explicitly allows to change (such as the total number of steps). A key the
stored config lacks (an option added since the run started) compares with
the value the caller says every run had before it existed, if it says one.
"""

from collections.abc import Collection, Mapping
import dataclasses
import enum
import importlib.metadata
import json
import logging
import os
import pathlib
import platform
import socket
import tempfile
from typing import Any

import jax
import numpy as np

from core.errors import ConfigError, DataError

CONFIG_FILE = 'config.json'
VERSIONS_FILE = 'versions.json'
RESULTS_FILE = 'results.json'

_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
_MISSING = object()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically and durably.

    The text goes to a temporary file in the same directory, which is fsynced
    and then renamed over `path`.

    Args:
        path: Destination file. Its parent directory is created if needed.
        text: The full new content of the file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    """Converts the non-JSON values found in configs and results."""
    if isinstance(obj, (np.generic, jax.Array)) and np.ndim(obj) == 0:
        return np.asarray(obj).item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f'Cannot store a value of type {type(obj).__name__} in JSON: {obj!r}')


def to_json(obj: Any) -> str:
    """Serializes `obj` as indented JSON, converting numpy/jax/path values."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + '\n'


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f'Cannot read {path}: {e}. Delete the file or use a new workdir.') from e


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """Flattens nested dicts into {'a.b': value}."""
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def _is_allowed(key: str, allow_changed: Collection[str]) -> bool:
    return any(key == a or key.startswith(a + '.') for a in allow_changed)


def collect_versions() -> dict[str, Any]:
    """Returns the software versions and hardware of the current process.

    Returns:
        A JSON-serializable dict with the python and library versions
        (jax, jaxlib, flax, optax, orbax-checkpoint, numpy; None when a package
        is not installed) and `platform`, `device_kind`, `device_count`,
        `process_count`, `hostname` and `glibc_tunables` (see `core.runtime`).
    """
    versions: dict[str, Any] = {'python': platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions.update(
        platform=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        process_count=jax.process_count(),
        hostname=socket.gethostname(),
        glibc_tunables=os.environ.get('GLIBC_TUNABLES'),
    )
    return versions


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       allow_changed: Collection[str] = ()) -> list[str]:
    """Lists the (dotted) keys whose values differ between two configs.

    Args:
        old: The stored config.
        new: The new config (already JSON-normalized).
        allow_changed: Keys (or prefixes of dotted keys) that may differ.

    Returns:
        The sorted differing keys, excluding allowed ones.
    """
    flat_old, flat_new = _flatten(old), _flatten(new)
    return sorted(
        key for key in set(flat_old) | set(flat_new)
        if flat_old.get(key, _MISSING) != flat_new.get(key, _MISSING)
        and not _is_allowed(key, allow_changed))


def write_run_config(workdir: str | os.PathLike, config: Mapping[str, Any],
                     versions: Mapping[str, Any],
                     allow_changed: Collection[str] = (),
                     values_before: Mapping[str, Any] | None = None) -> None:
    """Writes `config.json` and `versions.json`, checking resumed runs.

    If `config.json` already exists (a resumed run), the new config must equal
    the stored one except for keys in `allow_changed`; the stored config is
    then replaced by the new one. Nested dicts are compared key by key, and a
    dotted name (`'optimizer.lr'`) or a prefix (`'optimizer'`) can be allowed.
    A change of library versions on resume is only logged as a warning.

    Args:
        workdir: The run directory (created if needed).
        config: The resolved configuration; must be JSON-serializable (numpy
            and jax scalars, paths, enums and dataclasses are converted).
        versions: Usually `collect_versions()`.
        allow_changed: Config keys that may legitimately change on resume,
            e.g. `('num_steps',)`.
        values_before: top-level key -> the value runs had before the key
            existed, or a function of the stored config that returns it; a
            stored config without the key is read as holding it (so a run
            started before an option was added resumes if the option keeps
            its old behaviour, and is refused if it does not).

    Raises:
        ConfigError: If the workdir holds a config that differs in other keys.
        DataError: If the stored config.json is unreadable.
    """
    workdir = pathlib.Path(workdir)
    config_text = to_json(dict(config))
    new_config = json.loads(config_text)
    config_path = workdir / CONFIG_FILE
    if config_path.exists():
        old_config = _read_json(config_path)
        if not isinstance(old_config, dict):
            raise DataError(f'{config_path} does not hold a JSON object.')
        old_config = _with_values_before(old_config, values_before or {})
        differing = config_differences(old_config, new_config, allow_changed)
        if differing:
            flat_old, flat_new = _flatten(old_config), _flatten(new_config)
            # One line (the CLI's promise for bad input), naming every differing key.
            changes = '; '.join(
                f'{k}: {flat_old.get(k, "<absent>")!r} -> {flat_new.get(k, "<absent>")!r}'
                for k in differing)
            raise ConfigError(
                f'The workdir {workdir} holds a run with a different configuration '
                f'(differing keys: {changes}); use the same flags to resume this run, '
                f'or a new workdir.')
    versions_path = workdir / VERSIONS_FILE
    new_versions = json.loads(to_json(dict(versions)))
    if versions_path.exists():
        try:
            old_versions = json.loads(versions_path.read_text(encoding='utf-8'))
        except (OSError, json.JSONDecodeError):
            old_versions = None
        if isinstance(old_versions, dict):
            changed = config_differences(old_versions, new_versions, ('hostname',))
            if changed:
                logging.warning('Resuming %s with different versions/hardware in: %s',
                                workdir, ', '.join(changed))
    atomic_write_text(config_path, config_text)
    atomic_write_text(versions_path, to_json(new_versions))


def _with_values_before(stored: dict[str, Any],
                        values_before: Mapping[str, Any]) -> dict[str, Any]:
    """The stored config with each key it lacks set to `values_before`'s value."""
    missing = {key: value(stored) if callable(value) else value
               for key, value in values_before.items() if key not in stored}
    return {**json.loads(to_json(missing)), **stored}


def read_run_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Returns the stored `config.json` of a workdir, or None if absent.

    Raises:
        DataError: If the file exists but is unreadable.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    return _read_json(path) if path.exists() else None


def write_results(workdir: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Writes the final results of a run to `results.json` atomically.

    Args:
        workdir: The run directory.
        results: JSON-serializable results (numpy/jax scalars are converted).
    """
    atomic_write_text(pathlib.Path(workdir) / RESULTS_FILE, to_json(dict(results)))


def read_results(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Returns the stored `results.json` of a workdir, or None if absent.

    Raises:
        DataError: If the file exists but is unreadable.
    """
    path = pathlib.Path(workdir) / RESULTS_FILE
    return _read_json(path) if path.exists() else None


__all__ = [
    'atomic_write_text', 'collect_versions', 'config_differences', 'read_results',
    'read_run_config', 'to_json', 'write_results', 'write_run_config',
]


def finished_run_dirs(patterns: Collection[str]) -> list[str]:
    """The run directories matching the glob `patterns` that hold a results.json, sorted.

    The others (runs still going or interrupted) are listed on stderr and skipped.

    Raises:
      DataError: no finished run directory matches.
    """
    import glob
    import sys
    dirs = sorted({d for pattern in patterns for d in glob.glob(pattern) if os.path.isdir(d)})
    finished = [d for d in dirs if os.path.exists(os.path.join(d, 'results.json'))]
    if not finished:
        raise DataError(f'no run directory with a results.json matches {list(patterns)}')
    for d in sorted(set(dirs) - set(finished)):
        print(f'skipped (no results.json yet): {d}', file=sys.stderr)
    return finished


def load_finished_results(workdir: str, kind: str, parse):
    """`parse(results)` of `workdir`'s results.json, for the results tables.

    Args:
      workdir: a run directory.
      kind: what the table expects ('multi-task', 'transfer'), for the message.
      parse: results dict -> the table's record; a KeyError, TypeError or
        ValueError in it means the file is not of that kind.

    Raises:
      DataError: the run has not finished, or its results.json is not of `kind`.
    """
    path = os.path.join(workdir, 'results.json')
    try:
        with open(path) as f:
            return parse(json.load(f))
    except FileNotFoundError:
        raise DataError(f'{path} does not exist: the run has not finished (rerun its command '
                        f'to resume it)') from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f'{path} is not a {kind} results.json ({e})') from None


def print_results_table(patterns, summarize, markdown, json_path: str | None) -> int:
    """The body of a `*_report` entry point: the table of the finished runs under `patterns`.

    Returns:
      The exit code: 0, or 2 after one line on stderr for bad input.
    """
    import sys
    from core.errors import UserInputError
    try:
        table = summarize(finished_run_dirs(patterns))
    except UserInputError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(markdown(table))
    if json_path:
        with open(json_path, 'w') as f:
            json.dump(table, f, indent=2)
    return 0
