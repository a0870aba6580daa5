"""The networks of a transfer run: a trunk cut after any block, and one fresh linear head.

Transfer needs trunks that `core.trunks` does not offer: the lowest N blocks
of a LeNet or an MLP, with a head on the early features (Yosinski et al.,
2014). `LeNetBlocks` and `MLPBlocks` lay their layers out exactly as
`core.trunks.LeNetTrunk` and `core.trunks.MLPTrunk` do (same names, same
operations; a test checks that the full depth computes the same features from
the same parameters), and stop after `num_blocks` blocks, so a cut network
loads its blocks from a full source by their paths.

`--network=conv4` is MAML's Omniglot Conv4 (`transfer.conv4.Conv4Blocks`,
blocks 'block0'..'block3'), laid out as a MAML run's checkpoint is, so a MAML
run directory is a source like any other.

`Classifier` is the trunk ('trunk') and one Dense head ('head'). Its
`features` and `classify` methods split the forward pass at the head, so a
frozen trunk's features can be computed once and the head trained on them.
Only the Conv4 has batch norm (transductive: batch statistics, no running
statistics, so every network's variables are its parameters alone).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from core.trunks import Conv2D, max_pool2x2
from transfer import conv4

NETWORKS = ("lenet", "mlp", "conv4")
LENET_FILTERS = (6, 16)
LENET_WIDTHS = (120, 84)


def _dropout(x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Dropout after a block, as `core.trunks` places it; no layer when `rate` is 0."""
    if rate > 0:
        x = nn.Dropout(rate, deterministic=not train)(x)
    return x


class LeNetBlocks(nn.Module):
    """The lowest `num_blocks` of `core.trunks.LeNetTrunk`'s four blocks.

    Blocks 'conv0', 'conv1' (5x5 'SAME' convolution, ReLU, 2x2 max-pool) and
    'dense0', 'dense1' (120 and 84 units, ReLU). The output is the last kept
    block's activation, flattened: 14*14*6, 7*7*16, 120 or 84 features.

    Attributes:
      num_blocks: blocks kept, 1 to 4.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: dropout after each block (`core.trunks`' rule).
    """

    num_blocks: int = 4
    conv_impl: str = "xla"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        for i, features in enumerate(LENET_FILTERS[:self.num_blocks]):
            x = Conv2D(features, (5, 5), impl=self.conv_impl, name=f"conv{i}")(x)
            x = max_pool2x2(nn.relu(x))
            x = _dropout(x, self.dropout_rate, train)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(LENET_WIDTHS[:max(0, self.num_blocks - 2)]):
            x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
            x = _dropout(x, self.dropout_rate, train)
        return x


class MLPBlocks(nn.Module):
    """The lowest `num_blocks` hidden layers of `core.trunks.MLPTrunk` (no batch norm).

    Attributes:
      hidden: widths of all the hidden layers ('dense0', 'dense1', ...).
      num_blocks: hidden layers kept, 1 to len(hidden).
      dropout_rate: dropout after each hidden layer.
    """

    hidden: Sequence[int] = (256, 128)
    num_blocks: int = 2
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(tuple(self.hidden)[:self.num_blocks]):
            x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
            x = _dropout(x, self.dropout_rate, train)
        return x


class Classifier(nn.Module):
    """A trunk ('trunk') and a Dense head ('head') of `num_classes` logits.

    Attributes:
      trunk: a module called as `trunk(x, train)`, returning features [batch, F].
      num_classes: outputs of the head.
    """

    trunk: nn.Module
    num_classes: int

    def setup(self):
        self.head = nn.Dense(self.num_classes)

    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        return self.head(self.trunk(x, train))

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The trunk's features [batch, F] (the head's input)."""
        return self.trunk(x, train)

    def classify(self, features: jax.Array) -> jax.Array:
        """The head's logits from features; reads only the head's parameters."""
        return self.head(features)


def block_names(network: str, mlp_hidden: Sequence[int] = ()) -> tuple[str, ...]:
    """The names of a full trunk's blocks, lowest first ('conv0', ..., or 'dense0', ...)."""
    if network == "lenet":
        return ("conv0", "conv1", "dense0", "dense1")
    if network == "conv4":
        return tuple(f"block{i}" for i in range(conv4.NUM_BLOCKS))
    return tuple(f"dense{i}" for i in range(len(mlp_hidden)))


def make_classifier(network: str, num_classes: int, num_blocks: int, *,
                    mlp_hidden: Sequence[int] = (256, 128), conv_impl: str = "xla",
                    dropout_rate: float = 0.0, bn_scale: bool = True,
                    bn_epsilon: float = conv4.EPSILON,
                    cut_features: str = "flatten") -> Classifier:
    """The classifier of `--network` with its lowest `num_blocks` trunk blocks.

    `bn_scale`, `bn_epsilon` and `cut_features` are the Conv4's
    (`transfer.conv4`): its batch norm, which the other networks lack, and the
    features of a cut Conv4 (the other networks' cuts flatten).

    Raises:
      ValueError: for an unknown network or a number of blocks it does not have
        (the runner checks both first and raises ConfigError).
    """
    total = len(block_names(network, mlp_hidden))
    if network not in NETWORKS or not 1 <= num_blocks <= total:
        raise ValueError(f"no {network!r} network with {num_blocks} of its {total} blocks")
    if network == "lenet":
        trunk = LeNetBlocks(num_blocks=num_blocks, conv_impl=conv_impl,
                            dropout_rate=dropout_rate)
    elif network == "conv4":
        trunk = conv4.Conv4Blocks(num_blocks=num_blocks, conv_impl=conv_impl,
                                  dropout_rate=dropout_rate, bn_scale=bn_scale,
                                  bn_epsilon=bn_epsilon, cut_features=cut_features)
    else:
        trunk = MLPBlocks(hidden=tuple(mlp_hidden), num_blocks=num_blocks,
                          dropout_rate=dropout_rate)
    return Classifier(trunk=trunk, num_classes=num_classes)
