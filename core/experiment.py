"""One run of any family: the run directory, the loop, selection and test, done once.

A family (MAML, multi-task, transfer) supplies only what is its own: a
config dataclass derived from `RunConfig`, and a `build(config, mesh) ->
Program` giving the initial train state, the jitted step, the batches and
its validation and test functions. `train_and_evaluate(config, build)` does
the rest the same way for every family:

    workdir/
        .lock            held while a run is live (`core.run_lock`)
        config.json      the config; a resumed run must match it (`core.run_dir`)
        versions.json    library versions and hardware
        metrics.jsonl    train / val / test scalars, and tensorboard/ (`core.metrics`)
        checkpoints/     the latest states; best/ the best-validation state
        results.json     written last: the test block and the run's summary
        *.png            the family's plots

Kill a run at any moment and call it again with the same config: it resumes
from the latest checkpoint and ends with the same numbers.

Config fields carry their flag's help text, choices, lower bound and whether
a resumed run may change them (`option`), so the CLI (`core.cli`), the
validation and the resume check are all derived from one definition.
"""

import contextlib
import dataclasses
import os
import time
import typing
from typing import Any, Callable, Collection, Mapping

import jax
from absl import logging
from jax.sharding import Mesh

from core import distributed
from core import mesh as mesh_lib
from core import run_dir
from core import run_lock
from core import train_loop
from core.checkpoint import Checkpointer
from core.errors import ConfigError, DataError
from core.metrics import MetricsWriter, NullMetricsWriter
from core.train_state import Params, StepFn, TrainState

# The layout of what the loop checkpoints (TrainState fields, loop bookkeeping,
# parameter names). A run directory written with another layout is not resumed.
CHECKPOINT_LAYOUT = 3


_NO_BEFORE = object()


def option(default: Any, help: str, *, choices: Collection[Any] | None = None,
           minimum: float | None = None, resumable: bool = False,
           before: Any = _NO_BEFORE) -> Any:
    """A config field with what its flag, its validation and resumption need.

    Args:
      default: the default value.
      help: the flag's help text.
      choices: the allowed values (checked by `RunConfig.validate`; a None
        value, e.g. "take it from a preset", is not checked).
      minimum: the smallest allowed value (None values are not checked).
      resumable: a resumed run may change it (it does not change what is
        computed, or only extends it, like `num_steps`).
      before: for an option added to a config whose runs exist: the value
        they had before it (what the code then did), or a function of the
        stored config (a dict) returning it. A run directory whose
        config.json lacks the option resumes as if it held this value (so
        with this value, and is refused with another). Without it, such a run
        directory is refused.

    Returns:
      A `dataclasses.field`.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "minimum": minimum, "resumable": resumable}
    if before is not _NO_BEFORE:
        metadata["before"] = before
    return dataclasses.field(default=default, metadata=metadata)


def override(default: Any) -> Any:
    """Redeclares an inherited field with a new default, keeping its help and checks."""
    return dataclasses.field(default=default, metadata={"override": True})


def field_options(config_cls: type) -> dict[str, dict[str, Any]]:
    """Each field's `option` metadata, with `override`s resolved through the bases.

    Returns:
      name -> {'help', 'choices', 'minimum', 'resumable', 'type', 'default'},
      and 'before' where the option declares it.
    """
    hints = typing.get_type_hints(config_cls)
    inherited: dict[str, Mapping[str, Any]] = {}
    for cls in reversed(config_cls.__mro__):
        for field in getattr(cls, "__dataclass_fields__", {}).values():
            if not field.metadata.get("override"):
                inherited[field.name] = field.metadata
    options = {}
    for field in dataclasses.fields(config_cls):
        meta = dict(inherited.get(field.name, {}))
        if "help" not in meta:
            raise TypeError(f"{config_cls.__name__}.{field.name} is not declared with option()")
        options[field.name] = dict(meta, type=hints[field.name], default=field.default)
    return options


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every run has: where it lives, how long and how often, on which devices.

    Families derive their config from it and add their own fields with
    `option`; `override` changes an inherited default.
    """

    workdir: str | None = option(None, "Run directory (default: runs/<a name from the config>).",
                                 resumable=True)
    seed: int = option(0, "Seed of initialisation and of the training data order.")
    num_steps: int = option(1000, "Training steps.", minimum=0, resumable=True)
    eval_every: int = option(1000, "Validate every N steps, and at the end (0: never).",
                             minimum=0, resumable=True)
    checkpoint_every: int = option(1000, "Checkpoint every N steps, and at the end.",
                                   minimum=1, resumable=True)
    log_every: int = option(100, "Log training metrics every N steps.", minimum=1,
                            resumable=True)
    patience: int = option(0, "Stop after N validations in a row without improvement of the "
                              "select metric (0: never stop early).", minimum=0)
    num_devices: int | None = option(None, "Use the first N devices (default: all that split "
                                           "the batch).", minimum=1, resumable=True)
    progress: bool = option(True, "Show a progress bar.", resumable=True)

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid value.

        Checks every field's `choices` and `minimum` (None values are not
        checked); families extend it with checks that involve several fields.
        """
        for name, opts in field_options(type(self)).items():
            value = getattr(self, name)
            choices = opts["choices"]
            if choices is not None and value is not None and value not in choices:
                raise ConfigError(f"unknown --{name}={value!r}; expected one of "
                                  f"{', '.join(map(str, opts['choices']))}")
            if opts["minimum"] is not None and value is not None and value < opts["minimum"]:
                raise ConfigError(f"--{name} must be >= {opts['minimum']}, got {value}")

    def default_workdir(self) -> str:
        """The run directory when --workdir is not given."""
        return "runs/run"

    def sharded_batch(self) -> tuple[str, int] | None:
        """(flag name, size) of the batch axis split over devices; None: nothing is split."""
        return None

    def derived(self) -> dict[str, Any]:
        """Values the config implies beyond its fields (e.g. what a preset sets).

        They are recorded in config.json (and results.json's `config`) next to
        the fields, and a resumed run must match them as it must match the
        fields: a change of what a preset means is refused like a changed flag.
        """
        return {}

    @classmethod
    def resumable_keys(cls) -> tuple[str, ...]:
        """The fields a resumed run may change."""
        return tuple(n for n, o in field_options(cls).items() if o["resumable"])

    @classmethod
    def values_before(cls) -> dict[str, Any]:
        """The fields declared with `option(before=...)`: name -> that value."""
        return {n: o["before"] for n, o in field_options(cls).items() if "before" in o}


@dataclasses.dataclass
class Program:
    """What a family's `build` hands to `train_and_evaluate`.

    Attributes:
      state: the initial train state, placed on the mesh; also the template
        checkpoints are restored into.
      train_step: the jitted `step(state, batch) -> (state, metrics)`
        (`core.train_state.jit_step`); metrics include 'loss'.
      batch_fn: step -> the batch of that step (deterministic in the step).
      validate: (state, step) -> validation scalars, including `select_metric`;
        None: no validation (the last state is tested).
      test: state -> (the `test` block of results.json, the scalars logged as
        the 'test' split of metrics.jsonl).
      select_metric: the validation scalar that picks the tested checkpoint.
      select_mode: 'max' or 'min'.
      resolved: values the family resolved for this machine (e.g. which
        convolution implementation 'auto' means), recorded in config.json;
        they may differ on resume.
      summary: further top-level entries of results.json.
      conclude: (workdir, results) -> further top-level entries of results.json
        computed from the finished run (e.g. from its metrics), before it is written.
      finish: (workdir, results) -> None, run after results.json (plots).
    """

    state: TrainState
    train_step: StepFn
    batch_fn: Callable[[int], Any]
    validate: Callable[[TrainState, int], Mapping[str, float]] | None
    test: Callable[[TrainState], tuple[dict[str, Any], Mapping[str, float]]]
    select_metric: str
    select_mode: str = "max"
    resolved: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    conclude: Callable[[str, dict[str, Any]], Mapping[str, Any]] | None = None
    finish: Callable[[str, dict[str, Any]], None] | None = None


Build = Callable[[Any, Mesh], Program]


def choose_devices(batch: tuple[str, int] | None, num_devices: int | None) -> list:
    """The devices the batch axis is split over.

    All devices by default. On one host, when the batch does not split evenly
    over all of them, the largest number of devices that divides it is used
    (with a warning) rather than failing: e.g. mini-ImageNet 5-shot MAML has
    2 tasks per meta-batch.

    Args:
      batch: (flag name, size) of the sharded batch axis, or None.
      num_devices: use exactly the first N devices.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ConfigError(f"--num_devices={num_devices} but {len(devices)} "
                              f"device(s) are available")
        return devices[:num_devices]
    if batch is None:
        return devices[:1]
    name, size = batch
    if jax.process_count() == 1 and size % len(devices):
        usable = max(n for n in range(1, len(devices) + 1) if size % n == 0)
        logging.warning("--%s=%d does not split over %d devices; using %d", name, size,
                        len(devices), usable)
        return devices[:usable]
    return devices


def _check_layout(workdir: str) -> None:
    """Refuses a run directory whose checkpoints have another layout."""
    stored = run_dir.read_run_config(workdir)
    if stored is None or stored.get("checkpoint_layout") == CHECKPOINT_LAYOUT:
        return
    checkpoints = os.path.join(workdir, "checkpoints")
    if os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints)):
        raise ConfigError(
            f"the run directory {workdir} holds checkpoints of an older layout (version "
            f"{stored.get('checkpoint_layout', 1)}; this code writes {CHECKPOINT_LAYOUT}: "
            f"parameter names or train state changed); it cannot be resumed: use a new "
            f"--workdir")


def _run_loop(config: RunConfig, program: Program) -> tuple[train_loop.LoopResult, dict]:
    """The resumable loop, best-validation restore and test: (loop result, test block)."""
    checkpointer = Checkpointer(os.path.join(config.workdir, "checkpoints"), max_to_keep=2)
    best_checkpointer = Checkpointer(os.path.join(config.workdir, "best"), max_to_keep=1)
    loop_config = train_loop.LoopConfig(
        num_steps=config.num_steps, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, log_every=config.log_every,
        select_metric=program.select_metric, select_mode=program.select_mode,
        patience=config.patience)
    writer_cls = MetricsWriter if distributed.is_writer() else (
        lambda *_, **__: NullMetricsWriter())
    try:
        with writer_cls(config.workdir, resume_step=checkpointer.latest_step()) as writer:
            result = train_loop.run(loop_config, program.state, program.train_step,
                                    program.batch_fn, checkpointer=checkpointer,
                                    best_checkpointer=best_checkpointer, writer=writer,
                                    eval_fn=program.validate, progress=config.progress)
            tested = result.state
            if result.best_step is not None:
                tested = train_loop.restore_best(best_checkpointer, result.state)
            test_block, test_scalars = program.test(tested)
            writer.write(result.step, "test", test_scalars)
    finally:
        checkpointer.close()
        best_checkpointer.close()
    return result, test_block


def train_and_evaluate(config: RunConfig, build: Build) -> dict[str, Any]:
    """Trains (or resumes), restores the best-validation state and tests it.

    Args:
      config: the run; `config.workdir` must be set.
      build: the family's `build(config, mesh) -> Program`.

    Returns:
      The dict written to `workdir/results.json`.

    Raises:
      ConfigError, DataError: for bad configuration or data.
      TrainingDiverged: when the training loss stops being finite.
    """
    config.validate()
    if not config.workdir:
        raise ConfigError("--workdir is required")
    t_start = time.time()
    writes = distributed.is_writer()
    # In a multi-process run process 0 alone holds the lock and writes the run directory's
    # files; every process trains, checkpoints (orbax's multi-process path) and evaluates.
    with run_lock.hold(config.workdir) if writes else contextlib.nullcontext():
        mesh = mesh_lib.make_mesh(choose_devices(config.sharded_batch(), config.num_devices))
        if config.sharded_batch() is not None:
            name, size = config.sharded_batch()
            mesh_lib.check_divisible(size, mesh, f"--{name}")
        _check_layout(config.workdir)
        program = build(config, mesh)
        versions = run_dir.collect_versions()
        config_dict = dict(dataclasses.asdict(config), **config.derived(), **program.resolved,
                           checkpoint_layout=CHECKPOINT_LAYOUT)
        if writes:
            run_dir.write_run_config(config.workdir, config_dict, versions,
                                     allow_changed=config.resumable_keys() + tuple(program.resolved),
                                     values_before=config.values_before())
        result, test_block = _run_loop(config, program)
        results = {
            "steps": result.step,
            "wall_seconds": result.wall_seconds,
            "tested_checkpoint_step": (result.best_step if result.best_step is not None
                                       else result.step),
            "best_val": result.best_value,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "test": test_block,
            **program.summary,
            "config": config_dict,
            "versions": versions,
            "session_seconds": time.time() - t_start,
        }
        if program.conclude is not None:
            results.update(program.conclude(config.workdir, results))
        if writes:
            run_dir.write_results(config.workdir, results)
        if writes and program.finish is not None:
            program.finish(config.workdir, results)
    return results


def load_train_state(workdir: str, which: str = "best") -> dict[str, Any]:
    """Another run's train state as nested dicts of numpy arrays, without a template.

    Args:
      workdir: a run directory written by `train_and_evaluate` (any family).
      which: 'best' (the best-validation state, the one that was tested) or
        'latest'. 'best' falls back to 'latest' for a run without validation.

    Returns:
      {'step', 'params', 'model_state', 'opt_state', 'extra'}.

    Raises:
      ConfigError: for an unknown `which`.
      DataError: when the directory holds no checkpoint.
    """
    if which not in ("best", "latest"):
        raise ConfigError(f"which must be 'best' or 'latest', got {which!r}")
    directories = (["best"] if which == "best" else []) + ["checkpoints"]
    for name in directories:
        path = os.path.join(workdir, name)
        if not os.path.isdir(path):
            continue
        with Checkpointer(path) as checkpointer:
            if checkpointer.latest_step() is not None:
                return checkpointer.restore_as_numpy()["state"]
    raise DataError(f"no checkpoint in {workdir} (looked in {', '.join(directories)}/); "
                    f"is it a run directory written by this library?")


def load_params(workdir: str, which: str = "best") -> Params:
    """Another run's parameters θ as numpy arrays (see `load_train_state`)."""
    return load_train_state(workdir, which)["params"]
