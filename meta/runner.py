"""A MAML run: its config, and the `build` that `core.experiment` runs.

`experiment.train_and_evaluate(MamlRunConfig(...), build)` is what
`python -m experiments.maml` does once flags are parsed; tests call it
directly. `build` supplies what is MAML's own: the network, the episode
batches, the jitted meta-step and the few-shot evaluation protocol; the run
directory, loop, checkpoints, selection and test bookkeeping are
`core.experiment`'s.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from core import experiment
from core import mesh as mesh_lib
from core import networks
from core import train_state
from core.datasets import sinusoid
from core.datasets.omniglot import MAML_SPLIT_SIZES, RESIZE_METHODS
from core.errors import ConfigError
from core.experiment import option, override
from core.losses import classification_loss, regression_loss, split_variables
from core.metrics import read_metrics
from meta import episodes as episodes_lib
from meta import evaluation
from meta import fidelity as fidelity_lib
from meta import maml
from meta import task_map as task_map_lib

DATASETS = ("sinusoid", "omniglot", "miniimagenet")
NETWORKS = ("auto", "conv4", "mlp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MamlRunConfig(experiment.RunConfig):
    """Everything that defines a MAML run (the flags of `experiments.maml`).

    Defaults are the paper's sinusoid settings (K = 10). See
    `experiments/flags/maml/` for every cell of the paper's Table 1.
    """

    num_steps: int = override(70000)
    eval_every: int = override(5000)
    dataset: str = option("sinusoid", "Task family.", choices=DATASETS)
    data_dir: str | None = option(None, "Folder with the official dataset files (read only).",
                                  resumable=True)
    cache_dir: str | None = option(None, "Where decoded datasets are cached (default: "
                                         "~/.cache/metatransfer).", resumable=True)
    omniglot_split: tuple[int, int] = option(
        MAML_SPLIT_SIZES, "Omniglot characters for training and validation (the rest test); "
        "default: the MAML split (1200 training characters, the last 100 validate).")
    ways: int = option(5, "N: classes per task (classification).")
    shots: int = option(10, "K: support examples per class (sinusoid: support points).",
                        minimum=1)
    query: int = option(10, "Query examples per class (sinusoid: query points).", minimum=1)
    eval_query: int | None = option(None, "Query examples per class at validation/test "
                                          "(default: --query).", minimum=1)
    meta_batch_size: int = option(25, "Tasks per meta-update.", minimum=1)
    inner_steps: int = option(1, "Inner SGD steps during meta-training.", minimum=1)
    eval_inner_steps: int = option(10, "Inner SGD steps at validation and test time.",
                                   minimum=0)
    select_inner_steps: int | None = option(
        None, "Model selection uses the validation metric after this many inner steps "
        "(default: --eval_inner_steps).", minimum=0)
    inner_lr: float = option(0.01, "alpha: inner SGD step size.")
    eval_inner_lr: float | None = option(None, "alpha at test time (default: --inner_lr).")
    meta_lr: float = option(1e-3, "beta: Adam step size of the meta-update.")
    grad_clip: float | None = option(None, "Clip meta-gradient entries to [-c, c] "
                                           "(mini-ImageNet: 10).")
    first_order: bool = option(False, "First-order MAML (no second derivatives).")
    remat: bool = option(False, "Recompute inner-step activations in the backward pass; runs "
                                "the inner steps in a lax.scan (memory flat in --inner_steps).",
                         resumable=True)
    scan_inner_loop: bool = option(False, "Inner steps in a lax.scan (compile time flat in "
                                          "--inner_steps).", resumable=True)
    eval_tasks: int = option(600, "Fixed test tasks for the final evaluation.", minimum=1)
    val_tasks: int = option(600, "Fixed validation tasks for model selection.", minimum=1)
    eval_seed: int = option(0, "Seed of the validation and test tasks.")
    bn_mode: str = option("transductive", "Batch norm: batch statistics at test too (as the "
                                          "reference code), or running statistics at test.",
                          choices=networks.BN_MODES)
    bn_fast_variance: bool = option(True, "Batch-norm variance in one pass, E[x^2] - E[x]^2 "
                                          "(as flax); --nobn_fast_variance: two-pass, more "
                                          "accurate when |mean| >> std.")
    network: str = option("auto", "auto: MLP for sinusoid, Conv4 for images.", choices=NETWORKS)
    strategy: str = option("auto", "How tasks are mapped and convolutions computed; auto picks "
                                   "per backend.", choices=task_map_lib.STRATEGIES,
                           resumable=True)
    # The reference code's hidden details (meta/fidelity.py): a preset, and one switch per
    # detail; a switch left unset (None) takes the preset's value, one given explicitly wins.
    # A run started before they existed did what the 'ours' preset does (before=).
    fidelity_preset: str = option(
        "ours", "Sets every fidelity switch left unset: 'ours' (this library's choices) or "
        "'reference' (those of the reference code, cbfinn/maml). An explicit switch wins.",
        choices=fidelity_lib.PRESETS, before="ours")
    inner_loss_reduction: str | None = option(
        None, "Inner-loop classification loss: mean cross-entropy over the support set "
        "(ours), or sum_div_shots, the reference's cross-entropy / K summed over the N*K "
        "support examples (N times the mean's step at the same alpha; also at test). "
        "Regression (sinusoid) takes mean only. Default: from --fidelity_preset.",
        choices=fidelity_lib.INNER_LOSS_REDUCTIONS, before=None)
    bn_scale: bool | None = option(
        None, "Batch norm has a learnable scale (ours; reference: no scale). Default: from "
        "--fidelity_preset.", before=None)
    bn_epsilon: float | None = option(
        None, "Batch-norm epsilon (ours 1e-5, reference 1e-3). Default: from "
        "--fidelity_preset.", before=None)
    inner_adapt: tuple[str, ...] | None = option(
        None, "Glob (or regex) patterns of the '/'-joined parameter paths the inner loop "
        "adapts, e.g. head for ANIL; '*': all. Parameters not adapted are trained by the "
        "outer optimizer only. Default: from --fidelity_preset ('*').", before=None)
    inner_adapt_exclude: tuple[str, ...] | None = option(
        None, "Patterns of parameter paths the inner loop does not adapt (reference: */bn*, "
        "batch norm; ours: none; give it empty to exclude nothing). Default: from "
        "--fidelity_preset.", before=None)
    omniglot_resize: str | None = option(
        None, "Omniglot resize to 28x28: lanczos, grey levels (ours), or nearest_binary, "
        "binary images as the reference's Pillow resize of 1-bit drawings. Default: from "
        "--fidelity_preset.", choices=RESIZE_METHODS, before=None)
    rotation_sampling: str | None = option(
        None, "Omniglot rotations: as_classes, every (character, rotation) an independent "
        "class (ours), or per_episode, distinct characters per episode, each with a random "
        "rotation (reference). Default: from --fidelity_preset.",
        choices=fidelity_lib.ROTATION_SAMPLINGS, before=None)
    head_init: str | None = option(
        None, "Output layer kernel init: lecun_normal (ours), normal N(0, 1) (reference, "
        "Omniglot) or glorot_uniform (reference, mini-ImageNet). Default: from "
        "--fidelity_preset.", choices=networks.HEAD_INITS, before=None)

    def validate(self) -> None:
        super().validate()

        def need(ok: bool, message: str):
            if not ok:
                raise ConfigError(message)
        need(self.ways >= 2 or self.dataset == "sinusoid", f"--ways must be >= 2, got {self.ways}")
        need(self.select_inner_steps is None or self.select_inner_steps <= self.eval_inner_steps,
             f"--select_inner_steps must be between 0 and --eval_inner_steps "
             f"({self.eval_inner_steps}), got {self.select_inner_steps}")
        need(self.inner_lr > 0 and self.meta_lr > 0, "--inner_lr and --meta_lr must be > 0")
        if self.dataset != "sinusoid":
            need(bool(self.data_dir), f"--data_dir is required for --dataset={self.dataset}: "
                 "the folder that holds the official dataset files")
        fidelity_lib.resolve(self)  # refuses a bad or inapplicable switch

    def derived(self) -> dict[str, Any]:
        """What the fidelity switches resolve to: config.json's `fidelity` (the preset's
        name is the field `fidelity_preset`)."""
        return {"fidelity": _switch_record(self.fidelity)}

    @classmethod
    def values_before(cls) -> dict[str, Any]:
        """The options' values before they existed, and `fidelity` (`derived`) of such a run."""
        return dict(super().values_before(), fidelity=_fidelity_before_the_switches)

    @property
    def fidelity(self) -> fidelity_lib.Fidelity:
        """The reference-fidelity switches, resolved from the preset and explicit flags."""
        return fidelity_lib.resolve(self)

    def default_workdir(self) -> str:
        if self.dataset == "sinusoid":
            return f"runs/maml_sinusoid_{self.shots}shot"
        return f"runs/maml_{self.dataset}_{self.ways}w{self.shots}s"

    def sharded_batch(self) -> tuple[str, int]:
        return "meta_batch_size", self.meta_batch_size

    @property
    def metric(self) -> str:
        return "mse" if self.dataset == "sinusoid" else "accuracy"

    @property
    def select_step(self) -> int:
        """The inner step whose validation metric selects the tested θ."""
        return (self.eval_inner_steps if self.select_inner_steps is None
                else self.select_inner_steps)

    @property
    def resolved_cache_dir(self) -> str:
        default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                               "metatransfer")
        return self.cache_dir or default


def _switch_record(fidelity: fidelity_lib.Fidelity) -> dict[str, Any]:
    """config.json's `fidelity`: the resolved switches (the preset is `fidelity_preset`)."""
    record = fidelity.record()
    del record["preset"]
    return record


def _fidelity_before_the_switches(stored: dict[str, Any]) -> dict[str, Any]:
    """config.json's `fidelity` of a run started before the switches existed."""
    return _switch_record(fidelity_lib.before_the_switches(stored.get("dataset", "sinusoid")))


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
    fidelity = config.fidelity
    options = dict(bn_mode=config.bn_mode, bn_fast_variance=config.bn_fast_variance,
                   bn_scale=fidelity.bn_scale, bn_epsilon=fidelity.bn_epsilon,
                   head_init=networks.head_initializer(fidelity.head_init))
    if network == "mlp":
        model = networks.MLP(hidden=(256, 128, 64, 64), outputs=config.ways, batch_norm=True,
                             **options)
    elif config.dataset == "omniglot":
        model = networks.omniglot_conv4(config.ways, conv_impl=conv_impl, **options)
    else:
        model = networks.miniimagenet_conv4(config.ways, conv_impl=conv_impl, **options)
    return model, classification_loss(model), example


def build(config: MamlRunConfig, mesh) -> experiment.Program:
    """MAML's part of a run: θ, the meta-step, the episodes and the evaluation protocol."""
    task_map, conv_impl = task_map_lib.resolve_strategy(config.strategy)
    model, loss_fn, example = build_model(config, conv_impl)
    episodes = episodes_lib.for_run(config, mesh)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(config.seed), example))
    fidelity = config.fidelity
    adapts = fidelity.inner_filter()
    if adapts is not None:
        adapts.selected(params, "--inner_adapt", "--inner_adapt_exclude")  # every pattern used
    loss_scale = fidelity.inner_loss_scale(config.ways)
    optimizer = maml.outer_optimizer(config.meta_lr, config.grad_clip)
    state = mesh_lib.put_replicated(train_state.create(params, model_state, optimizer), mesh)
    maml_config = maml.MamlConfig(inner_lr=config.inner_lr, inner_steps=config.inner_steps,
                                  first_order=config.first_order, remat=config.remat,
                                  scan=config.scan_inner_loop, inner_loss_scale=loss_scale,
                                  adapts=adapts)
    meta_step = maml.make_meta_train_step(loss_fn, optimizer, maml_config, task_map)
    if episodes.sample_in_step is not None:
        step_fn = lambda state, index: meta_step(state, episodes.sample_in_step(index))
    else:
        step_fn = meta_step
    train_step = train_state.jit_step(step_fn, mesh,
                                      batch_sharded=episodes.sample_in_step is None)
    repl, sharded = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    eval_batch = jax.jit(evaluation.make_adaptation_eval(
        loss_fn, inner_lr=config.eval_inner_lr or config.inner_lr,
        steps=config.eval_inner_steps, metric=config.metric, task_map=task_map,
        loss_scale=loss_scale, adapts=adapts),
        in_shardings=(repl, repl, sharded), out_shardings=sharded)

    def run_eval(state, split: str, num_tasks: int) -> dict[str, Any]:
        return evaluation.evaluate(eval_batch, state.params, state.model_state,
                                   episodes.eval[split], num_tasks=num_tasks,
                                   batch_size=config.meta_batch_size, metric=config.metric)

    metric, select_step = config.metric, config.select_step
    select_metric = f"select_{metric}_step{select_step}"

    def validate(state, step: int) -> dict[str, float]:
        del step
        summary = run_eval(state, "val", config.val_tasks)
        return {metric: summary["mean"], f"{metric}_ci95": summary["ci95"],
                f"{metric}_step0": summary["per_step"][0],
                select_metric: summary["per_step"][select_step]}

    def test(state) -> tuple[dict[str, Any], dict[str, float]]:
        summary = run_eval(state, "test", config.eval_tasks)
        block = {"metric": metric, "mean": summary["per_step"][select_step],
                 "ci95": summary["per_step_ci95"][select_step], "inner_steps": select_step,
                 "unit": summary["unit"], "num_tasks": summary["num_tasks"],
                 "eval_inner_steps": config.eval_inner_steps, "per_step": summary["per_step"],
                 "per_step_ci95": summary["per_step_ci95"],
                 "per_step_median": summary["per_step_median"],
                 "per_step_diverged_tasks": summary["per_step_diverged"],
                 "loss_per_step": summary["loss"]}
        return block, {metric: block["mean"], f"{metric}_ci95": block["ci95"]}

    return experiment.Program(
        state=state, train_step=train_step, batch_fn=episodes.train,
        validate=validate if config.eval_every else None, test=test,
        select_metric=select_metric, select_mode="max" if metric == "accuracy" else "min",
        resolved={"resolved_task_map": task_map, "resolved_conv_impl": conv_impl},
        summary={"dataset": config.dataset,
                 "ways": None if config.dataset == "sinusoid" else config.ways,
                 "shots": config.shots, "bn_mode": config.bn_mode,
                 "fidelity": fidelity.record()},
        finish=functools.partial(_plot_curves, config))


def report(results: dict[str, Any]) -> str:
    """The closing lines printed on the terminal."""
    test = results["test"]
    unit = test["unit"]
    name = "accuracy" if test["metric"] == "accuracy" else "MSE"
    per_step = ", ".join(f"{k}:{v:.3f}" for k, v in enumerate(test["per_step"]))
    return (f"{name} per inner step on {test['num_tasks']} test tasks: {per_step}\n"
            f"test {name} after {test['inner_steps']} inner steps: "
            f"{test['mean']:.3f}{unit} +/- {test['ci95']:.3f}{unit} (95% CI)")


def _plot_curves(config: MamlRunConfig, workdir: str, results: dict[str, Any]) -> None:
    """Validation metric vs meta-training steps, and test metric vs inner steps."""
    from core import plots
    test, metric = results["test"], config.metric
    label = "accuracy (%)" if metric == "accuracy" else "MSE"
    val = read_metrics(workdir, split="val")
    if val:
        plots.plot_curve(os.path.join(workdir, f"val_{metric}_vs_steps.png"),
                         [r["step"] for r in val], [r[metric] for r in val],
                         yerr=[r[f"{metric}_ci95"] for r in val],
                         xlabel="meta-training step", ylabel=f"validation {label}",
                         title=f"MAML {config.dataset}: validation {label} "
                               f"after {config.eval_inner_steps} inner steps")
    plots.plot_curve(os.path.join(workdir, f"test_{metric}_vs_inner_steps.png"),
                     list(range(len(test["per_step"]))), test["per_step"],
                     yerr=test["per_step_ci95"], xlabel="inner steps at test time",
                     ylabel=f"test {label}",
                     title=f"MAML {config.dataset}: test {label} on {test['num_tasks']} tasks")
