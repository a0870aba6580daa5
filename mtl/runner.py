"""A multi-task run: its config, and the `build` that `core.experiment` runs.

`experiment.train_and_evaluate(MtlRunConfig(...), build)` is what
`python -m experiments.mtl` does once flags are parsed. `build` supplies what
is multi-task learning's own: the benchmark's data and tasks, the shared
trunk and task heads, the method (a loss weighting or a gradient aggregator)
and the per-task evaluation; the run directory, loop, checkpoints, selection,
test and resume are `core.experiment`'s.

results.json adds `tasks: {task: {metric: value}}` (test), the method's final
task weights, the protocol, and, given single-task baselines
(`--stl_workdirs=task=workdir,...`, runs of this entry point with `--tasks=<one
task>`), `delta_m` (Maninis et al.; lower is better) and `delta_p` (LibMTL;
higher is better) against them.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from core import conv
from core import evaluate as evaluate_lib
from core import experiment
from core import mesh as mesh_lib
from core import networks
from core import run_dir
from core import supervised
from core import train_state
from core.datasets import arrays
from core.datasets import grouped
from core.errors import ConfigError, DataError
from core.experiment import option, override
from core.losses import split_variables
from core.metrics import read_metrics
from mtl import architectures
from mtl import methods as methods_lib
from mtl import metrics as mtl_metrics
from mtl import step as step_lib
from mtl.data import BENCHMARKS, TASK_INDEX, Benchmark, load_benchmark
from mtl.tasks import REGRESSION_LOSSES

ARCHITECTURES = ("hps", "cross_stitch", "mmoe", "hierarchical")
PROTOCOLS = ("best_val", "last_k")
SELECT_METRIC = "mean_task_loss"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MtlRunConfig(supervised.SupervisedConfig):
    """Everything that defines a multi-task run (the flags of `experiments.mtl`)."""

    num_steps: int = override(3000)
    eval_every: int = override(500)
    checkpoint_every: int = override(500)
    batch_size: int = override(256)
    benchmark: str = option("multi_mnist", "The multi-task benchmark (mtl/data.py).",
                            choices=BENCHMARKS)
    data_dir: str | None = option(None, "Folder with the dataset's official files (read only).",
                                  resumable=True)
    second_data_dir: str | None = option(None, "The second dataset's folder "
                                               "(multi_fashion_mnist: MNIST).", resumable=True)
    data_seed: int = option(0, "Seed of the generated data (pairs, angles, splits).")
    batch_per_task: int = option(0, "Task-indexed data (School): examples of every task in "
                                    "each training batch, which then has tasks x this rows "
                                    "(--batch_size is not used for training); 0 draws "
                                    "--batch_size examples at random, so most tasks miss most "
                                    "batches.", minimum=0)
    tasks: tuple[str, ...] = option((), "Train only these tasks (one task: a single-task "
                                        "baseline); default: all.")
    num_tasks: int = option(10, "Tasks of the generated regression benchmark.", minimum=1)
    regression_loss: str = option("mse", "Loss of the regression heads.",
                                  choices=REGRESSION_LOSSES)
    architecture: str = option("hps", "hps: hard parameter sharing, a shared trunk and one "
                                      "head per task; cross_stitch: one column per task, mixed "
                                      "after each block; mmoe: shared experts, one gate per "
                                      "task; hierarchical: each task's head at its own depth.",
                               choices=ARCHITECTURES)
    conv_impl: str = option("auto", "Convolutions of the LeNet trunks: xla, im2col, or auto "
                            "(im2col on CPU, where it is faster; xla elsewhere).",
                            choices=("auto",) + conv.CONV_IMPLS)
    num_experts: int = option(4, "Experts of --architecture=mmoe.", minimum=1)
    hierarchy_widths: tuple[int, ...] = option((64, 64), "Dense blocks of "
                                                         "--architecture=hierarchical.")
    task_depths: tuple[str, ...] = option((), "task=block pairs of --architecture=hierarchical "
                                              "(default: task i reads block min(i, last)).")
    method: str = option("equal", "A loss weighting or a gradient aggregator (mtl/methods.py).",
                         choices=methods_lib.METHODS)
    weights: tuple[float, ...] = option((), "Task weights of --method=static or constant, in "
                                            "task order (default: all 1).")
    mgda_normalization: str = option("none", "MGDA's gradient normalisation.",
                                     choices=("none", "l2", "loss", "loss+"))
    cagrad_c: float = option(0.5, "CAGrad's c.", minimum=0.0)
    gradnorm_alpha: float = option(1.5, "GradNorm's α.", minimum=0.0)
    weighting_lr: float = option(1e-3, "Learning rate of UW's and GradNorm's weights.")
    famo_lr: float = option(0.025, "Learning rate of FAMO's logits.")
    famo_gamma: float = option(1e-3, "Weight decay of FAMO's logits.", minimum=0.0)
    dwa_temperature: float = option(2.0, "DWA's temperature T.")
    protocol: str = option("best_val", "Reported test numbers: of the best-validation state, "
                                       "or averaged over the last --last_k evaluations "
                                       "(CAGrad / Nash-MTL / FAMO).", choices=PROTOCOLS)
    last_k: int = option(10, "Evaluations averaged by --protocol=last_k.", minimum=1)
    stl_workdirs: tuple[str, ...] = option((), "Single-task baselines as task=workdir pairs, "
                                               "for delta_m.", resumable=True)

    def validate(self) -> None:
        super().validate()
        if self.protocol == "last_k" and not self.eval_every:
            raise ConfigError("--protocol=last_k evaluates the test split at every validation; "
                              "it needs --eval_every > 0")
        for pair in self.stl_workdirs:
            if "=" not in pair:
                raise ConfigError(f"--stl_workdirs takes task=workdir pairs, got {pair!r}")

    def default_workdir(self) -> str:
        tasks = "_".join(self.tasks) if self.tasks else "all"
        return f"runs/mtl_{self.benchmark}_{tasks}_{self.method}_s{self.seed}"


def _conv_impl(config: MtlRunConfig) -> str:
    return conv.default_conv_impl() if config.conv_impl == "auto" else config.conv_impl


def _trunk(config: MtlRunConfig):
    """(the benchmark's shared trunk, its heads' hidden widths)."""
    dropout = config.dropout
    if config.benchmark.startswith("multi_"):
        return networks.MultiLeNetTrunk(conv_impl=_conv_impl(config),
                                        dropout_rate=dropout or 0.5), (50,)
    if config.benchmark == "rotated_mnist":
        return networks.LeNetTrunk(conv_impl=_conv_impl(config), dropout_rate=dropout), ()
    if config.benchmark == "school":
        return networks.MLPTrunk(hidden=(64,), dropout_rate=dropout), ()
    return networks.MLPTrunk(hidden=(64, 128, 128), dropout_rate=dropout), ()


def _stitched_blocks(config: MtlRunConfig, trunk) -> tuple:
    """The blocks each cross-stitch column copies: the trunk's layers as blocks."""
    if isinstance(trunk, networks.MLPTrunk):
        return tuple(architectures.DenseBlock(w, dropout_rate=config.dropout)
                     for w in trunk.hidden)
    impl = _conv_impl(config)
    return (architectures.ConvBlock(10, (5, 5), padding="VALID", conv_impl=impl),
            architectures.ConvBlock(20, (5, 5), padding="VALID", conv_impl=impl),
            architectures.DenseBlock(50, dropout_rate=config.dropout))


def _depths(config: MtlRunConfig, tasks) -> dict[str, int]:
    last = len(config.hierarchy_widths) - 1
    depths = {name: min(i, last) for i, name in enumerate(tasks)}
    for pair in config.task_depths:
        name, _, depth = pair.partition("=")
        if name not in tasks or not depth.isdigit() or int(depth) > last:
            raise ConfigError(f"--task_depths: {pair!r} is not task=block with a task of this "
                              f"run ({', '.join(tasks)}) and a block in 0..{last}")
        depths[name] = int(depth)
    return depths


def build_model(config: MtlRunConfig, benchmark: Benchmark):
    """The network of `--architecture` on the benchmark's trunk, one head per task."""
    widths = {name: task.outputs for name, task in benchmark.tasks.items()}
    trunk, hidden = _trunk(config)
    if config.architecture == "hps":
        return networks.TrunkAndHeads(trunk, widths, head_hidden=hidden)
    if config.architecture == "mmoe":
        return architectures.MMoE(widths, num_experts=config.num_experts, expert=trunk,
                                  tower_hidden=hidden)
    if config.architecture == "hierarchical":
        kinds = {name: task.kind for name, task in benchmark.tasks.items()}
        return architectures.Hierarchical(tuple(config.hierarchy_widths), widths,
                                          task_depth=_depths(config, widths), task_kinds=kinds,
                                          trunk=trunk, head_hidden=hidden,
                                          dropout_rate=config.dropout)
    if len(widths) < 2:
        raise ConfigError("--architecture=cross_stitch needs at least two tasks")
    return architectures.CrossStitch(_stitched_blocks(config, trunk), widths, head_hidden=hidden)


def _task_results(metrics: dict[str, float], benchmark: Benchmark) -> dict[str, dict]:
    """{task: {metric: value}} from the evaluator's '<task>/<metric>' means."""
    if benchmark.task_indexed:
        return {"all": {"explained_variance": step_lib.explained_variance(metrics),
                        "mse": metrics["all/mse"], "mae": metrics["all/mae"]}}
    return {name: {m: metrics[f"{name}/{m}"] for m in task.higher_is_better}
            for name, task in benchmark.tasks.items()}


def _directions(benchmark: Benchmark) -> dict[str, dict[str, bool]]:
    if benchmark.task_indexed:
        return {"all": {"explained_variance": True, "mse": False, "mae": False}}
    return {name: task.higher_is_better for name, task in benchmark.tasks.items()}


def _stl_baselines(config: MtlRunConfig) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} read from each single-task baseline's results.json."""
    baselines = {}
    for pair in config.stl_workdirs:
        task, workdir = pair.split("=", 1)
        results = run_dir.read_results(workdir)
        if results is None or task not in results.get("tasks", {}):
            raise DataError(f"--stl_workdirs: {workdir} has no finished single-task result for "
                            f"{task!r} (results.json with tasks.{task}); run it first with "
                            f"--tasks={task}")
        baselines[task] = results["tasks"][task]
    return baselines


def _train_batches(config: MtlRunConfig, benchmark: Benchmark, mesh):
    """The training batches: uniform, or `--batch_per_task` of every task (task-indexed data).

    Raises:
      ConfigError: `--batch_per_task` on data that are not task-indexed, or a method
        that compares tasks within a batch on task-indexed data sampled uniformly.
    """
    train = benchmark.splits["train"]
    if config.batch_per_task:
        if not benchmark.task_indexed:
            raise ConfigError(f"--batch_per_task is for task-indexed data (school); every "
                              f"example of {config.benchmark} serves every task: use "
                              f"--batch_size")
        return grouped.grouped_batch_fn(train, train.y[TASK_INDEX], config.batch_per_task,
                                        config.seed, mesh)
    if benchmark.task_indexed and config.method not in methods_lib.BATCH_INDEPENDENT_METHODS:
        raise ConfigError(f"--method={config.method} compares the tasks' losses or gradients "
                          f"within each batch, but a uniform batch of {config.benchmark} misses "
                          f"most tasks, which then look solved (zero loss, zero gradient): "
                          f"set --batch_per_task (e.g. 1) to put every task in every batch")
    return arrays.train_batch_fn(train, config.batch_size, config.seed, mesh)


def build(config: MtlRunConfig, mesh) -> experiment.Program:
    """Multi-task learning's part of a run: data, model, method, per-task evaluation."""
    benchmark = load_benchmark(config.benchmark, data_dir=config.data_dir,
                               second_data_dir=config.second_data_dir, seed=config.data_seed,
                               val_size=config.val_size, num_tasks=config.num_tasks,
                               regression_loss=config.regression_loss,
                               only_tasks=config.tasks)
    baselines = _stl_baselines(config)
    tasks = benchmark.tasks
    batch_fn = _train_batches(config, benchmark, mesh)
    steps_per_epoch = batch_fn.steps_per_epoch
    method = methods_lib.make_method(config.method, num_tasks=len(tasks),
                                     steps_per_epoch=steps_per_epoch,
                                     task_indexed=benchmark.task_indexed,
                                     options=dataclasses.asdict(config))
    if method.on_representation and config.architecture != "hps":
        raise ConfigError("--method=mgda_ub needs --architecture=hps (a shared representation)")
    model = build_model(config, benchmark)
    example = jnp.zeros((1, *benchmark.input_shape), jnp.float32)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(config.seed), example,
                                                     train=False))
    optimizer = supervised.make_optimizer(config)
    # Placed on the mesh like the step's outputs, so the step compiles once, not twice.
    state = mesh_lib.put_replicated(
        train_state.create(params, model_state, optimizer, method.init_state(len(tasks))), mesh)
    task_ids, target_key = benchmark.task_ids, benchmark.target_key
    train_step = train_state.jit_step(step_lib.make_train_step(
        model, tasks, method, optimizer, config.seed, task_ids=task_ids, target_key=target_key),
        mesh)
    eval_step = jax.jit(step_lib.make_eval_step(model, tasks, task_ids=task_ids,
                                                target_key=target_key))
    eval_size = config.resolved_eval_batch_size
    batches = {split: arrays.eval_batches(benchmark.splits[split], eval_size, mesh)
               for split in ("val", "test")}
    loss_names = (["all/loss"] if benchmark.task_indexed
                  else [f"{name}/loss" for name in tasks])

    def validate(state, step: int) -> dict[str, float]:
        del step
        metrics = evaluate_lib.evaluate(eval_step, state, batches["val"])
        metrics[SELECT_METRIC] = float(np.mean([metrics[n] for n in loss_names]))
        if config.protocol == "last_k":
            test = evaluate_lib.evaluate(eval_step, state, batches["test"])
            metrics.update({f"test:{k}": v for k, v in test.items()})
        return metrics

    def test(state) -> tuple[dict[str, Any], dict[str, float]]:
        if config.protocol == "last_k":
            metrics = _last_k_test(config)
        else:
            metrics = evaluate_lib.evaluate(eval_step, state, batches["test"])
        per_task = _task_results(metrics, benchmark)
        block = {"protocol": config.protocol, "tasks": per_task}
        if config.protocol == "last_k":
            block["last_k"] = config.last_k
        return block, {f"{t}/{m}": v for t, values in per_task.items() for m, v in values.items()}

    return experiment.Program(
        state=state, train_step=train_step,
        batch_fn=batch_fn,
        validate=validate if config.eval_every and len(benchmark.splits["val"]) else None,
        test=test, select_metric=SELECT_METRIC, select_mode="min",
        summary={"benchmark": config.benchmark, "method": config.method,
                 "architecture": config.architecture, "task_names": list(tasks)},
        conclude=functools.partial(_conclude, config, benchmark, baselines),
        finish=functools.partial(_plot_weights, config))


def _last_k_test(config: MtlRunConfig) -> dict[str, float]:
    """The test metrics averaged over the last `last_k` validations (logged as 'test:...')."""
    rows = [r for r in read_metrics(config.workdir, split="val")
            if any(k.startswith("test:") for k in r)][-config.last_k:]
    if not rows:
        raise ConfigError("--protocol=last_k found no test evaluations in metrics.jsonl")
    keys = [k for k in rows[-1] if k.startswith("test:")]
    return {k.removeprefix("test:"): float(np.mean([r[k] for r in rows])) for k in keys}


def _conclude(config: MtlRunConfig, benchmark: Benchmark, baselines: dict, workdir: str,
              results: dict[str, Any]) -> dict[str, Any]:
    """results.json's multi-task entries: per-task results, Δm, final weights."""
    per_task = results["test"]["tasks"]
    extra: dict[str, Any] = {"tasks": per_task}
    if baselines:
        directions = {t: d for t, d in _directions(benchmark).items() if t in baselines}
        extra["delta_m"] = mtl_metrics.delta_m(per_task, baselines, directions)
        extra["delta_p"] = mtl_metrics.delta_p(per_task, baselines, directions)
        extra["stl_workdirs"] = list(config.stl_workdirs)
    train_rows = read_metrics(workdir, split="train")
    weights = {k.removeprefix("weight/"): v for k, v in (train_rows or [{}])[-1].items()
               if k.startswith("weight/")}
    if weights:
        extra["final_weights"] = weights
    return extra


def _plot_weights(config: MtlRunConfig, workdir: str, results: dict[str, Any]) -> None:
    """Task weights over training (for methods that report them), one PNG per task."""
    del results
    rows = read_metrics(workdir, split="train")
    names = sorted({k for r in rows for k in r if k.startswith("weight/")})
    if not names:
        return
    from core import plots
    for name in names:
        points = [(r["step"], r[name]) for r in rows if name in r]
        task = name.removeprefix("weight/")
        plots.plot_curve(os.path.join(workdir, f"weight_{task}_vs_steps.png"),
                         [p[0] for p in points], [p[1] for p in points],
                         xlabel="training step", ylabel=f"weight of {task}",
                         title=f"{config.method} on {config.benchmark}: weight of {task}")


def report(results: dict[str, Any]) -> str:
    """The closing lines printed on the terminal."""
    lines = [f"{results['method']} on {results['benchmark']} "
             f"({results['test']['protocol']}):"]
    for task, values in results["tasks"].items():
        lines.append(f"  {task}: " + ", ".join(f"{m} {v:.4g}" for m, v in values.items()))
    if "delta_m" in results:
        lines.append(f"  delta_m {results['delta_m']:+.2f}% (lower is better), "
                     f"delta_p {results['delta_p']:+.2f}%")
    return "\n".join(lines)
