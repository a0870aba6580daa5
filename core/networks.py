"""Networks of the few-shot literature as Flax Linen modules.

All modules are pure: `variables = net.init(key, x)` gives
`{'params': ...}` (plus `{'batch_stats': ...}` in running batch-norm mode) and
`net.apply(variables, x, train=...)` evaluates them, so algorithms can treat
the parameters as an ordinary pytree (MAML adapts a copy per task).

Batch norm has two explicit modes (`BN_MODES`):

* `transductive`: always normalise with the statistics of the current batch,
  at training and at test time. This is what the reference MAML code does
  (cbfinn/maml issues #9 and #37) and what its published numbers assume: at
  test time the statistics of the query set of a task are used.
* `running`: keep exponential running averages of the batch statistics
  during training (`train=True` with `mutable=['batch_stats']`) and use them
  at test time (`train=False`): no information flows between test examples.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from core import conv as conv_lib

BN_MODES = ("transductive", "running")


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last, with an explicit mode.

    Attributes:
      mode: 'transductive' or 'running' (see the module docstring).
      momentum: running-average decay in 'running' mode.
      epsilon: added to the variance.
      fast_variance: compute the batch variance in one pass as
        E[x^2] - E[x]^2 (clipped at 0), as `flax.linen.BatchNorm` does by
        default; False uses the two-pass E[(x - E[x])^2], which is more
        accurate when |mean| >> std but slower: 3-8% on the first-order
        Omniglot MAML step on CPU (docs/results.md, issue 3 section).
    """

    mode: str = "transductive"
    momentum: float = 0.9
    epsilon: float = 1e-5
    fast_variance: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.mode not in BN_MODES:
            raise ValueError(f"unknown batch-norm mode {self.mode!r}; expected one of {BN_MODES}")
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        axes = tuple(range(x.ndim - 1))
        use_batch_stats = self.mode == "transductive" or train
        if self.mode == "running":
            ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
            ra_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if use_batch_stats:
            mean = jnp.mean(x, axes)
            if self.fast_variance:
                var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
            else:
                var = jnp.mean(jnp.square(x - mean), axes)
            if self.mode == "running" and train and not self.is_initializing():
                if self.is_mutable_collection("batch_stats"):
                    stats_mean = jax.lax.stop_gradient(mean)
                    stats_var = jax.lax.stop_gradient(var)
                    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * stats_mean
                    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * stats_var
        else:
            mean, var = ra_mean.value, ra_var.value
        # x * a + b rather than (x - mean) * a + bias: the same rounding (of
        # order |mean| / std * eps), without a centred copy of x in memory.
        a = scale * jax.lax.rsqrt(var + self.epsilon)
        return x * a + (bias - mean * a)


class Conv2D(nn.Module):
    """A 'SAME'-padded 2-D convolution whose implementation is an attribute.

    Parameters are named like `flax.linen.Conv` ('kernel' [kh, kw, Cin, Cout],
    'bias' [Cout]), so checkpoints do not depend on `impl`.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      impl: 'xla' or 'im2col' (`core.conv.CONV_IMPLS`).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                            (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv_lib.conv2d(x, kernel, self.strides, self.impl) + bias


class MLP(nn.Module):
    """A ReLU multi-layer perceptron, optionally with batch norm after each hidden layer.

    The sinusoid network of Finn et al. (2017) is `MLP(hidden=(40, 40), outputs=1)`;
    their Omniglot MLP is `MLP(hidden=(256, 128, 64, 64), outputs=ways,
    batch_norm=True)` on flattened images.

    Attributes:
      hidden: widths of the hidden layers.
      outputs: width of the output layer.
      batch_norm: whether to normalise each hidden layer.
      bn_mode: batch-norm mode when `batch_norm`.
      bn_fast_variance: `BatchNorm.fast_variance`.
    """

    hidden: Sequence[int] = (40, 40)
    outputs: int = 1
    batch_norm: bool = False
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=self.kernel_init)(x)
            if self.batch_norm:
                x = BatchNorm(mode=self.bn_mode, fast_variance=self.bn_fast_variance)(x, train)
            x = nn.relu(x)
        return nn.Dense(self.outputs, kernel_init=self.kernel_init)(x)


class Conv4(nn.Module):
    """The 4-block convolutional network of Finn et al. (2017).

    Each block is [3x3 conv, batch norm, ReLU], then either a stride-2
    convolution (Omniglot: 64 filters on 28x28, no pooling) or a 2x2 max-pool
    (mini-ImageNet: 32 filters on 84x84). The features are then averaged over
    space (`spatial_pool='mean'`, as the reference code does without pooling)
    or flattened (`'flatten'`, as with pooling) and mapped to `outputs` logits.

    Attributes:
      outputs: number of classes (ways).
      filters: channels of every block.
      max_pool: 2x2 max-pool after each block instead of stride-2 convolutions.
      spatial_pool: 'mean' or 'flatten' before the output layer.
      bn_mode: batch-norm mode (`BN_MODES`).
      bn_fast_variance: `BatchNorm.fast_variance`.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
    """

    outputs: int
    filters: int = 64
    max_pool: bool = False
    spatial_pool: str = "mean"
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        strides = (1, 1) if self.max_pool else (2, 2)
        for _ in range(4):
            x = Conv2D(self.filters, (3, 3), strides, impl=self.conv_impl)(x)
            x = BatchNorm(mode=self.bn_mode, fast_variance=self.bn_fast_variance)(x, train)
            x = nn.relu(x)
            if self.max_pool:
                x = nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
        if self.spatial_pool == "mean":
            x = jnp.mean(x, axis=(1, 2))
        elif self.spatial_pool == "flatten":
            x = x.reshape(x.shape[0], -1)
        else:
            raise ValueError(f"unknown spatial_pool {self.spatial_pool!r}; expected 'mean' or 'flatten'")
        return nn.Dense(self.outputs)(x)


def omniglot_conv4(ways: int, bn_mode: str = "transductive", conv_impl: str = "xla",
                   spatial_pool: str = "mean", bn_fast_variance: bool = True) -> Conv4:
    """Finn et al.'s Omniglot network: 4 x [conv 3x3/2, 64, BN, ReLU] on 28x28."""
    return Conv4(outputs=ways, filters=64, max_pool=False, spatial_pool=spatial_pool,
                 bn_mode=bn_mode, bn_fast_variance=bn_fast_variance, conv_impl=conv_impl)


def miniimagenet_conv4(ways: int, bn_mode: str = "transductive", conv_impl: str = "xla") -> Conv4:
    """Finn et al.'s mini-ImageNet network: 4 x [conv 3x3, 32, BN, ReLU, max-pool 2] on 84x84."""
    return Conv4(outputs=ways, filters=32, max_pool=True, spatial_pool="flatten",
                 bn_mode=bn_mode, conv_impl=conv_impl)


def sinusoid_mlp() -> MLP:
    """Finn et al.'s sinusoid regression network: 1-40-40-1 ReLU.

    Weights start from a truncated normal with standard deviation 0.01 and
    biases from zero, as in the reference code (cbfinn/maml maml.py
    `construct_fc_weights`).
    """
    return MLP(hidden=(40, 40), outputs=1,
               kernel_init=nn.initializers.truncated_normal(stddev=0.01))

