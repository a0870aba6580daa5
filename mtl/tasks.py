"""Tasks of a multi-task model: what each head predicts, its loss and its metrics.

A `Task` is a head of a hard-parameter-sharing network: a classification head
(softmax cross-entropy; metric accuracy, higher is better) or a regression head
(mean squared or absolute error; metrics MAE and MSE, lower is better). One
model may mix both, e.g. the digit and the rotation angle of one image.

Every loss and metric here is *per example* ([batch] arrays), so a caller can
mask padded examples (exact evaluation means, `core.evaluate`) or examples
that belong to another task (task-indexed data such as School, where each
example carries the id of the one task it is a sample of).
"""

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from core.errors import ConfigError

KINDS = ("classification", "regression")
REGRESSION_LOSSES = ("mse", "l1")


@dataclasses.dataclass(frozen=True)
class Task:
    """One head of a multi-task model.

    Attributes:
      name: the task's name: its target's key in the batch and its head's name.
      kind: 'classification' or 'regression'.
      outputs: classes (classification) or target width (regression).
      loss: regression only: 'mse' or 'l1'.
    """

    name: str
    kind: str
    outputs: int
    loss: str = "mse"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: unknown kind {self.kind!r}; expected one of "
                              f"{', '.join(KINDS)}")
        if self.outputs < 1 or (self.kind == "classification" and self.outputs < 2):
            raise ConfigError(f"task {self.name!r}: {self.outputs} outputs is too few")
        if self.kind == "regression" and self.loss not in REGRESSION_LOSSES:
            raise ConfigError(f"task {self.name!r}: unknown regression loss {self.loss!r}; "
                              f"expected one of {', '.join(REGRESSION_LOSSES)}")

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """{metric: whether higher is better} of this task's metrics."""
        if self.kind == "classification":
            return {"accuracy": True}
        return {"mae": False, "mse": False}

    @property
    def main_metric(self) -> str:
        return "accuracy" if self.kind == "classification" else "mae"


def _regression_residual(output: jax.Array, target: jax.Array) -> jax.Array:
    """output - target as [batch, width] (a [batch] target is a width-1 target)."""
    target = target.reshape(target.shape[0], -1).astype(output.dtype)
    return output.reshape(output.shape[0], -1) - target


def per_example_loss(task: Task, output: jax.Array, target: jax.Array) -> jax.Array:
    """The task's loss for each example of the batch, [batch]."""
    if task.kind == "classification":
        return optax.softmax_cross_entropy_with_integer_labels(output, target)
    residual = _regression_residual(output, target)
    if task.loss == "mse":
        return jnp.mean(jnp.square(residual), axis=-1)
    return jnp.mean(jnp.abs(residual), axis=-1)


def per_example_metrics(task: Task, output: jax.Array, target: jax.Array
                        ) -> dict[str, jax.Array]:
    """The task's metrics for each example, {metric: [batch]} (accuracy in %)."""
    if task.kind == "classification":
        return {"accuracy": 100.0 * (jnp.argmax(output, -1) == target).astype(jnp.float32)}
    residual = _regression_residual(output, target)
    return {"mae": jnp.mean(jnp.abs(residual), -1), "mse": jnp.mean(jnp.square(residual), -1)}


def check_tasks(tasks: Mapping[str, Task], targets: Mapping[str, object]) -> None:
    """Raises ConfigError unless every task has a target of that name in the data."""
    missing = [name for name in tasks if name not in targets]
    if missing:
        raise ConfigError(f"task(s) {', '.join(missing)} have no targets in the data, which has "
                          f"{', '.join(sorted(targets))}")
