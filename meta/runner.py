"""A complete MAML run: data, network, meta-training, model selection, test.

`train_and_evaluate(MamlRunConfig(...))` is what `python -m experiments.maml`
does once flags are parsed; tests call it directly. The run directory
(`workdir`) holds the resolved config, library versions, metrics (JSONL and
TensorBoard), checkpoints (latest and best-validation), plots and
`results.json`. Rerunning with the same workdir resumes from the latest
checkpoint and ends with the same numbers as an uninterrupted run.
"""

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from core import mesh as mesh_lib
from core import networks
from core import run_dir
from core import train_loop
from core.checkpoint import Checkpointer
from core.datasets import sinusoid
from core.errors import ConfigError
from core.losses import classification_loss, regression_loss, split_variables
from core.metrics import MetricsWriter, read_metrics
from meta import evaluation
from meta import maml
from meta import task_map as task_map_lib

DATASETS = ("sinusoid", "omniglot", "miniimagenet")
NETWORKS = ("auto", "conv4", "mlp")
# Config keys a resumed run may change: they do not change what is computed (or, for
# num_steps and the schedules, only extend it).
RESUMABLE_CHANGES = ("num_steps", "eval_every", "checkpoint_every", "log_every", "progress",
                     "num_devices", "strategy", "remat", "scan_inner_loop",
                     "resolved_task_map", "resolved_conv_impl", "data_dir", "cache_dir",
                     "workdir")


@dataclasses.dataclass(frozen=True)
class MamlRunConfig:
    """Everything that defines a MAML run (the flags of `experiments.maml`).

    Defaults are the paper's sinusoid settings (K = 10). See
    `experiments/flags/maml/` for every cell of the paper's Table 1.
    """

    workdir: str
    dataset: str = "sinusoid"
    data_dir: str | None = None
    cache_dir: str | None = None
    omniglot_split: tuple[int, int] = (1100, 100)
    ways: int = 5
    shots: int = 10
    query: int = 10
    eval_query: int | None = None
    meta_batch_size: int = 25
    inner_steps: int = 1
    eval_inner_steps: int = 10
    select_inner_steps: int | None = None
    inner_lr: float = 0.01
    eval_inner_lr: float | None = None
    meta_lr: float = 1e-3
    grad_clip: float | None = None
    num_steps: int = 70000
    first_order: bool = False
    remat: bool = False
    scan_inner_loop: bool = False
    eval_tasks: int = 600
    val_tasks: int = 600
    eval_every: int = 5000
    checkpoint_every: int = 1000
    log_every: int = 100
    seed: int = 0
    eval_seed: int = 0
    bn_mode: str = "transductive"
    network: str = "auto"
    strategy: str = "auto"
    num_devices: int | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid value."""
        def need(ok: bool, message: str):
            if not ok:
                raise ConfigError(message)
        need(self.dataset in DATASETS,
             f"unknown --dataset={self.dataset!r}; expected one of {', '.join(DATASETS)}")
        need(self.network in NETWORKS,
             f"unknown --network={self.network!r}; expected one of {', '.join(NETWORKS)}")
        need(self.bn_mode in networks.BN_MODES,
             f"unknown --bn_mode={self.bn_mode!r}; expected one of {', '.join(networks.BN_MODES)}")
        need(self.strategy in task_map_lib.STRATEGIES,
             f"unknown --strategy={self.strategy!r}; expected one of "
             f"{', '.join(task_map_lib.STRATEGIES)}")
        need(self.eval_query is None or self.eval_query >= 1, "--eval_query must be >= 1")
        for name in ("shots", "query", "meta_batch_size", "inner_steps", "eval_tasks",
                     "val_tasks", "checkpoint_every", "log_every"):
            need(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        need(self.ways >= 2 or self.dataset == "sinusoid", f"--ways must be >= 2, got {self.ways}")
        need(self.eval_inner_steps >= 0, "--eval_inner_steps must be >= 0")
        need(self.select_inner_steps is None
             or 0 <= self.select_inner_steps <= self.eval_inner_steps,
             f"--select_inner_steps must be between 0 and --eval_inner_steps "
             f"({self.eval_inner_steps}), got {self.select_inner_steps}")
        need(self.num_steps >= 0, f"--num_steps must be >= 0, got {self.num_steps}")
        need(self.eval_every >= 0, f"--eval_every must be >= 0, got {self.eval_every}")
        need(self.inner_lr > 0 and self.meta_lr > 0, "--inner_lr and --meta_lr must be > 0")
        if self.dataset != "sinusoid":
            need(bool(self.data_dir), f"--data_dir is required for --dataset={self.dataset}: "
                 "the folder that holds the official dataset files")

    @property
    def metric(self) -> str:
        return "mse" if self.dataset == "sinusoid" else "accuracy"

    @property
    def resolved_cache_dir(self) -> str:
        default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                               "metatransfer")
        return self.cache_dir or default


def build_model(config: MamlRunConfig, conv_impl: str):
    """The network and loss of the run.

    Returns:
      (model, loss_fn, example input of one task's support set).
    """
    network = config.network
    if network == "auto":
        network = "mlp" if config.dataset == "sinusoid" else "conv4"
    if config.dataset == "sinusoid":
        if network != "mlp":
            raise ConfigError("--dataset=sinusoid uses --network=mlp (1-40-40-1)")
        model = networks.sinusoid_mlp()
        return model, regression_loss(model), jnp.zeros((config.shots, 1))
    size, channels = (28, 1) if config.dataset == "omniglot" else (84, 3)
    example = jnp.zeros((config.ways * config.shots, size, size, channels))
    if network == "mlp":
        model = networks.MLP(hidden=(256, 128, 64, 64), outputs=config.ways, batch_norm=True,
                             bn_mode=config.bn_mode)
    elif config.dataset == "omniglot":
        model = networks.omniglot_conv4(config.ways, config.bn_mode, conv_impl)
    else:
        model = networks.miniimagenet_conv4(config.ways, config.bn_mode, conv_impl)
    return model, classification_loss(model), example


class _Data:
    """Train/val/test batch functions of a run, placed on the device mesh."""

    def __init__(self, config: MamlRunConfig, mesh):
        self.in_step_sampler = None
        self.config = config
        b = config.meta_batch_size
        if config.dataset == "sinusoid":
            root = jax.random.PRNGKey(config.seed)
            eval_root = jax.random.PRNGKey(10_000 + config.eval_seed)
            keys = {"train": jax.random.fold_in(root, 0),
                    "val": jax.random.fold_in(eval_root, 1),
                    "test": jax.random.fold_in(eval_root, 2)}
            batch_sharding = mesh_lib.batch_sharded(mesh)

            def sample(split: str, index):
                return sinusoid.sample_tasks(jax.random.fold_in(keys[split], index), b,
                                             config.shots, self._query(split))

            self._fns = {split: jax.jit(functools.partial(sample, split),
                                        out_shardings=batch_sharding) for split in keys}
            # Training batches are sampled inside the jitted step: no host round trip.
            self.in_step_sampler = lambda index: jax.lax.with_sharding_constraint(
                sample("train", index), batch_sharding)
            return
        from core.datasets.episodes import EpisodeSampler, EpisodeSpec
        if config.dataset == "omniglot":
            from core.datasets.omniglot import load_omniglot
            splits = load_omniglot(config.data_dir, config.resolved_cache_dir,
                                   split_sizes=tuple(config.omniglot_split))
        else:
            from core.datasets.miniimagenet import load_miniimagenet
            splits = load_miniimagenet(config.data_dir, config.resolved_cache_dir)
        seeds = {"train": config.seed, "val": 10_000 + config.eval_seed,
                 "test": 20_000 + config.eval_seed}
        self._fns = {}
        for split, seed in seeds.items():
            spec = EpisodeSpec(ways=config.ways, shots=config.shots, query=self._query(split))
            sampler = EpisodeSampler(splits[split], spec, seed=seed)
            self._fns[split] = (lambda i, s=sampler: mesh_lib.put_batch(s.batch(i, b), mesh))

    def _query(self, split: str) -> int:
        if split == "train" or self.config.eval_query is None:
            return self.config.query
        return self.config.eval_query

    def batch_fn(self, split: str) -> Callable[[int], Any]:
        return self._fns[split]


def _choose_devices(config: MamlRunConfig) -> list:
    """The devices the task axis is split over.

    All devices by default. On one host, when the meta-batch does not split
    evenly over all of them, the largest number of devices that divides it is
    used (with a warning) rather than failing: e.g. mini-ImageNet 5-shot has
    2 tasks per meta-batch.
    """
    devices = jax.devices()
    if config.num_devices is not None:
        if not 1 <= config.num_devices <= len(devices):
            raise ConfigError(f"--num_devices={config.num_devices} but {len(devices)} "
                              f"device(s) are available")
        return devices[:config.num_devices]
    if jax.process_count() == 1 and config.meta_batch_size % len(devices):
        usable = max(n for n in range(1, len(devices) + 1) if config.meta_batch_size % n == 0)
        logging.warning("--meta_batch_size=%d does not split over %d devices; using %d",
                        config.meta_batch_size, len(devices), usable)
        return devices[:usable]
    return devices


def train_and_evaluate(config: MamlRunConfig) -> dict[str, Any]:
    """Meta-trains (or resumes), selects the best-validation θ and tests it.

    Args:
      config: the run.

    Returns:
      The dict written to `workdir/results.json`.

    Raises:
      ConfigError, DataError: for bad configuration or data.
    """
    config.validate()
    t_start = time.time()
    mesh = mesh_lib.make_mesh(_choose_devices(config))
    mesh_lib.check_divisible(config.meta_batch_size, mesh, "--meta_batch_size")
    task_map, conv_impl = task_map_lib.resolve_strategy(config.strategy)
    model, loss_fn, example = build_model(config, conv_impl)
    data = _Data(config, mesh)

    os.makedirs(config.workdir, exist_ok=True)
    versions = run_dir.collect_versions()
    config_dict = dataclasses.asdict(config)
    config_dict.update(resolved_task_map=task_map, resolved_conv_impl=conv_impl)
    run_dir.write_run_config(config.workdir, config_dict, versions,
                             allow_changed=RESUMABLE_CHANGES)

    params, model_state = split_variables(model.init(jax.random.PRNGKey(config.seed), example))
    optimizer = maml.outer_optimizer(config.meta_lr, config.grad_clip)
    state = mesh_lib.put_replicated(maml.init_train_state(params, model_state, optimizer), mesh)
    maml_config = maml.MamlConfig(inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                                  first_order=config.first_order, remat=config.remat,
                                  scan=config.scan_inner_loop)
    repl, batch = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    meta_step = maml.make_meta_train_step(loss_fn, optimizer, maml_config, task_map)
    train_batch_fn = data.batch_fn("train")
    if data.in_step_sampler is not None:
        step_fn = lambda s, index: meta_step(s, data.in_step_sampler(index))
        train_batch_fn, batch_in = np.int32, repl
    else:
        step_fn, batch_in = meta_step, batch
    train_step = jax.jit(step_fn, in_shardings=(repl, batch_in), out_shardings=(repl, repl),
                         donate_argnums=0)
    eval_batch = jax.jit(evaluation.make_adaptation_eval(
        loss_fn, inner_lr=config.eval_inner_lr or config.inner_lr,
        steps=config.eval_inner_steps, metric=config.metric, task_map=task_map),
        in_shardings=(repl, repl, batch), out_shardings=batch)

    def run_eval(train_state, split: str, num_tasks: int) -> dict[str, Any]:
        return evaluation.evaluate(eval_batch, train_state.params, train_state.model_state,
                                   data.batch_fn(split), num_tasks=num_tasks,
                                   batch_size=config.meta_batch_size, metric=config.metric)

    select_step = (config.eval_inner_steps if config.select_inner_steps is None
                   else config.select_inner_steps)
    select_metric = f"select_{config.metric}_step{select_step}"

    def validate(train_state, step: int) -> dict[str, float]:
        summary = run_eval(train_state, "val", config.val_tasks)
        return {config.metric: summary["mean"], f"{config.metric}_ci95": summary["ci95"],
                f"{config.metric}_step0": summary["per_step"][0],
                select_metric: summary["per_step"][select_step]}

    checkpointer = Checkpointer(os.path.join(config.workdir, "checkpoints"), max_to_keep=2)
    best_checkpointer = Checkpointer(os.path.join(config.workdir, "best"), max_to_keep=1)
    loop_config = train_loop.LoopConfig(
        num_steps=config.num_steps, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, log_every=config.log_every,
        select_metric=select_metric, select_mode="max" if config.metric == "accuracy" else "min")
    try:
        with MetricsWriter(config.workdir,
                           resume_step=train_loop.resume_step(checkpointer)) as writer:
            result = train_loop.run(loop_config, state, train_step, train_batch_fn,
                                    checkpointer=checkpointer,
                                    best_checkpointer=best_checkpointer, writer=writer,
                                    eval_fn=validate if config.eval_every else None,
                                    progress=config.progress)
            tested = result.state
            if result.best_step is not None:
                tested = train_loop.restore_best(best_checkpointer, result.state)
            test = run_eval(tested, "test", config.eval_tasks)
            writer.write(config.num_steps, "test",
                         {config.metric: test["per_step"][select_step],
                          f"{config.metric}_ci95": test["per_step_ci95"][select_step]})
    finally:
        checkpointer.close()
        best_checkpointer.close()

    results = {
        "dataset": config.dataset,
        "ways": None if config.dataset == "sinusoid" else config.ways,
        "shots": config.shots,
        "steps": config.num_steps,
        "wall_seconds": result.wall_seconds,
        "tested_checkpoint_step": result.best_step if result.best_step is not None
        else config.num_steps,
        "best_val": result.best_value,
        "test": {"metric": config.metric, "mean": test["per_step"][select_step],
                 "ci95": test["per_step_ci95"][select_step], "inner_steps": select_step,
                 "unit": test["unit"], "num_tasks": test["num_tasks"],
                 "eval_inner_steps": config.eval_inner_steps, "per_step": test["per_step"],
                 "per_step_ci95": test["per_step_ci95"],
                 "per_step_median": test["per_step_median"],
                 "per_step_diverged_tasks": test["per_step_diverged"],
                 "loss_per_step": test["loss"]},
        "bn_mode": config.bn_mode,
        "config": config_dict,
        "versions": versions,
        "session_seconds": time.time() - t_start,
    }
    run_dir.write_results(config.workdir, results)
    _plot_curves(config, test)
    return results


def restore_train_state(config: MamlRunConfig, which: str = "best") -> maml.MetaTrainState:
    """Loads a trained run's state from its run directory, on the default device.

    Args:
      config: the run's config (as in `workdir/config.json`).
      which: 'best' (the best-validation checkpoint, the one tested) or 'latest'.

    Returns:
      The `MetaTrainState`; `state.params` is θ.
    """
    _, conv_impl = task_map_lib.resolve_strategy(config.strategy)
    model, _, example = build_model(config, conv_impl)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(config.seed), example))
    template = maml.init_train_state(params, model_state,
                                     maml.outer_optimizer(config.meta_lr, config.grad_clip))
    directory = os.path.join(config.workdir, "best" if which == "best" else "checkpoints")
    with Checkpointer(directory) as checkpointer:
        return checkpointer.restore({"state": template,
                                     "loop": train_loop.loop_state_template()})["state"]


def _plot_curves(config: MamlRunConfig, test: dict[str, Any]) -> None:
    """Validation metric vs meta-training steps, and test metric vs inner steps."""
    from core import plots
    label = "accuracy (%)" if config.metric == "accuracy" else "MSE"
    val = [r for r in read_metrics(config.workdir) if r.get("split") == "val"]
    if val:
        plots.plot_curve(os.path.join(config.workdir, f"val_{config.metric}_vs_steps.png"),
                         [r["step"] for r in val], [r[config.metric] for r in val],
                         yerr=[r[f"{config.metric}_ci95"] for r in val],
                         xlabel="meta-training step", ylabel=f"validation {label}",
                         title=f"MAML {config.dataset}: validation {label} "
                               f"after {config.eval_inner_steps} inner steps")
    plots.plot_curve(os.path.join(config.workdir, f"test_{config.metric}_vs_inner_steps.png"),
                     list(range(len(test["per_step"]))), test["per_step"],
                     yerr=test["per_step_ci95"], xlabel="inner steps at test time",
                     ylabel=f"test {label}",
                     title=f"MAML {config.dataset}: test {label} on {test['num_tasks']} tasks")
