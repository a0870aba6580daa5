"""MAML's Omniglot Conv4 as a transfer trunk, cut after any of its four blocks.

`Conv4Blocks` lays its layers out as `core.networks.omniglot_conv4`'s trunk
(`core.trunks.Conv4Trunk` with 64 filters, stride-2 3x3 convolutions, no
pooling, transductive batch norm, features averaged over space): blocks
'block0'..'block3', each [3x3 stride-2 conv 'conv', batch norm 'bn', ReLU],
parameters 'trunk/block<i>/conv/{kernel,bias}' and
'trunk/block<i>/bn/{scale,bias}'. A MAML Omniglot run directory therefore
loads into it strictly by path (only its 'head' is dropped), and so does a
transfer run with `--network=conv4`. The batch norm's two reference-code
details are attributes here too (`bn_scale`, `bn_epsilon`, as
`meta.fidelity`'s switches of the same names): a MAML run of the `reference`
preset has no 'scale' and ε = 1e-3, and loads into `Conv4Blocks(bn_scale=False,
bn_epsilon=1e-3)`. On 28x28 inputs the blocks' outputs are
14x14, 7x7, 4x4 and 2x2 maps of 64 channels. The whole trunk averages its
2x2 map over space, as MAML's head input is (64 features). A trunk cut after
fewer blocks (`--keep_blocks`) flattens its last map by default
(`CUT_FEATURES`; 4*4*64 = 1024 features after three blocks), as the LeNet
cuts do: averaging a 4x4 map of units that each see only part of a drawing
discards where its strokes are, and a linear head on those 64 averages
stays near chance on a 659-way Omniglot target (docs/results.md);
`cut_features='mean'` keeps that variant.

Batch norm is transductive, as in the MAML runs these weights come from
(`core.trunks.BN_MODES`): it normalises with the statistics of the current
batch in training and in evaluation, and has no running statistics (a
transfer train state holds parameters only). One difference keeps
evaluation exact: `core.datasets.arrays` pads the last evaluation batch with
all-zero rows, and those rows must not enter the statistics of the real
examples. So the statistics are means over the examples whose input is not
all zeros (an all-zero image is read as padding; Omniglot images always have
strokes). On a batch without such rows the block computes what
`core.trunks.Conv4Block` computes (a test checks it against `Conv4Trunk`).
Evaluation results depend on which examples share a batch, as MAML's depend
on the query set; the Omniglot splits are stored in a seeded, class-mixed
order (`transfer.omniglot_data`), so they are deterministic.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from core.trunks import Conv2D

FILTERS = 64
NUM_BLOCKS = 4
EPSILON = 1e-5
CUT_FEATURES = ("flatten", "mean")


def real_rows(x: jax.Array) -> jax.Array:
    """float32 [batch]: 1 for an example whose input is not all zeros, 0 for padding.

    A batch of padding only (e.g. the zeros `init` is called with) counts every
    row, so the statistics stay finite.
    """
    real = jnp.any(x.reshape(x.shape[0], -1) != 0, axis=1).astype(jnp.float32)
    return jnp.where(jnp.sum(real) > 0, real, jnp.ones_like(real))


class MaskedBatchNorm(nn.Module):
    """Transductive batch norm over the real rows of a batch ('scale', 'bias' as core's).

    Attributes:
      epsilon: added to the variance.
      use_scale: a learnable scale 'scale'; False: the shift 'bias' only.
    """

    epsilon: float = EPSILON
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        features = x.shape[-1]
        bias = self.param("bias", nn.initializers.zeros, (features,))
        axes = tuple(range(x.ndim - 1))
        w = weights.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        count = jnp.sum(w) * (x.size // (x.shape[0] * features))
        mean = jnp.sum(x * w, axes) / count
        # One pass, E[x^2] - E[x]^2 clipped at 0, as core.trunks.BatchNorm(fast_variance=True).
        var = jnp.maximum(jnp.sum(jnp.square(x) * w, axes) / count - jnp.square(mean), 0.0)
        a = jax.lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            a = a * self.param("scale", nn.initializers.ones, (features,))
        return x * a + (bias - mean * a)


class Conv4Block(nn.Module):
    """One block: 3x3 stride-2 conv ('conv'), masked transductive batch norm ('bn'), ReLU.

    Attributes:
      features: output channels.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      bn_scale: the batch norm has a learnable scale.
      bn_epsilon: the batch norm's ε.
    """

    features: int = FILTERS
    conv_impl: str = "xla"
    bn_scale: bool = True
    bn_epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        x = Conv2D(self.features, (3, 3), (2, 2), impl=self.conv_impl, name="conv")(x)
        bn = MaskedBatchNorm(epsilon=self.bn_epsilon, use_scale=self.bn_scale, name="bn")
        return nn.relu(bn(x, weights))


class Conv4Blocks(nn.Module):
    """The lowest `num_blocks` of MAML's Omniglot Conv4 trunk; features [batch, features].

    Attributes:
      num_blocks: blocks kept, 1 to 4.
      cut_features: with fewer than 4 blocks, the last map flattened or averaged
        over space (`CUT_FEATURES`); the whole trunk always averages.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: dropout after each block (`core.trunks`' rule).
      bn_scale: the batch norms have a learnable scale.
      bn_epsilon: the batch norms' ε.
    """

    num_blocks: int = NUM_BLOCKS
    cut_features: str = "flatten"
    conv_impl: str = "xla"
    dropout_rate: float = 0.0
    bn_scale: bool = True
    bn_epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if not 1 <= self.num_blocks <= NUM_BLOCKS:
            raise ValueError(f"Conv4Blocks keeps 1 to {NUM_BLOCKS} blocks, got {self.num_blocks}")
        if self.cut_features not in CUT_FEATURES:
            raise ValueError(f"cut_features is one of {CUT_FEATURES}, got {self.cut_features!r}")
        weights = real_rows(x)
        for i in range(self.num_blocks):
            block = Conv4Block(FILTERS, conv_impl=self.conv_impl, bn_scale=self.bn_scale,
                               bn_epsilon=self.bn_epsilon, name=f"block{i}")
            x = block(x, weights)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.num_blocks < NUM_BLOCKS and self.cut_features == "flatten":
            return x.reshape(x.shape[0], -1)
        return jnp.mean(x, axis=(1, 2))
