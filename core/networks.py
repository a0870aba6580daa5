"""Networks of the few-shot literature as Flax Linen modules: trunks and heads.

All modules are pure: `variables = net.init(key, x)` gives
`{'params': ...}` (plus `{'batch_stats': ...}` in running batch-norm mode) and
`net.apply(variables, x, train=...)` evaluates them, so algorithms can treat
the parameters as an ordinary pytree (MAML adapts a copy per task).

A network is a *trunk* (`core.trunks`: inputs to features [batch, F]) followed
by linear *heads*, so that transfer and multi-task methods can share, freeze
or re-initialise them separately. `Conv4` and `MLP` are a trunk named 'trunk'
and one Dense named 'head'; `TrunkAndHeads` puts `Heads` named 'heads' (one
Dense per task, named by the task) on any trunk. Every submodule is named
explicitly, so parameter paths ('trunk/block0/conv/kernel', 'head/kernel',
'heads/digit/kernel') do not depend on the order in which layers are created.
Batch-norm modes and dropout are described in `core.trunks`.
"""

from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
from flax.core import FrozenDict

# Re-exported: `networks` stays the one import for building a network.
from core.trunks import (BN_MODES, BatchNorm, Conv2D, Conv4Trunk, LeNetTrunk,  # noqa: F401
                         MLPTrunk, MultiLeNetTrunk, bn_options)

# Initialisers of an output layer's kernel by name (`head_initializer`); biases start at zero.
HEAD_INITS = ("lecun_normal", "normal", "glorot_uniform")


def head_initializer(name: str) -> Callable:
    """An output layer's kernel initialiser by name.

    'lecun_normal' is flax's `Dense` default (truncated normal, variance
    1 / fan_in); 'normal' is N(0, 1), the reference MAML code's Omniglot
    output layer (`tf.random_normal`); 'glorot_uniform' is its mini-ImageNet
    one (`xavier_initializer`).
    """
    initializers = {"lecun_normal": nn.initializers.lecun_normal(),
                    "normal": nn.initializers.normal(stddev=1.0),
                    "glorot_uniform": nn.initializers.glorot_uniform()}
    if name not in initializers:
        raise ValueError(f"unknown head init {name!r}; expected one of {HEAD_INITS}")
    return initializers[name]


def task_outputs(outputs: Mapping[str, int], owner: str) -> FrozenDict:
    """Checks a {task name: output width} mapping; frozen, so the module stays hashable."""
    if not outputs:
        raise ValueError(f"{owner} needs at least one task, got {outputs!r}")
    for task, width in outputs.items():
        # Identifiers only: no '/', which separates the components of parameter paths.
        if not isinstance(task, str) or not task.isidentifier():
            raise ValueError(f"{owner}: task name {task!r} is not a valid module name; use a "
                             "non-empty Python identifier such as 'digit'")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"{owner}: the output width of task {task!r} must be a positive "
                             f"integer, got {width!r}")
    return FrozenDict(outputs)


class Heads(nn.Module):
    """One head per task on shared features: {task: head(features)}.

    Each head is named by its task, so a head is found by its task's name and
    adding or removing a task leaves the other heads' parameters where they
    were. With `hidden=()` a head is one Dense (parameters '<task>/kernel' and
    '<task>/bias'); otherwise it is an `MLPHead` ('<task>/dense0/kernel', ...,
    '<task>/out/kernel'), e.g. `hidden=(50,)` for the MultiLeNet's heads.

    Attributes:
      outputs: task name -> output width, e.g. {"digit": 10, "angle": 1} for
        10 class logits and one regressed value. Names must be Python
        identifiers (ValueError otherwise); the mapping is stored frozen.
      kernel_init: initialiser of every head's kernel.
      hidden: widths of each head's ReLU hidden layers (`MLPHead.hidden`).
    """

    outputs: Mapping[str, int]
    kernel_init: Callable = nn.initializers.lecun_normal()
    hidden: Sequence[int] = ()

    def __post_init__(self):
        self.outputs = task_outputs(self.outputs, "Heads")
        self.hidden = tuple(self.hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, features: jax.Array | Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Every head on `features`, or each task's head on `features[task]` (a mapping).

        Per-task features are the same features given separately to each head, so that
        one backward pass yields each task's gradient w.r.t. them (`mtl.jacobian`).
        """
        per_task = (features if isinstance(features, Mapping)
                    else {task: features for task in self.outputs})
        return {task: task_head(width, self.hidden, self.kernel_init, name=task)(per_task[task])
                for task, width in self.outputs.items()}


class TrunkAndHeads(nn.Module):
    """A trunk ('trunk') and one head per task ('heads', a `Heads`), for multi-task learning.

    `TrunkAndHeads(LeNetTrunk(), {"digit": 10, "angle": 1})` maps a batch of
    images to {"digit": logits [batch, 10], "angle": [batch, 1]}, with
    parameters {'trunk': ..., 'heads': {'digit': ..., 'angle': ...}}: shared
    and task-specific parameters are separate subtrees.

    The MultiLeNet of MGDA-UB is `TrunkAndHeads(MultiLeNetTrunk(), {"left": 10,
    "right": 10}, head_hidden=(50,))`.

    Attributes:
      trunk: a module called as `trunk(x, train)` that returns features
        [batch, F], such as those of `core.trunks`.
      heads: task name -> output width (`Heads.outputs`).
      head_hidden: hidden widths of every head (`Heads.hidden`).
    """

    trunk: nn.Module
    heads: Mapping[str, int]
    head_hidden: Sequence[int] = ()

    def __post_init__(self):
        self.heads = task_outputs(self.heads, "TrunkAndHeads")
        self.head_hidden = tuple(self.head_hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> dict[str, jax.Array]:
        return Heads(self.heads, hidden=self.head_hidden, name="heads")(self.trunk(x, train))


class MLP(nn.Module):
    """A ReLU multi-layer perceptron: an `MLPTrunk` ('trunk') and a Dense output layer ('head').

    The sinusoid network of Finn et al. (2017) is `MLP(hidden=(40, 40), outputs=1)`;
    their Omniglot MLP is `MLP(hidden=(256, 128, 64, 64), outputs=ways,
    batch_norm=True)` on flattened images.

    Attributes:
      hidden: widths of the hidden layers.
      outputs: width of the output layer.
      batch_norm: whether to normalise each hidden layer.
      bn_mode: batch-norm mode when `batch_norm`.
      bn_fast_variance: `BatchNorm.fast_variance`.
      bn_scale: `BatchNorm.use_scale`.
      bn_epsilon: `BatchNorm.epsilon`.
      kernel_init: initialiser of every kernel, hidden and output.
      head_init: initialiser of the output layer's kernel (default: `kernel_init`).
      dropout_rate: `MLPTrunk.dropout_rate`.
    """

    hidden: Sequence[int] = (40, 40)
    outputs: int = 1
    batch_norm: bool = False
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    bn_scale: bool = True
    bn_epsilon: float = 1e-5
    kernel_init: Callable = nn.initializers.lecun_normal()
    head_init: Callable | None = None
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        features = MLPTrunk(hidden=self.hidden, batch_norm=self.batch_norm,
                            kernel_init=self.kernel_init, dropout_rate=self.dropout_rate,
                            **bn_options(self), name="trunk")(x, train)
        head_init = self.kernel_init if self.head_init is None else self.head_init
        return nn.Dense(self.outputs, kernel_init=head_init, name="head")(features)


class Conv4(nn.Module):
    """Finn et al.'s (2017) network: a `Conv4Trunk` ('trunk') and a Dense output layer ('head').

    Attributes:
      outputs: number of classes (ways).
      filters: `Conv4Trunk.filters`.
      max_pool: `Conv4Trunk.max_pool`.
      spatial_pool: `Conv4Trunk.spatial_pool`.
      bn_mode: batch-norm mode (`BN_MODES`).
      bn_fast_variance: `BatchNorm.fast_variance`.
      bn_scale: `BatchNorm.use_scale`.
      bn_epsilon: `BatchNorm.epsilon`.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: `Conv4Trunk.dropout_rate`.
      head_init: initialiser of the output layer's kernel (`head_initializer`).
    """

    outputs: int
    filters: int = 64
    max_pool: bool = False
    spatial_pool: str = "mean"
    bn_mode: str = "transductive"
    bn_fast_variance: bool = True
    bn_scale: bool = True
    bn_epsilon: float = 1e-5
    conv_impl: str = "xla"
    dropout_rate: float = 0.0
    head_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        features = Conv4Trunk(filters=self.filters, max_pool=self.max_pool,
                              spatial_pool=self.spatial_pool, conv_impl=self.conv_impl,
                              dropout_rate=self.dropout_rate, **bn_options(self),
                              name="trunk")(x, train)
        return nn.Dense(self.outputs, kernel_init=self.head_init, name="head")(features)


def omniglot_conv4(ways: int, bn_mode: str = "transductive", conv_impl: str = "xla",
                   spatial_pool: str = "mean", bn_fast_variance: bool = True,
                   **options) -> Conv4:
    """Finn et al.'s Omniglot network: 4 x [conv 3x3/2, 64, BN, ReLU] on 28x28.

    `options` are further `Conv4` attributes (e.g. `bn_scale`, `bn_epsilon`, `head_init`).
    """
    return Conv4(outputs=ways, filters=64, max_pool=False, spatial_pool=spatial_pool,
                 bn_mode=bn_mode, bn_fast_variance=bn_fast_variance, conv_impl=conv_impl,
                 **options)


def miniimagenet_conv4(ways: int, bn_mode: str = "transductive", conv_impl: str = "xla",
                       **options) -> Conv4:
    """Finn et al.'s mini-ImageNet network: 4 x [conv 3x3, 32, BN, ReLU, max-pool 2] on 84x84.

    `options` are further `Conv4` attributes (e.g. `bn_fast_variance`, `head_init`).
    """
    return Conv4(outputs=ways, filters=32, max_pool=True, spatial_pool="flatten",
                 bn_mode=bn_mode, conv_impl=conv_impl, **options)


def sinusoid_mlp() -> MLP:
    """Finn et al.'s sinusoid regression network: 1-40-40-1 ReLU.

    Weights start from a truncated normal with standard deviation 0.01 and
    biases from zero, as in the reference code (cbfinn/maml maml.py
    `construct_fc_weights`).
    """
    return MLP(hidden=(40, 40), outputs=1,
               kernel_init=nn.initializers.truncated_normal(stddev=0.01))



class MLPHead(nn.Module):
    """A task head with ReLU hidden layers: 'dense0', ..., then a linear 'out'.

    The MultiLeNet head of MGDA-UB (isl-org/MultiObjectiveOptimization
    `MultiLeNetO`: fc 50 -> ReLU -> fc 10, log-softmax left to the loss) is
    `MLPHead(hidden=(50,), outputs=10)`. With `hidden=()` it is one Dense
    named 'out'; `Heads` uses a Dense named by the task instead.

    Attributes:
      hidden: widths of the hidden layers.
      outputs: width of the output layer.
      kernel_init: initialiser of every kernel.
    """

    hidden: Sequence[int]
    outputs: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, kernel_init=self.kernel_init, name=f"dense{i}")(x))
        return nn.Dense(self.outputs, kernel_init=self.kernel_init, name="out")(x)


def task_head(outputs: int, hidden: Sequence[int] = (),
              kernel_init: Callable = nn.initializers.lecun_normal(),
              name: str | None = None) -> nn.Module:
    """The head of one task as `Heads` builds it: a Dense, or an `MLPHead` when `hidden`.

    Architectures that give each task its own features (`mtl.architectures`)
    call this to lay out their heads' parameters exactly as `Heads` does.

    Args:
      outputs: output width.
      hidden: hidden widths; () for a single Dense.
      kernel_init: initialiser of every kernel.
      name: the module's name (the task's name in `Heads`).

    Returns:
      A module called as `head(features)`; build it inside the calling
      module's compact method, which becomes its parent.
    """
    if hidden:
        return MLPHead(tuple(hidden), outputs, kernel_init=kernel_init, name=name)
    return nn.Dense(outputs, kernel_init=kernel_init, name=name)
