"""Trunks: networks from inputs to features [batch, F], and the layers they share.

The trunks (`Conv4Trunk`, `MLPTrunk`, `LeNetTrunk`) end before any output
layer; `core.networks` puts linear heads on them. All are pure Linen modules
called as `trunk.apply(variables, x, train=...)`. Every submodule is named
explicitly ('block0/conv', 'dense1', 'bn0', ...), so parameter paths do not
depend on the order in which layers are created.

Batch norm has two explicit modes (`BN_MODES`):

* `transductive`: always normalise with the statistics of the current batch,
  at training and at test time. This is what the reference MAML code does
  (cbfinn/maml issues #9 and #37) and what its published numbers assume: at
  test time the statistics of the query set of a task are used.
* `running`: keep exponential running averages of the batch statistics
  during training (`train=True` with `mutable=['batch_stats']`) and use them
  at test time (`train=False`): no information flows between test examples.

Every trunk takes `dropout_rate` (default 0, which adds no dropout layer, so
no 'dropout' PRNG key is needed and the network is unchanged). With a positive
rate, dropout follows each block or hidden layer when `train=True`, and the
caller passes `rngs={"dropout": key}` to `apply`. Derive that key from the
run's seed and the step, e.g. `jax.random.fold_in(jax.random.PRNGKey(seed),
step)`, rather than splitting a key carried through the loop, so that a run
resumed from a checkpoint draws the same masks as an uninterrupted one and
stays bit-identical. `train=False` is deterministic.
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
      epsilon: added to the variance (the reference MAML code's
        `tf.contrib.layers.batch_norm` uses 1e-3).
      fast_variance: compute the batch variance in one pass as
        E[x^2] - E[x]^2 (clipped at 0), as `flax.linen.BatchNorm` does by
        default; False uses the two-pass E[(x - E[x])^2], which is more
        accurate when |mean| >> std but slower (measured: docs/results.md).
      use_scale: a learnable scale γ ('scale'); False: no scale parameter,
        only the shift 'bias' (as the reference MAML code, `scale=False`).
    """

    mode: str = "transductive"
    momentum: float = 0.9
    epsilon: float = 1e-5
    fast_variance: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.mode not in BN_MODES:
            raise ValueError(f"unknown batch-norm mode {self.mode!r}; expected one of {BN_MODES}")
        features = x.shape[-1]
        scale = (self.param("scale", nn.initializers.ones, (features,)) if self.use_scale
                 else None)
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
        a = jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            a = scale * a
        return x * a + (bias - mean * a)


BN_OPTIONS = ("bn_mode", "bn_fast_variance", "bn_scale", "bn_epsilon")


def bn_options(module: nn.Module) -> dict:
    """A module's batch-norm attributes (`BN_OPTIONS`), to hand them to a submodule."""
    return {name: getattr(module, name) for name in BN_OPTIONS}


def make_batch_norm(module: nn.Module, name: str) -> BatchNorm:
    """The `BatchNorm` a module's `BN_OPTIONS` attributes describe, named `name`."""
    return BatchNorm(mode=module.bn_mode, fast_variance=module.bn_fast_variance,
                     use_scale=module.bn_scale, epsilon=module.bn_epsilon, name=name)


class Conv2D(nn.Module):
    """A 2-D convolution ('SAME'-padded by default) whose implementation is an attribute.

    Parameters are named like `flax.linen.Conv` ('kernel' [kh, kw, Cin, Cout],
    'bias' [Cout]), so checkpoints do not depend on `impl`.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      impl: 'xla' or 'im2col' (`core.conv.CONV_IMPLS`).
      padding: 'SAME' or 'VALID' (`core.conv.PADDINGS`).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    impl: str = "xla"
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                            (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv_lib.conv2d(x, kernel, self.strides, self.impl, self.padding) + bias


def _dropout(x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Dropout of a trunk's block or hidden layer; no layer at all when `rate` is 0."""
    if rate > 0:
        x = nn.Dropout(rate, deterministic=not train)(x)
    return x


class Conv4Block(nn.Module):
    """One block of `Conv4Trunk`: 3x3 conv ('conv'), batch norm ('bn'), ReLU.

    The block halves the spatial size either with a stride-2 convolution or,
    with `max_pool`, with a stride-1 convolution and a 2x2 max-pool after the
    ReLU.

    Attributes:
      features: output channels.
      max_pool: 2x2 max-pool instead of a stride-2 convolution.
      bn_mode: batch-norm mode (`BN_MODES`).
      bn_fast_variance: `BatchNorm.fast_variance`.
      bn_scale: `BatchNorm.use_scale`.
      bn_epsilon: `BatchNorm.epsilon`.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
    """

    features: int
    max_pool: bool = False
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    bn_scale: bool = True
    bn_epsilon: float = 1e-5
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        strides = (1, 1) if self.max_pool else (2, 2)
        x = Conv2D(self.features, (3, 3), strides, impl=self.conv_impl, name="conv")(x)
        x = make_batch_norm(self, "bn")(x, train)
        x = nn.relu(x)
        if self.max_pool:
            x = nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
        return x


class Conv4Trunk(nn.Module):
    """The 4-block convolutional network of Finn et al. (2017) without its output layer.

    Four `Conv4Block`s ('block0'..'block3') of [3x3 conv, batch norm, ReLU],
    with either stride-2 convolutions (Omniglot: 64 filters on 28x28, no
    pooling) or 2x2 max-pools (mini-ImageNet: 32 filters on 84x84). The
    features are then averaged over space (`spatial_pool='mean'`, as the
    reference code does without pooling) or flattened (`'flatten'`, as with
    pooling).

    Attributes:
      filters: channels of every block.
      max_pool: 2x2 max-pool after each block instead of stride-2 convolutions.
      spatial_pool: 'mean' (features [batch, filters]) or 'flatten'
        (features [batch, height * width * filters] of the last block).
      bn_mode: batch-norm mode (`BN_MODES`).
      bn_fast_variance: `BatchNorm.fast_variance`.
      bn_scale: `BatchNorm.use_scale`.
      bn_epsilon: `BatchNorm.epsilon`.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: dropout after each block (see the module docstring).
    """

    filters: int = 64
    max_pool: bool = False
    spatial_pool: str = "mean"
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    bn_scale: bool = True
    bn_epsilon: float = 1e-5
    conv_impl: str = "xla"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if self.spatial_pool not in ("mean", "flatten"):
            raise ValueError(f"unknown spatial_pool {self.spatial_pool!r}; "
                             "expected 'mean' or 'flatten'")
        for i in range(4):
            x = Conv4Block(self.filters, max_pool=self.max_pool, conv_impl=self.conv_impl,
                           **bn_options(self), name=f"block{i}")(x, train)
            x = _dropout(x, self.dropout_rate, train)
        if self.spatial_pool == "mean":
            return jnp.mean(x, axis=(1, 2))
        return x.reshape(x.shape[0], -1)


class MLPTrunk(nn.Module):
    """ReLU hidden layers on flattened inputs, optionally batch-normalised.

    Layer i is a Dense named f'dense{i}', then (with `batch_norm`) a
    `BatchNorm` named f'bn{i}', then a ReLU. The output is the last hidden
    activation (the flattened input when `hidden` is empty).

    Attributes:
      hidden: widths of the hidden layers.
      batch_norm: whether to normalise each hidden layer (before its ReLU).
      bn_mode: batch-norm mode when `batch_norm`.
      bn_fast_variance: `BatchNorm.fast_variance`.
      bn_scale: `BatchNorm.use_scale`.
      bn_epsilon: `BatchNorm.epsilon`.
      kernel_init: initialiser of every kernel.
      dropout_rate: dropout after each hidden layer (see the module docstring).
    """

    hidden: Sequence[int] = (40, 40)
    batch_norm: bool = False
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    bn_scale: bool = True
    bn_epsilon: float = 1e-5
    kernel_init: Callable = nn.initializers.lecun_normal()
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, kernel_init=self.kernel_init, name=f"dense{i}")(x)
            if self.batch_norm:
                x = make_batch_norm(self, f"bn{i}")(x, train)
            x = nn.relu(x)
            x = _dropout(x, self.dropout_rate, train)
        return x


class LeNetTrunk(nn.Module):
    """A LeNet-5-style trunk for 28x28 inputs such as MNIST; features [batch, 84].

    'conv0' (5x5, `filters[0]` channels) and 'conv1' (5x5, `filters[1]`),
    each followed by a ReLU and a 2x2 max-pool, then the flattened maps go
    through 'dense0' (120 units) and 'dense1' (84 units), each with a ReLU.
    Unlike LeNet-5 (LeCun et al., 1998) it uses ReLUs, max-pooling, all input
    channels in 'conv1' (LeNet-5's C3 used a sparse table) and 'SAME' padding
    in both convolutions (it reuses `Conv2D`): a 28x28 input keeps its size
    through each convolution, so 'dense0' sees 7 * 7 * filters[1] features
    where LeNet-5 on 32x32 inputs sees 5 * 5 * 16.

    Attributes:
      filters: channels of 'conv0' and 'conv1'.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: dropout after each pooled convolution and each hidden
        layer (see the module docstring).
    """

    filters: Sequence[int] = (6, 16)
    conv_impl: str = "xla"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if len(self.filters) != 2:
            raise ValueError(f"LeNetTrunk has two convolutions; got filters={self.filters!r}")
        for i, features in enumerate(self.filters):
            x = Conv2D(features, (5, 5), impl=self.conv_impl, name=f"conv{i}")(x)
            x = max_pool2x2(nn.relu(x))
            x = _dropout(x, self.dropout_rate, train)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate((120, 84)):
            x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
            x = _dropout(x, self.dropout_rate, train)
        return x


def max_pool2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 over [N, H, W, C], as a reshape and a max.

    The values are those of `nn.max_pool(x, (2, 2), (2, 2), padding='VALID')`
    (an odd last row or column is dropped). The gradient is an elementwise
    select instead of `reduce_window`'s `select_and_scatter`, which XLA:CPU
    runs slowly. Where a window has tied maxima the gradient is split equally
    between them (the rule of `jnp.max`) rather than sent to one of them.
    """
    n, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2, :]
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class MultiLeNetTrunk(nn.Module):
    """The shared trunk of the MultiLeNet of MGDA-UB (Sener & Koltun, 2018); features [batch, 50].

    As isl-org/MultiObjectiveOptimization `multi_task/models/multi_lenet.py`
    (`MultiLeNetR`) on 28x28x1 inputs: 'conv0' (1->10, 5x5, 'VALID') -> 2x2
    max-pool -> ReLU -> 'conv1' (10->20, 5x5, 'VALID') -> channel dropout ->
    2x2 max-pool -> ReLU -> flatten (4 * 4 * 20 = 320) -> 'dense0' (50) -> ReLU.
    The MultiLeNet's task heads are `core.networks.MLPHead((50,), 10)`.

    The dropout is PyTorch's `Dropout2d`: with `train=True`, one Bernoulli
    mask per example and channel, broadcast over height and width, and the
    kept channels scaled by 1 / (1 - rate). The reference code instead draws
    one mask per batch, does not rescale, and also drops units in its heads;
    the TorchJD peer (`/work/shared/peers/torchjd_mtl.py`) uses `Dropout2d`
    as here. The flatten is in (H, W, C) order where PyTorch's is (C, H, W):
    loading PyTorch weights into 'dense0' needs its rows permuted.

    Attributes:
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: channel dropout after 'conv1'; 0 adds no dropout layer.
    """

    conv_impl: str = "xla"
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = Conv2D(10, (5, 5), impl=self.conv_impl, padding="VALID", name="conv0")(x)
        x = nn.relu(max_pool2x2(x))
        x = Conv2D(20, (5, 5), impl=self.conv_impl, padding="VALID", name="conv1")(x)
        if self.dropout_rate > 0:
            # broadcast_dims=(1, 2): one mask entry per (example, channel), as Dropout2d.
            x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train,
                           name="dropout2d")(x)
        x = nn.relu(max_pool2x2(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(50, name="dense0")(x))
