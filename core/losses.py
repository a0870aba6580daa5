"""Per-batch losses of a Flax model, in the form the algorithms consume.

A *loss function* here has the signature

    loss_fn(params, model_state, x, y, train) -> (loss, (new_model_state, metrics))

where `params` is the pytree being differentiated (and, in MAML, adapted),
`model_state` holds non-differentiated collections such as batch-norm running
statistics (an empty dict when there are none), and `metrics` is a dict of
scalars that always contains 'loss' and the task's metric ('accuracy' or
'mse'). The new model state is only different from the old one when
`train=True` and the model keeps running statistics.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


def _apply(model: nn.Module, params, model_state, x, train: bool):
    variables = {"params": params, **model_state}
    if train and model_state:
        out, new_state = model.apply(variables, x, train=True, mutable=list(model_state))
        return out, dict(new_state)
    return model.apply(variables, x, train=train), model_state


def classification_loss(model: nn.Module) -> LossFn:
    """Softmax cross-entropy with integer labels; metric 'accuracy'.

    Args:
      model: a Linen module mapping a batch of inputs to logits, called as
        `model.apply(variables, x, train=...)`.

    Returns:
      A loss function (see the module docstring).
    """

    def loss_fn(params, model_state, x, y, train):
        logits, new_state = _apply(model, params, model_state, x, train)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (new_state, {"loss": loss, "accuracy": accuracy})

    return loss_fn


def regression_loss(model: nn.Module) -> LossFn:
    """Mean squared error; metric 'mse' (equal to the loss).

    Args:
      model: a Linen module mapping a batch of inputs to predictions with the
        shape of the targets.

    Returns:
      A loss function (see the module docstring).
    """

    def loss_fn(params, model_state, x, y, train):
        pred, new_state = _apply(model, params, model_state, x, train)
        loss = jnp.mean(jnp.square(pred - y))
        return loss, (new_state, {"loss": loss, "mse": loss})

    return loss_fn


def split_variables(variables: dict) -> tuple[Any, dict]:
    """Splits `model.init(...)` output into (params, model_state).

    Args:
      variables: the dict returned by `Module.init`.

    Returns:
      The 'params' collection and a dict of every other collection.
    """
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables
