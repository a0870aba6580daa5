"""Features of a frozen trunk, computed once per split for feature extraction.

When only the head trains, the trunk's output on an example never changes,
so computing it at every step (and for every validation) is wasted work.
`extract_features` runs the trunk once over a split, in evaluation mode (no
dropout), and returns an `Arrays` of float32 features with the split's
targets: the training batches and evaluation batches of the head are then
built from it exactly as from images (`core.datasets.arrays`), at the cost
of a linear layer per step.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from core import evaluate as evaluate_lib
from core.datasets import arrays
from core.datasets.arrays import Arrays
from transfer.networks import Classifier


def feature_fn(model: Classifier):
    """The jitted `(params, x) -> features [batch, F]` of the model's trunk, without dropout."""

    def trunk_features(params, x):
        return model.apply({"params": params}, x, train=False, method=Classifier.features)

    return jax.jit(trunk_features)


def extract_features(model: Classifier, params, splits: Mapping[str, Arrays], batch_size: int,
                     mesh: Mesh) -> dict[str, Arrays]:
    """The trunk's features of every example of each split, in order, with its targets.

    Args:
      model: the classifier whose trunk computes the features.
      params: its parameters (only the trunk's are read).
      splits: name -> a split of images (any may be empty).
      batch_size: examples per forward pass (the evaluation batch size; one
        compiled forward pass serves every split).
      mesh: the device mesh the batches are split over.

    Returns:
      name -> Arrays with x float32 [n, F] and the targets of the split.
    """
    features = feature_fn(model)
    return {name: _split_features(features, params, data, batch_size, mesh)
            for name, data in splits.items()}


def _split_features(features, params, data: Arrays, batch_size: int, mesh: Mesh) -> Arrays:
    outputs = [features(params, batch["x"])
               for batch in arrays.eval_batches(data, batch_size, mesh)]
    if outputs:
        x = np.concatenate([np.asarray(out) for out in evaluate_lib.to_host(outputs)])[:len(data)]
    else:
        shape = jax.eval_shape(features, params, jnp.zeros((1, *data.x.shape[1:]), jnp.float32))
        x = np.zeros((0, *shape.shape[1:]), np.float32)
    return Arrays(x.astype(np.float32), dict(data.y))
