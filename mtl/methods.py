"""One `--method` namespace over loss weightings and gradient aggregators.

A multi-task method is either

* a loss weighting (`mtl.loss_weighting`): the task losses L [k] become one
  scalar, which is differentiated once (O(1) extra cost); or
* a gradient aggregator (`mtl.aggregators`): the k x n Jacobian of L w.r.t.
  the shared parameters becomes one update direction (k backward passes,
  vectorised inside the jitted step); head parameters get their own task's
  gradient, as in TorchJD's `mtl_backward`.

MGDA-UB (Sener & Koltun 2018, §3.3) is MGDA on the gradients w.r.t. the
shared *representation* instead of the shared parameters, which is only an
upper bound when every task sees the same input: it is refused for
task-indexed data.

`mean` is the Jacobian-descent mean (TorchJD's `Mean`): the direction of
`equal` on the shared parameters, while each head gets its own task's whole
gradient (not 1/k of it). Like `constant`, its weights do not depend on J, so
`A(J) = w^T J` is computed as the gradient of `w^T L` (one backward pass;
`Method.fixed_weights`) instead of from the Jacobian.
"""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from core.errors import ConfigError
from mtl import aggregators as aggregators_lib
from mtl import loss_weighting

LOSS_WEIGHTING_METHODS = tuple(loss_weighting.LOSS_WEIGHTINGS)
AGGREGATOR_METHODS = ("mean", "constant", "mgda", "mgda_ub", "pcgrad", "upgrad", "dualproj",
                      "imtl_g", "aligned_mtl", "cagrad", "nash_mtl", "config", "graddrop")
METHODS = LOSS_WEIGHTING_METHODS + AGGREGATOR_METHODS
# Aggregators whose weights ignore the Jacobian: A(J) = w^T J = the gradient of w^T L.
FIXED_WEIGHT_AGGREGATORS = ("mean", "constant")
# Methods whose weights read nothing of the batch: a task absent from a batch (task-indexed
# data sampled uniformly) only lowers its loss term to 0. Every other method compares the
# tasks' losses or gradients within the batch and reads an absent task as a solved one.
BATCH_INDEPENDENT_METHODS = ("static", "equal", "sum", "rlw") + FIXED_WEIGHT_AGGREGATORS


@dataclasses.dataclass(frozen=True)
class Method:
    """A built method.

    Attributes:
      name: its `--method` name.
      weighting: the loss weighting (None for aggregators).
      aggregator: the gradient aggregator (None for loss weightings).
      on_representation: aggregate gradients w.r.t. the shared representation
        (MGDA-UB) rather than the shared parameters.
      mgda_normalization: MGDA's gradient normalisation ('none', 'l2', 'loss', 'loss+').
      fixed_weights: the aggregator's weights when they do not depend on the
        Jacobian (`mean`, `constant`): the step then needs no Jacobian.
    """

    name: str
    weighting: loss_weighting.LossWeighting | None = None
    aggregator: aggregators_lib.Aggregator | None = None
    on_representation: bool = False
    mgda_normalization: str = "none"
    fixed_weights: tuple[float, ...] | None = None

    @property
    def needs_jacobian(self) -> bool:
        return self.aggregator is not None

    def init_state(self, num_tasks: int) -> Any:
        """The method's state for `TrainState.extra` (a loss weighting's; empty for aggregators)."""
        return self.weighting.init(num_tasks) if self.weighting is not None else {}


def _weighting_hyperparams(name: str, options: Mapping[str, Any], num_tasks: int,
                           steps_per_epoch: int) -> dict[str, Any]:
    if name == "static":
        return {"weights": list(options["weights"]) or [1.0] * num_tasks}
    if name == "dwa":
        return {"steps_per_epoch": steps_per_epoch, "temperature": options["dwa_temperature"]}
    if name == "uw":
        return {"lr": options["weighting_lr"]}
    if name == "gradnorm":
        return {"alpha": options["gradnorm_alpha"], "lr": options["weighting_lr"]}
    if name == "famo":
        return {"w_lr": options["famo_lr"], "gamma": options["famo_gamma"]}
    return {}


def _aggregator_hyperparams(name: str, options: Mapping[str, Any], num_tasks: int
                            ) -> dict[str, Any]:
    if name == "constant":
        return {"weights": list(options["weights"]) or [1.0] * num_tasks}
    if name == "cagrad":
        return {"c": options["cagrad_c"]}
    return {}


def make_method(name: str, *, num_tasks: int, steps_per_epoch: int, task_indexed: bool,
                options: Mapping[str, Any]) -> Method:
    """Builds `name` with the hyper-parameters in `options`.

    Args:
      name: one of `METHODS`.
      num_tasks: k.
      steps_per_epoch: training steps per epoch (DWA averages losses per epoch).
      task_indexed: whether each example belongs to one task (refuses MGDA-UB).
      options: a mapping holding at least 'weights', 'dwa_temperature',
        'weighting_lr', 'gradnorm_alpha', 'famo_lr', 'famo_gamma', 'cagrad_c' and
        'mgda_normalization' (e.g. the run config as a dict); other keys are ignored.

    Raises:
      ConfigError: for an unknown method, an invalid hyper-parameter, or
        MGDA-UB on task-indexed data.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown --method={name!r}; loss weightings: "
                          f"{', '.join(LOSS_WEIGHTING_METHODS)}; gradient aggregators: "
                          f"{', '.join(AGGREGATOR_METHODS)}")
    if options["weights"] and name not in ("static", "constant"):
        raise ConfigError(f"--weights is only used by --method=static or constant, not {name}")
    if options["weights"] and len(options["weights"]) != num_tasks:
        raise ConfigError(f"--weights has {len(options['weights'])} values for {num_tasks} "
                          f"tasks")
    if name in LOSS_WEIGHTING_METHODS:
        weighting = loss_weighting.make_loss_weighting(
            name, num_tasks=num_tasks,
            **_weighting_hyperparams(name, options, num_tasks, steps_per_epoch))
        return Method(name=name, weighting=weighting)
    if name == "mgda_ub" and task_indexed:
        raise ConfigError("--method=mgda_ub aggregates gradients w.r.t. the shared "
                          "representation, which bounds MGDA only when every task sees the "
                          "same input; here each example belongs to one task: use "
                          "--method=mgda")
    base = "mgda" if name == "mgda_ub" else name
    aggregator = aggregators_lib.make_aggregator(
        base, **_aggregator_hyperparams(base, options, num_tasks))
    normalization = options["mgda_normalization"] if base == "mgda" else "none"
    fixed = None
    if base in FIXED_WEIGHT_AGGREGATORS:
        fixed = tuple(float(w) for w in aggregator.weighting(jnp.zeros((num_tasks, num_tasks))))
    return Method(name=name, aggregator=aggregator, on_representation=name == "mgda_ub",
                  mgda_normalization=normalization, fixed_weights=fixed)
