"""A domain adaptation run: labelled source images, an unlabelled target domain, its test.

`--strategy=source_only` trains the classifier on the labelled source
(`--dataset`, `--classes`, `--train_per_class`) and nothing else;
`--strategy=dann` adds the unlabelled images of the target domain
(`--da_target`, `transfer.da_data`) and DANN's domain classifier
(`transfer.dann`). Both start from a fresh init and are tested on the target
domain's test split, the number a DA paper reports (the source's test split
is reported next to it).

A training batch of DANN is `--batch_size` source images with their labels
and `--batch_size` target images without, each from its own seeded stream
of epochs (`core.datasets.arrays.train_batch_fn`; the target's seed is the
run's offset by 2**32), so a batch is a pure function of the step.

Model selection never reads a target test label, and reads target labels at
all only when asked to by name (`--da_selection`):

    source_val      the source validation accuracy (the default, and the
                    honest protocol: no target label is used)
    target_entropy  the mean prediction entropy on the unlabelled target
                    validation images, lower is better (no label is used)
    oracle          the accuracy on the labelled target validation images:
                    an upper bound on what selection can do, not a DA result;
                    results.json says `selection: oracle`

Under source_val and target_entropy the validation code is handed the
target validation images without their labels (`DomainData.images`), so it
cannot read them. Every validation logs the source accuracy and loss (when
there is a source validation split) and the target entropy; the target
validation accuracy only under oracle. Without validation (`--eval_every=0`
or no validation images for the selection) the last state is tested and
results.json says `selection: last_step`.
"""

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from core import evaluate as evaluate_lib
from core import experiment
from core import mesh as mesh_lib
from core import train_state
from core.datasets import arrays
from transfer import augment as augment_lib
from transfer import config as config_lib
from transfer import da_data
from transfer import dann
from transfer import networks
from transfer import param_groups as pg
from transfer import steps
from transfer import strategies as strategies_lib
from transfer.params import flatten
from transfer.strategies import HEAD, TRUNK

if TYPE_CHECKING:
    from transfer.runner import Target

TARGET_ORDER_OFFSET = 2 ** 32
SELECT = {"source_val": ("accuracy", "max"), "target_entropy": ("target_entropy", "min"),
          "oracle": ("target_accuracy", "max")}


def classifier_logits(model) -> steps.LogitsFn:
    """The classifier's logits from params that may also hold the domain classifier's."""
    on_images = steps.logits_fn(model, on_features=False)
    return lambda params, x, train, rng: on_images({k: params[k] for k in dann.CLASSIFIER},
                                                   x, train, rng)


def entropy_eval_step(logits: steps.LogitsFn):
    """Per-example entropy of the predicted class distribution; reads no label."""

    def eval_step(state, batch):
        log_p = jax.nn.log_softmax(logits(state.params, batch["x"], False, None), axis=-1)
        return {"entropy": -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)}

    return eval_step


def _with_domain_classifier(config: config_lib.TransferRunConfig, target: "Target"):
    """(initial, groups, domain classifier) with D's fresh parameters added under 'domain'."""
    module = dann.DomainClassifier(hidden=tuple(config.domain_hidden))
    example = jnp.zeros((1, *target.data.input_shape), jnp.float32)
    features = jax.eval_shape(lambda p: target.model.apply(
        {"params": p}, example, train=False, method=networks.Classifier.features),
        target.initial.params)
    domain = dann.init_domain_classifier(module, features.shape[-1], config.seed)
    params = dict(target.initial.params, **{dann.DOMAIN: domain})
    record = dict(target.initial.record)
    for path in flatten(domain):
        record[f"{dann.DOMAIN}/{path}"] = {"source": None, "init": "fresh"}
    initial = strategies_lib.Initial(params, record, target.initial.ignored_source)
    rules = [(f"{TRUNK}/{block}", block) for block in target.blocks]
    labels = pg.label_params(params, rules + [(dann.DOMAIN, dann.DOMAIN)], default=HEAD)
    groups = strategies_lib.Groups(labels, dict(target.groups.rates,
                                                **{dann.DOMAIN: config.learning_rate}))
    return initial, groups, module


def _batch_fn(config, target: "Target", domain: da_data.DomainData, mesh, adversarial: bool):
    """step -> the source batch, with DANN's unlabelled target images as 'target_x'."""
    source = arrays.train_batch_fn(target.splits["train"], config.batch_size, config.seed, mesh)
    if not adversarial:
        return source
    images = arrays.train_batch_fn(domain.images("train"), config.batch_size,
                                   config.seed + TARGET_ORDER_OFFSET, mesh,
                                   flag="--batch_size (of target images)")
    return lambda step: dict(source(step), target_x=images(step)["x"])


def _evaluation(config, target: "Target", domain: da_data.DomainData, logits, mesh):
    """(validate or None, selection label, test) of the run (see the module docstring)."""
    size = config.resolved_eval_batch_size
    eval_step = jax.jit(steps.make_eval_step(logits))
    entropy_step = jax.jit(entropy_eval_step(logits))
    batches = lambda split: arrays.eval_batches(split, size, mesh)
    source_val, target_images = batches(target.splits["val"]), batches(domain.images("val"))
    oracle = config.da_selection == "oracle"
    target_labelled = batches(domain.splits["val"]) if oracle else None
    selected_split = {"source_val": source_val, "target_entropy": target_images,
                      "oracle": target_images}[config.da_selection]
    validating = bool(config.eval_every and selected_split.num_examples)

    def validate(state, step: int) -> dict[str, float]:
        del step
        metrics = {}
        if source_val.num_examples:
            metrics.update(evaluate_lib.evaluate(eval_step, state, source_val))
        if target_images.num_examples:
            metrics["target_entropy"] = evaluate_lib.evaluate(entropy_step, state,
                                                              target_images)["entropy"]
        if oracle:
            metrics["target_accuracy"] = evaluate_lib.evaluate(eval_step, state,
                                                               target_labelled)["accuracy"]
        return metrics

    selection = config.da_selection if validating else "last_step"
    tests = {"target": batches(domain.splits["test"]), "source": batches(target.splits["test"])}

    def test(state) -> tuple[dict[str, Any], dict[str, float]]:
        on = {name: evaluate_lib.evaluate(eval_step, state, split)
              for name, split in tests.items()}
        block = dict(on["target"], num_examples=tests["target"].num_examples,
                     domain=config.da_target, selection=selection,
                     source_domain=dict(on["source"],
                                        num_examples=tests["source"].num_examples))
        scalars = dict(on["target"], **{f"source_{k}": v for k, v in on["source"].items()})
        return block, scalars

    return (validate if validating else None), selection, test


def _schedule_steps(config) -> dict[str, int]:
    """The config keys whose change would bend a schedule mid-run: --num_steps, if any."""
    return {"num_steps": config.num_steps} if (config.strategy == "dann"
                                               or config.da_lr_annealing) else {}


def build(config: config_lib.TransferRunConfig, mesh, target: "Target") -> experiment.Program:
    """The Program of a source_only or dann run, from the runner's prepared `target`."""
    pipeline, augmentation = augment_lib.resolve(config.augment, config.augment_origin())
    config_lib.check_resumed(config.workdir, dict(_schedule_steps(config),
                                                  resolved_augment=pipeline))
    domain = da_data.load_domain(config.da_target, config.dataset, config.data_dir,
                                 target.data.classes, config.da_val_size, config.data_seed)
    adversarial = config.strategy == "dann"
    initial, groups, module = target.initial, target.groups, None
    if adversarial:
        initial, groups, module = _with_domain_classifier(config, target)
    optimizer = steps.grouped_optimizer(config, groups)
    if config.da_lr_annealing:
        optimizer = optax.chain(optimizer, dann.lr_annealing(config.num_steps))
    logits = classifier_logits(target.model)
    if adversarial:
        step = dann.make_dann_step(target.model, module, optimizer, config.seed,
                                   config.num_steps, config.dann_weight, config.dann_gamma)
    else:
        step = steps.make_train_step(logits, groups, optimizer, config.seed)
    image_keys = ("x", "target_x") if adversarial else ("x",)
    step = augment_lib.wrap_step(step, pipeline, config.seed, image_keys)
    state = mesh_lib.put_replicated(train_state.create(initial.params, {}, optimizer), mesh)
    validate, selection, test = _evaluation(config, target, domain, logits, mesh)
    metric, mode = SELECT[config.da_selection]
    record = strategies_lib.transfer_record(
        config.strategy, None, initial, groups, network=config.network,
        kept_blocks=list(target.blocks), dataset=config.dataset,
        classes=list(target.data.classes), train_per_class=config.train_per_class,
        da_target=config.da_target, selection=selection, augmentation=augmentation,
        target_sizes={k: len(v) for k, v in domain.splits.items()},
        lr_annealing="lr/(1 + 10 p)^0.75" if config.da_lr_annealing else None,
        dann={"weight": config.dann_weight, "gamma": config.dann_gamma,
              "domain_hidden": list(config.domain_hidden),
              "reversal": "2/(1 + exp(-gamma p)) - 1, p = step/num_steps"}
        if adversarial else None)
    return experiment.Program(
        state=state, train_step=train_state.jit_step(step, mesh),
        batch_fn=_batch_fn(config, target, domain, mesh, adversarial),
        validate=validate, test=test, select_metric=metric, select_mode=mode,
        resolved={"resolved_conv_impl": target.conv_impl, "resolved_augment": pipeline},
        summary={"strategy": config.strategy, "source": None, "dataset": config.dataset,
                 "da_target": config.da_target, "selection": selection,
                 "classes": list(target.data.classes),
                 "train_per_class": config.train_per_class,
                 "num_train_examples": len(target.splits["train"]),
                 "num_target_train_images": len(domain.splits["train"])},
        finish=functools.partial(strategies_lib.write_record, record))


def report(results: dict[str, Any]) -> str:
    """The closing lines of a domain adaptation run."""
    test, selection = results["test"], results["selection"]
    caveat = " (target labels chose the checkpoint: an upper bound)" if selection == "oracle" \
        else ""
    source = test["source_domain"]
    return (f"{results['strategy']}: {results['dataset']} -> {results['da_target']} classes "
            f"{','.join(map(str, results['classes']))}, selection: {selection}{caveat}\n"
            f"  target test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f} "
            f"({test['num_examples']} examples); source test accuracy "
            f"{source['accuracy']:.4f}")
