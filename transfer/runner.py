"""A transfer run: its config, and the `build` that `core.experiment` runs.

`experiment.train_and_evaluate(TransferRunConfig(...), build)` is what
`python -m experiments.transfer` does once flags are parsed. One entry point
makes both ends of a transfer experiment: the source is pretrained with
`--strategy=scratch` (e.g. on MNIST digits 0-4), and its run directory is the
`--source_workdir` of the target runs (e.g. digits 5-9, or Fashion-MNIST, with
10 or 100 labels per class), one per strategy (`transfer.strategies`).

`build` supplies what is transfer's own: the target data (`transfer.data`),
the network cut to `--keep_blocks` (`transfer.networks`), its initial
parameters and parameter groups (`transfer.strategies`), and the grouped or
LP-FT step (`transfer.steps`); feature extraction trains the head on the
frozen trunk's features computed once (`transfer.features`). The run
directory, loop, checkpoints, selection, test and resume are
`core.experiment`'s.

Resume rule (big_vision, scenic): a checkpoint in the run directory wins over
the source. The loop restores parameters, optimizer states and L2-SP's
anchor (kept in the train state) from it, and feature extraction computes
its cached features from the checkpoint's trunk, so a resumed run never mixes
in a source that changed since it started (the source must still be readable:
it is where the per-path record comes from).

The run directory gets transfer.json (every parameter path: loaded from which
source path or initialised, frozen or trained, its learning rate; the
strategy and the source) and results.json's test block {'accuracy', 'loss',
'num_examples'} with `strategy` and `source`.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from core import conv
from core import evaluate as evaluate_lib
from core import experiment
from core import mesh as mesh_lib
from core import run_dir
from core import supervised
from core import train_state
from core.datasets import arrays
from core.errors import ConfigError, DataError
from core.experiment import option, override
from transfer import data as data_lib
from transfer import features as features_lib
from transfer import networks
from transfer import steps
from transfer import strategies as strategies_lib
from transfer.strategies import LOADING, PER_BLOCK, STRATEGIES

SELECT_METRIC = "accuracy"
RECORD_FILE = "transfer.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferRunConfig(supervised.SupervisedConfig):
    """Everything that defines a transfer run (the flags of `experiments.transfer`)."""

    num_steps: int = override(2000)
    eval_every: int = override(200)
    checkpoint_every: int = override(500)
    source_workdir: str | None = option(None, "The source: a run directory of this library "
                                              "(e.g. a --strategy=scratch pretraining run).")
    source_params: str | None = option(None, "The source as an .npz file "
                                             "(transfer.params.save_npz), instead of "
                                             "--source_workdir.")
    which: str = option("best", "The source run's checkpoint: the best-validation one or the "
                                "latest.", choices=("best", "latest"))
    dataset: str = option("mnist", "The target dataset.", choices=data_lib.DATASETS)
    data_dir: str | None = option(None, "Folder with the dataset's four official IDX files "
                                        "(read only).", resumable=True)
    classes: tuple[int, ...] = option((), "The target's class ids, relabelled 0..n-1 in this "
                                          "order (e.g. 5,6,7,8,9); default: all ten.")
    train_per_class: int = option(0, "Training examples per class, drawn by --data_seed "
                                     "(0: all).", minimum=0)
    data_seed: int = option(0, "Seed of the validation split and the per-class subsampling.",
                            minimum=0)
    network: str = option("lenet", "The trunk (a fresh linear head goes on it).",
                          choices=networks.NETWORKS)
    mlp_hidden: tuple[int, ...] = option((256, 128), "Hidden widths of --network=mlp.")
    conv_impl: str = option("auto", "Convolutions of the LeNet trunk: xla, im2col, or auto "
                                    "(im2col on CPU, xla elsewhere).",
                            choices=("auto",) + conv.CONV_IMPLS)
    strategy: str = option("finetune", "scratch: fresh init; structure: the source's "
                                       "architecture, fresh init; feature_extraction: frozen "
                                       "trunk, head only; finetune: everything, per-block "
                                       "learning rates; keep_blocks: the lowest --keep_blocks "
                                       "blocks, fine-tuned; lp_ft: the head for --lp_steps, "
                                       "then fine-tuning; l2_sp: fine-tuning pulled towards "
                                       "the source.", choices=STRATEGIES)
    keep_blocks: int = option(0, "Keep the lowest N trunk blocks and put the head on their "
                                 "features (0: all blocks); needed by --strategy=keep_blocks.",
                              minimum=0)
    freeze_blocks: int = option(0, "Freeze the N lowest trunk blocks (per-block strategies).",
                                minimum=0)
    trunk_lr_scale: float = option(1.0, "Learning rate of the trunk's blocks as a multiple of "
                                        "--learning_rate (e.g. 0.1; 0 freezes them).",
                                   minimum=0.0)
    layer_decay: float = option(1.0, "Layer-wise learning-rate decay in (0, 1]: block l of L "
                                     "trains at decay**(L - l) times the trunk's rate.",
                                minimum=0.0)
    lp_steps: int = option(0, "Steps of linear probing before everything trains "
                              "(--strategy=lp_ft).", minimum=0)
    l2_sp_alpha: float = option(0.01, "L2-SP's α: pull of the loaded weights towards the "
                                      "source.", minimum=0.0)
    l2_sp_beta: float = option(0.01, "L2-SP's β: weight decay of the fresh head.",
                               minimum=0.0)
    dont_load: tuple[str, ...] = option((), "Patterns of trunk parameters kept at their fresh "
                                            "init (the head always is).")
    ignore_source: tuple[str, ...] = option((), "Patterns of source parameters the target has "
                                                "no use for (e.g. another family's 'heads').")
    zero_init_head: bool = option(False, "Start the head at zeros instead of a fresh init.")

    def validate(self) -> None:
        super().validate()
        self._check_source()
        self._check_strategy_options()

    def _check_source(self) -> None:
        """Exactly one source for the strategies that read one, none for scratch."""
        if self.source_workdir and self.source_params:
            raise ConfigError("give one source: --source_workdir or --source_params, not both")
        has_source = bool(self.source_workdir or self.source_params)
        if self.strategy == "scratch" and (has_source or self.dont_load or self.ignore_source):
            raise ConfigError("--strategy=scratch trains from a fresh init and reads no source; "
                              "drop --source_workdir/--source_params/--dont_load/"
                              "--ignore_source")
        if self.strategy != "scratch" and not has_source:
            raise ConfigError(f"--strategy={self.strategy} needs a source: --source_workdir="
                              f"<a run directory> or --source_params=<an .npz file>")
        if self.dont_load and self.strategy not in LOADING:
            raise ConfigError(f"--dont_load applies to strategies that load weights "
                              f"({', '.join(LOADING)}), not {self.strategy}")

    def _check_strategy_options(self) -> None:
        """Each strategy's options set only where they act, and to what it needs."""
        self._only_with(("freeze_blocks", "trunk_lr_scale", "layer_decay"), PER_BLOCK)
        self._only_with(("lp_steps",), ("lp_ft",))
        self._only_with(("l2_sp_alpha", "l2_sp_beta"), ("l2_sp",))
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.strategy == "lp_ft" and not 0 < self.lp_steps < self.num_steps:
            raise ConfigError(f"--strategy=lp_ft needs --lp_steps >= 1 steps of linear probing, "
                              f"fewer than --num_steps={self.num_steps} (then everything "
                              f"trains); got --lp_steps={self.lp_steps}")
        if self.strategy == "feature_extraction" and self.dropout:
            raise ConfigError("--dropout acts on the trunk, which --strategy=feature_extraction "
                              "runs once, in evaluation mode, to cache its features")
        if self.strategy == "keep_blocks" and not self.keep_blocks:
            raise ConfigError("--strategy=keep_blocks needs --keep_blocks >= 1 (the lowest "
                              "trunk blocks kept)")
        if self.strategy == "finetune" and self.keep_blocks:
            raise ConfigError("--strategy=finetune fine-tunes the whole trunk; fine-tuning the "
                              "lowest --keep_blocks blocks is --strategy=keep_blocks")

    def _only_with(self, names: tuple[str, ...], strategies: tuple[str, ...]) -> None:
        """Refuses a non-default value of `names` under a strategy that does not read it."""
        defaults = experiment.field_options(type(self))
        for name in names:
            if getattr(self, name) != defaults[name]["default"] and self.strategy not in strategies:
                raise ConfigError(f"--{name} applies to --strategy={'/'.join(strategies)}, "
                                  f"not {self.strategy}")

    def default_workdir(self) -> str:
        classes = "".join(map(str, self.classes)) if self.classes else "all"
        return (f"runs/transfer_{self.dataset}_{classes}_{self.strategy}_"
                f"n{self.train_per_class}_s{self.seed}")


@dataclasses.dataclass(frozen=True)
class Target:
    """What `prepare` resolves before the step is built (tests inspect it).

    Attributes:
      model: the target classifier.
      data: the target's image splits.
      splits: the splits the run trains and evaluates on: `data.splits`, or
        the trunk's cached features for feature extraction.
      on_features: whether `splits` hold features (the step applies the head only).
      initial: the initial parameters and their record.
      groups: the parameter groups (of the fine-tuning phase for LP-FT).
      probe: LP-FT's linear-probing groups; None otherwise.
      source: the source, None for scratch.
      blocks: the trunk blocks the network keeps, lowest first.
      conv_impl: the resolved convolution implementation.
    """

    model: networks.Classifier
    data: data_lib.TargetData
    splits: dict[str, arrays.Arrays]
    on_features: bool
    initial: strategies_lib.Initial
    groups: strategies_lib.Groups
    probe: strategies_lib.Groups | None
    source: strategies_lib.Source | None
    blocks: tuple[str, ...]
    conv_impl: str


def _kept_blocks(config: TransferRunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped) trunk block names of `--keep_blocks`."""
    names = networks.block_names(config.network, config.mlp_hidden)
    if not names:
        raise ConfigError("--mlp_hidden is empty: the MLP needs at least one hidden layer")
    if config.keep_blocks > len(names) or (config.strategy == "keep_blocks"
                                           and config.keep_blocks == len(names)):
        raise ConfigError(f"--keep_blocks={config.keep_blocks} but --network={config.network} "
                          f"has {len(names)} trunk blocks ({', '.join(names)}); keeping them "
                          f"all is --strategy=finetune")
    kept = config.keep_blocks or len(names)
    return names[:kept], names[kept:]


def _groups(config: TransferRunConfig, params, blocks) -> tuple:
    """(groups, probe groups or None) of the strategy."""
    lr = config.learning_rate
    if config.strategy == "feature_extraction":
        return strategies_lib.head_only_groups(params, lr), None
    if config.strategy not in PER_BLOCK:
        return strategies_lib.per_block_groups(params, blocks, lr), None
    groups = strategies_lib.per_block_groups(
        params, blocks, lr, freeze_blocks=config.freeze_blocks,
        trunk_lr_scale=config.trunk_lr_scale, layer_decay=config.layer_decay)
    probe = strategies_lib.head_only_groups(params, lr) if config.strategy == "lp_ft" else None
    return groups, probe


def _feature_source_params(config: TransferRunConfig, params):
    """The parameters features are cached from: the run's latest checkpoint's, if any."""
    if not os.path.isdir(os.path.join(config.workdir, "checkpoints")):
        return params
    try:
        return experiment.load_train_state(config.workdir, "latest")["params"]
    except DataError:
        return params


def prepare(config: TransferRunConfig, mesh) -> Target:
    """The target data, network, initial parameters and groups of a run."""
    target = data_lib.load_target(config.dataset, config.data_dir, config.classes,
                                  config.train_per_class, config.val_size, config.data_seed)
    kept, dropped = _kept_blocks(config)
    conv_impl = conv.default_conv_impl() if config.conv_impl == "auto" else config.conv_impl
    model = networks.make_classifier(config.network, target.num_classes, len(kept),
                                     mlp_hidden=config.mlp_hidden, conv_impl=conv_impl,
                                     dropout_rate=config.dropout)
    example = jnp.zeros((1, *target.input_shape), jnp.float32)
    fresh = model.init(jax.random.PRNGKey(config.seed), example, train=False)["params"]
    source = strategies_lib.source_from(config.source_workdir, config.source_params,
                                        config.which)
    initial = strategies_lib.initial_params(
        config.strategy, fresh, source, dropped_blocks=dropped, dont_load=config.dont_load,
        ignore_source=config.ignore_source, zero_init_head=config.zero_init_head)
    groups, probe = _groups(config, initial.params, kept)
    on_features = config.strategy == "feature_extraction"
    splits = dict(target.splits)
    if on_features:
        trunk_params = _feature_source_params(config, initial.params)
        splits = features_lib.extract_features(model, trunk_params, splits,
                                               config.resolved_eval_batch_size, mesh)
    return Target(model=model, data=target, splits=splits, on_features=on_features,
                  initial=initial, groups=groups, probe=probe, source=source, blocks=kept,
                  conv_impl=conv_impl)


def _state_and_step(config: TransferRunConfig, target: Target, logits):
    """(initial train state, pure step) of the strategy."""
    optimizer = steps.grouped_optimizer(config, target.groups)
    params = target.initial.params
    if config.strategy == "lp_ft":
        probe_optimizer = steps.grouped_optimizer(config, target.probe)
        step = steps.make_lp_ft_step(logits, (target.probe, probe_optimizer),
                                     (target.groups, optimizer), config.lp_steps, config.seed)
        return steps.lp_ft_state(params, probe_optimizer, optimizer), step
    penalty, extra = None, {}
    if config.strategy == "l2_sp":
        backbone = strategies_lib.backbone_mask(target.initial)
        penalty = steps.l2_sp(backbone, config.l2_sp_alpha, config.l2_sp_beta)
        extra = {"l2_sp_anchor": jax.tree.map(jnp.copy, params)}
    step = steps.make_train_step(logits, target.groups, optimizer, config.seed, penalty)
    return train_state.create(params, {}, optimizer, extra), step


def _record(config: TransferRunConfig, target: Target) -> dict[str, Any]:
    """The content of transfer.json."""
    details = {"network": config.network, "kept_blocks": list(target.blocks),
               "dataset": config.dataset, "classes": list(target.data.classes),
               "train_per_class": config.train_per_class}
    if config.strategy == "lp_ft":
        details["lp_steps"] = config.lp_steps
    if config.strategy == "feature_extraction":
        details["cached_features"] = True
    l2_sp = (config.l2_sp_alpha, config.l2_sp_beta) if config.strategy == "l2_sp" else None
    return strategies_lib.transfer_record(config.strategy, target.source, target.initial,
                                          target.groups, target.probe, l2_sp, **details)


def build(config: TransferRunConfig, mesh) -> experiment.Program:
    """Transfer's part of a run: target data, network, initial parameters, groups, step."""
    target = prepare(config, mesh)
    logits = steps.logits_fn(target.model, target.on_features)
    state, step = _state_and_step(config, target, logits)
    # Committed to the mesh as the step returns it, so the step compiles once.
    state = mesh_lib.put_replicated(state, mesh)
    eval_step = jax.jit(steps.make_eval_step(logits))
    eval_size = config.resolved_eval_batch_size
    batches = {split: arrays.eval_batches(target.splits[split], eval_size, mesh)
               for split in ("val", "test")}

    def validate(state, step: int) -> dict[str, float]:
        del step
        return evaluate_lib.evaluate(eval_step, state, batches["val"])

    def test(state) -> tuple[dict[str, Any], dict[str, float]]:
        metrics = evaluate_lib.evaluate(eval_step, state, batches["test"])
        return dict(metrics, num_examples=batches["test"].num_examples), metrics

    record = _record(config, target)
    source = target.source.path if target.source else None
    return experiment.Program(
        state=state, train_step=train_state.jit_step(step, mesh),
        batch_fn=arrays.train_batch_fn(target.splits["train"], config.batch_size,
                                       config.seed, mesh),
        validate=validate if config.eval_every and len(target.splits["val"]) else None,
        test=test, select_metric=SELECT_METRIC, select_mode="max",
        resolved={"resolved_conv_impl": target.conv_impl},
        summary={"strategy": config.strategy, "source": source, "dataset": config.dataset,
                 "classes": list(target.data.classes),
                 "train_per_class": config.train_per_class,
                 "num_train_examples": len(target.splits["train"])},
        finish=functools.partial(_write_record, record))


def _write_record(record: dict[str, Any], workdir: str, results: dict[str, Any]) -> None:
    del results
    run_dir.atomic_write_text(os.path.join(workdir, RECORD_FILE), run_dir.to_json(record))


def report(results: dict[str, Any]) -> str:
    """The closing lines printed on the terminal."""
    per_class = results["train_per_class"] or "all"
    source = results["source"] or "no source"
    test = results["test"]
    return (f"{results['strategy']} on {results['dataset']} classes "
            f"{','.join(map(str, results['classes']))} ({per_class} per class) from {source}:\n"
            f"  test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f} "
            f"({test['num_examples']} examples); per-parameter record in {RECORD_FILE}")
