"""The Optuna study of a search: storage, samplers, pruners and the recorded config.

Storage: by default a SQLite file `<study_dir>/study.db`; `--storage=URL` names
a database server (any SQLAlchemy URL, e.g. `postgresql://user:pw@host/db`)
or, as `journal:<path>`, a journal file (Optuna's `JournalStorage` with a
`JournalFileBackend`), which several machines can share over a network file
system. Several worker processes on one storage are Optuna's own distributed
mode: each asks the storage for its next trial.

Seeding: the random and TPE sampler of a trial is seeded from the pair (seed,
trial number) through numpy's `SeedSequence` (`trial_seed`; a trial's number is
its place in the storage). Not `seed + number`: then the search with seed 1
would replay the seed-0 search shifted by one trial, and repeated searches
would not be independent. So one worker with a
fixed seed suggests the same sequence every time, a resumed search goes on
with new suggestions instead of replaying the first ones, and two workers
asking at once draw from different streams. The grid sampler skips the points
the storage already holds.

A storage URL's password is never written anywhere: `study.json` and every
message hold the URL with the password masked (`mask_url`).
"""

import contextlib
import fcntl
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import optuna
from optuna.samplers import BaseSampler

from core import run_dir
from core.errors import ConfigError

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "halving")
STUDY_FILE = "study.json"
DB_FILE = "study.db"
JOURNAL_PREFIX = "journal:"
# Keys of study.json a rerun of the search may change.
CHANGEABLE = ("num_trials", "storage", "pruner_startup_trials")


def mask_url(url: str) -> str:
    """The URL with any password replaced by '***' (also in query strings)."""
    masked = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(?i)(password=)[^&;]*", r"\1***", masked)


def default_storage(study_dir: str) -> str:
    """The SQLite file inside the study directory."""
    return f"sqlite:///{os.path.abspath(os.path.join(study_dir, DB_FILE))}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage behind a URL ('journal:<path>' or an SQLAlchemy URL).

    Raises:
      ConfigError: the storage cannot be opened (the message masks the password).
    """
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend  # pylint: disable=g-import-not-at-top
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise ConfigError("--storage=journal:<path> needs a file path")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    # SQLite waits for a writer of another worker instead of failing at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # SQLAlchemy's errors have no common public base here.
        message = str(err).replace(_password(url), "***") if _password(url) else str(err)
        raise ConfigError(f"cannot open the storage {mask_url(url)}: "
                          f"{message.splitlines()[0]}") from None


def _password(url: str) -> str:
    match = re.search(r"://[^:/@]*:([^@/]*)@", url)
    return match.group(1) if match else ""


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` of the search seeded `seed` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates each trial to a sampler seeded with `trial_seed(seed, trial number)`.

    Args:
      factory: seed -> a fresh sampler.
      seed: the search's base seed.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self._factory = factory
        self._seed = seed
        self._number: int | None = None
        self._inner: BaseSampler | None = None

    def _for(self, trial) -> BaseSampler:
        if trial.number != self._number:
            self._number, self._inner = trial.number, self._factory(
                trial_seed(self._seed, trial.number))
        return self._inner

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name,
                                                   param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        if self._inner is not None:
            self._inner.reseed_rng()


class StudyGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, used with ask and tell.

    Its seed also shuffles the grid (a grid id names a different point under
    another seed), so every worker of a study uses the study's base seed; the
    points already visited or running are skipped, so a resumed search still
    goes on with new points. `after_trial` only called `study.stop()`, which is
    refused outside `study.optimize`; the worker stops by counting trials.
    """

    def after_trial(self, study, trial, state, values) -> None:
        del study, trial, state, values


def make_sampler(kind: str, seed: int, grid: Mapping[str, list] | None = None,
                 tpe_startup_trials: int = 10) -> BaseSampler:
    """The sampler of `--sampler` (no GP sampler: it would pull in torch).

    `tpe_startup_trials`: TPE samples at random until this many trials are
    complete (Optuna's default, 10, is most of a small budget).
    """
    if kind == "grid":
        if grid is None:
            raise ValueError("the grid sampler needs the grid")
        return StudyGridSampler(dict(grid), seed=seed)
    if kind == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if kind == "tpe":
        return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(
            seed=s, n_startup_trials=tpe_startup_trials), seed)
    raise ConfigError(f"unknown --sampler={kind!r}; expected one of {', '.join(SAMPLERS)}")


def make_pruner(kind: str, startup_trials: int = 5) -> optuna.pruners.BasePruner:
    """The pruner of `--pruner`: none, median (MedianPruner) or halving (successive halving).

    Args:
      kind: 'none', 'median' or 'halving'.
      startup_trials: the median pruner prunes nothing before this many trials finished.
    """
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    raise ConfigError(f"unknown --pruner={kind!r}; expected one of {', '.join(PRUNERS)}")


@contextlib.contextmanager
def study_dir_lock(study_dir: str) -> Iterator[None]:
    """Serialises the workers' set-up (storage tables, study creation, study.json)."""
    os.makedirs(study_dir, exist_ok=True)
    fd = os.open(os.path.join(study_dir, ".setup.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_config(study_dir: str, record: Mapping[str, Any]) -> None:
    """Writes study.json, or checks a rerun against it.

    Args:
      study_dir: the study directory.
      record: what the search is; its 'storage' must already be masked.

    Raises:
      ConfigError: the directory holds another search (naming the differing keys).
    """
    path = os.path.join(study_dir, STUDY_FILE)
    new = json.loads(run_dir.to_json(dict(record)))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        differing = run_dir.config_differences(old, new, CHANGEABLE)
        if differing:
            raise ConfigError(f"the study directory {study_dir} holds another search "
                              f"(differing: {', '.join(differing)}); rerun it with the same "
                              f"flags, or use a new --study_dir")
    run_dir.atomic_write_text(path, run_dir.to_json(new))


def read_config(study_dir: str) -> dict[str, Any] | None:
    """The study.json of a study directory, or None."""
    path = os.path.join(study_dir, STUDY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def open_study(study_dir: str, name: str, storage_url: str, direction: str,
               sampler: BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Creates the study in its storage, or loads it (several workers may call this at once).

    Raises:
      ConfigError: the storage cannot be opened, or holds this study with the
        other direction.
    """
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"the study {name!r} in {mask_url(storage_url)} is to "
                          f"{study.direction.name.lower()}, this search to {direction}")
    return study


def load_study(study_dir: str, storage_url: str | None = None) -> optuna.Study:
    """A finished or running study, for reports (its storage from study.json by default).

    Raises:
      ConfigError: no study.json, or its storage URL had a password (give --storage).
    """
    record = read_config(study_dir)
    if record is None:
        raise ConfigError(f"{study_dir} holds no {STUDY_FILE}: not a study directory")
    url = storage_url or record["storage"]
    if "***" in url:
        raise ConfigError(f"the storage of {study_dir} has a password, which is not recorded: "
                          f"give --storage=<URL>")
    return optuna.load_study(study_name=record["study_name"], storage=open_storage(url))
