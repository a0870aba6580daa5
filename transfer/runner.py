"""A transfer run: the `build` that `core.experiment` runs for every strategy.

`experiment.train_and_evaluate(TransferRunConfig(...), build)` is what
`python -m experiments.transfer` does once flags are parsed (the config and
its checks are `transfer.config`). One entry point makes both ends of a
transfer experiment: the source is pretrained with `--strategy=scratch`
(e.g. on MNIST digits 0-4), and its run directory is the `--source_workdir`
of the target runs (e.g. digits 5-9, or Fashion-MNIST, with 10 or 100 labels
per class), one per strategy (`transfer.strategies`).

`build` supplies what is transfer's own: the target data (`transfer.data`),
the network cut to `--keep_blocks` (`transfer.networks`), its initial
parameters and parameter groups (`transfer.strategies`), and the grouped or
LP-FT step (`transfer.steps`); feature extraction trains the head on the
frozen trunk's features computed once (`transfer.features`). Distillation's
step and teacher are `transfer.distillation`'s; the domain adaptation
strategies (source_only, dann) build their own Program in
`transfer.domain_adaptation` from the same `prepare`. Every strategy but
feature extraction can augment its training images inside the jitted step
(`--augment`, `transfer.augment`). The run directory, loop, checkpoints,
selection, test and resume are `core.experiment`'s.

Resume rule (big_vision, scenic): a checkpoint in the run directory wins over
the source. The loop restores parameters, optimizer states, L2-SP's anchor
and distillation's teacher (kept in the train state) from it, and feature
extraction computes its cached features from the checkpoint's trunk, so a
resumed run never mixes in a source that changed since it started (the
source must still be readable: it is where the per-path record comes from).

The run directory gets transfer.json (every parameter path: loaded from which
source path or initialised, frozen or trained, its learning rate; the
strategy, the source, the augmentation pipeline and where its name came
from, the teacher) and results.json's test block {'accuracy', 'loss',
'num_examples'} with `strategy` and `source` (distillation adds the
teacher's test accuracy and its agreement with the student).
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
from core import train_state
from core.datasets import arrays
from core.errors import ConfigError, DataError
from transfer import augment as augment_lib
from transfer import data as data_lib
from transfer import distillation
from transfer import domain_adaptation
from transfer import features as features_lib
from transfer import networks
from transfer import omniglot_data
from transfer import steps
from transfer import strategies as strategies_lib
from transfer.config import TransferRunConfig, check_resumed
from transfer.strategies import DOMAIN_ADAPTATION, PER_BLOCK, RECORD_FILE, STRATEGIES

__all__ = ["TransferRunConfig", "STRATEGIES", "RECORD_FILE", "Target", "prepare", "build",
           "report"]

SELECT_METRIC = "accuracy"
_LISTED_CLASSES = 20  # report() names at most this many classes (Omniglot has hundreds)


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
      source: the source, None for the fresh strategies.
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
    if config.dataset in omniglot_data.MAML_DATASETS and config.source_workdir:
        omniglot_data.check_source_split(config.source_workdir, tuple(config.omniglot_split))
    if config.is_omniglot and config.network == "conv4" and config.source_workdir:
        config.check_source_network()
    target = data_lib.load_target(config.dataset, config.data_dir, config.classes,
                                  config.train_per_class, config.val_size, config.data_seed,
                                  omniglot=config.omniglot_options())
    kept, dropped = _kept_blocks(config)
    conv_impl = conv.default_conv_impl() if config.conv_impl == "auto" else config.conv_impl
    model = networks.make_classifier(config.network, target.num_classes, len(kept),
                                     mlp_hidden=config.mlp_hidden, conv_impl=conv_impl,
                                     dropout_rate=config.dropout, bn_scale=config.bn_scale,
                                     bn_epsilon=config.bn_epsilon,
                                     cut_features=config.cut_features)
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


def _state_and_step(config: TransferRunConfig, target: Target, logits,
                    teacher: distillation.Teacher | None):
    """(initial train state, pure step) of the strategy."""
    optimizer = steps.grouped_optimizer(config, target.groups)
    params = target.initial.params
    if teacher is not None:
        step = distillation.make_distill_step(logits, teacher, optimizer, config.seed,
                                              config.distill_lambda, config.distill_temperature)
        return distillation.distill_state(params, optimizer, teacher), step
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


def _record(config: TransferRunConfig, target: Target, augmentation: dict[str, Any],
            teacher: distillation.Teacher | None) -> dict[str, Any]:
    """The content of transfer.json."""
    details = {"network": config.network, "kept_blocks": list(target.blocks),
               "dataset": config.dataset, "classes": list(target.data.classes),
               "train_per_class": config.train_per_class, "augmentation": augmentation}
    if teacher is not None:
        details["teacher"] = teacher.describe()
        details["distillation"] = {"lambda": config.distill_lambda,
                                   "temperature": config.distill_temperature,
                                   "loss": "CE + lambda T^2 KL(softmax(z_t/T) || "
                                           "softmax(z_s/T))"}
    if config.strategy == "lp_ft":
        details["lp_steps"] = config.lp_steps
    if config.strategy == "feature_extraction":
        details["cached_features"] = True
    l2_sp = (config.l2_sp_alpha, config.l2_sp_beta) if config.strategy == "l2_sp" else None
    return strategies_lib.transfer_record(config.strategy, target.source, target.initial,
                                          target.groups, target.probe, l2_sp, **details)


def _teacher(config: TransferRunConfig, target: Target) -> distillation.Teacher | None:
    """Distillation's teacher, rebuilt from its run directory; None for other strategies."""
    if config.strategy != "distill":
        return None
    student = {"dataset": config.dataset, "val_size": config.val_size,
               "data_seed": config.data_seed}
    return distillation.load_teacher(config.teacher_workdir, config.which, student,
                                     target.data.classes, target.data.input_shape,
                                     target.conv_impl)


def build(config: TransferRunConfig, mesh) -> experiment.Program:
    """Transfer's part of a run: target data, network, initial parameters, groups, step."""
    target = prepare(config, mesh)
    if config.strategy in DOMAIN_ADAPTATION:
        return domain_adaptation.build(config, mesh, target)
    teacher = _teacher(config, target)
    pipeline, augmentation = augment_lib.resolve(config.augment, config.augment_origin())
    check_resumed(config.workdir, {"resolved_augment": pipeline})
    logits = steps.logits_fn(target.model, target.on_features)
    state, step = _state_and_step(config, target, logits, teacher)
    step = augment_lib.wrap_step(step, pipeline, config.seed)
    # Committed to the mesh as the step returns it, so the step compiles once.
    state = mesh_lib.put_replicated(state, mesh)
    eval_step = jax.jit(steps.make_eval_step(logits))
    eval_size = config.resolved_eval_batch_size
    batches = {split: arrays.eval_batches(target.splits[split], eval_size, mesh)
               for split in ("val", "test")}

    def validate(state, step: int) -> dict[str, float]:
        del step
        return evaluate_lib.evaluate(eval_step, state, batches["val"])

    teacher_step = (jax.jit(distillation.make_teacher_eval_step(teacher, logits))
                    if teacher else None)

    def test(state) -> tuple[dict[str, Any], dict[str, float]]:
        metrics = evaluate_lib.evaluate(eval_step, state, batches["test"])
        block = dict(metrics, num_examples=batches["test"].num_examples)
        if teacher_step is not None:
            block["teacher"] = evaluate_lib.evaluate(teacher_step, state, batches["test"])
        return block, metrics

    record = _record(config, target, augmentation, teacher)
    source = target.source.path if target.source else None
    return experiment.Program(
        state=state, train_step=train_state.jit_step(step, mesh),
        batch_fn=arrays.train_batch_fn(target.splits["train"], config.batch_size,
                                       config.seed, mesh),
        validate=validate if config.eval_every and len(target.splits["val"]) else None,
        test=test, select_metric=SELECT_METRIC, select_mode="max",
        resolved={"resolved_conv_impl": target.conv_impl, "resolved_augment": pipeline},
        summary={"strategy": config.strategy, "source": source, "dataset": config.dataset,
                 "classes": list(target.data.classes),
                 "train_per_class": config.train_per_class,
                 "num_train_examples": len(target.splits["train"])},
        finish=functools.partial(strategies_lib.write_record, record))


def report(results: dict[str, Any]) -> str:
    """The closing lines printed on the terminal."""
    if results.get("da_target"):
        return domain_adaptation.report(results)
    per_class = results["train_per_class"] or "all"
    source = results["source"] or "no source"
    test = results["test"]
    classes = results["classes"]
    named = (f"classes {','.join(map(str, classes))}" if len(classes) <= _LISTED_CLASSES
             else f"{len(classes)} classes")
    return (f"{results['strategy']} on {results['dataset']} {named} ({per_class} per class) "
            f"from {source}:\n"
            f"  test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f} "
            f"({test['num_examples']} examples); per-parameter record in {RECORD_FILE}"
            + (f"\n  teacher test accuracy {test['teacher']['accuracy']:.4f}, agreement with "
               f"the student {test['teacher']['agreement']:.4f}" if "teacher" in test else ""))
