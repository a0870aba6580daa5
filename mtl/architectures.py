"""Multi-task architectures beyond hard parameter sharing: cross-stitch, hierarchical, MMoE.

Hard parameter sharing (one trunk, one head per task) is
`core.networks.TrunkAndHeads`. The modules here share less rigidly:

* `CrossStitch` (Misra et al., 2016): one column of blocks per task, mixed
  after every block by a learned k x k matrix.
* `Hierarchical` (Søgaard & Goldberg, 2016; Hashimoto et al., 2017): one
  stack of blocks, each task supervised at its own depth, and a lower task's
  prediction fed to the next block.
* `MMoE` (Ma et al., 2018): shared experts mixed per task by a softmax gate.

Like `TrunkAndHeads`, each is called as `model.apply(variables, x,
train=...)` on [batch, ...] inputs and returns {task: output}; dropout (off
at rate 0, the default) needs `rngs={"dropout": key}` when `train=True`. The
heads are laid out as `Heads` lays them out: 'heads/<task>/kernel' for a
linear head, 'heads/<task>/dense0/kernel', ..., 'heads/<task>/out/kernel' with
hidden layers. Parameter paths are part of the API (transfer learning freezes
and loads by path); each class lists its own.
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from core.networks import task_outputs, task_head
from core.trunks import Conv2D, MLPTrunk, max_pool2x2

FEED_KINDS = ("classification", "regression")


def _dropout(x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Dropout named 'dropout'; no layer at all when `rate` is 0."""
    if rate > 0:
        x = nn.Dropout(rate, deterministic=not train, name="dropout")(x)
    return x


class DenseBlock(nn.Module):
    """A dense block: 'dense' -> ReLU -> dropout, on the input flattened to [batch, -1].

    Attributes:
      features: output width.
      dropout_rate: dropout after the ReLU.
    """

    features: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = nn.Dense(self.features, name="dense")(x.reshape(x.shape[0], -1))
        return _dropout(nn.relu(x), self.dropout_rate, train)


class ConvBlock(nn.Module):
    """A convolutional block: `Conv2D` 'conv' -> ReLU -> optional 2x2 max-pool -> dropout.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      padding: 'SAME' or 'VALID' (`Conv2D.padding`).
      max_pool: 2x2 max-pool (`core.trunks.max_pool2x2`) after the ReLU.
      conv_impl: convolution implementation (`core.conv.CONV_IMPLS`).
      dropout_rate: dropout at the end of the block.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    padding: str = "SAME"
    max_pool: bool = True
    conv_impl: str = "xla"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = Conv2D(self.features, tuple(self.kernel_size), impl=self.conv_impl,
                   padding=self.padding, name="conv")(x)
        x = nn.relu(x)
        if self.max_pool:
            x = max_pool2x2(x)
        return _dropout(x, self.dropout_rate, train)


class _TaskHeads(nn.Module):
    """The heads of `Heads`, called one task at a time on that task's own features."""

    outputs: Mapping[str, int]
    hidden: Sequence[int] = ()

    @nn.compact
    def __call__(self, features: jax.Array, task: str) -> jax.Array:
        return task_head(self.outputs[task], self.hidden, name=task)(features)


def balanced_stitch_init(self_weight: float = 0.9):
    """Initialiser of a cross-stitch matrix: α_ii = self_weight, α_ij = (1 - self_weight)/(k - 1).

    Every row sums to 1, so at initialisation each column keeps `self_weight`
    of its own features and takes the rest evenly from the others; (0.9, 0.1)
    for two tasks is the initialisation Misra et al. (2016) found best. The
    shape is [k, k] or [k, k, C] (the same matrix for every channel).
    """

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        del key  # deterministic
        k = shape[0]
        alpha = jnp.full((k, k), (1.0 - self_weight) / max(k - 1, 1), dtype)
        alpha = alpha.at[jnp.arange(k), jnp.arange(k)].set(self_weight)
        return jnp.broadcast_to(alpha.reshape((k, k) + (1,) * (len(shape) - 2)), shape)

    return init


class CrossStitchUnit(nn.Module):
    """Mixes k same-shaped task features: x̃_i = Σ_j α_ij x_j (Misra et al. 2016, Eq. 1).

    The parameter 'alpha' is [k, k] (one matrix for every location and
    channel, as in the paper) or, with `channel_wise`, [k, k, C] (one matrix
    per channel of the last axis, a finer variant). LibMTL's `Cross_stitch`
    keeps one [k, k] matrix per ResNet stage, initialised to ones.

    Attributes:
      self_weight: α_ii at initialisation (`balanced_stitch_init`).
      channel_wise: one matrix per channel.
    """

    self_weight: float = 0.9
    channel_wise: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
        stacked = jnp.stack(xs)  # [k, batch, ..., C]
        k = stacked.shape[0]
        shape = (k, k, stacked.shape[-1]) if self.channel_wise else (k, k)
        alpha = self.param("alpha", balanced_stitch_init(self.self_weight), shape)
        if self.channel_wise:
            mixed = jnp.einsum("ijc,j...c->i...c", alpha, stacked)
        else:
            mixed = jnp.einsum("ij,j...->i...", alpha, stacked)
        return list(mixed)


class _Column(nn.Module):
    """One task's copy of the blocks, called one block at a time ('block{b}')."""

    blocks: Sequence[nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, block: int, train: bool) -> jax.Array:
        return self.blocks[block].copy(name=f"block{block}")(x, train)


class _Columns(nn.Module):
    """The columns of every task ('<task>'), advanced together by one block."""

    blocks: Sequence[nn.Module]
    tasks: Sequence[str]

    @nn.compact
    def __call__(self, xs: Mapping[str, jax.Array], block: int,
                 train: bool) -> dict[str, jax.Array]:
        return {task: _Column(self.blocks, name=task)(xs[task], block, train)
                for task in self.tasks}


class CrossStitch(nn.Module):
    """Cross-stitch network (Misra et al., 2016): one column per task, stitched after each block.

    Every task has its own copy of `blocks`; all columns start from the same
    input. After block b the k columns' outputs are mixed by the unit
    'stitch{b}' (`CrossStitchUnit`), x̃_i = Σ_j α_ij x_j, and each task's
    head reads its own column's last output. With α = identity the columns
    are independent single-task networks; with α = all 1/k they share
    everything.

    The paper trains α with a larger learning rate than the network; the
    parameters to select for that (optax.multi_transform) are
    'stitch{b}/alpha'.

    Parameter paths: 'columns/<task>/block{b}/...' (the block's own layout,
    e.g. 'columns/left/block0/conv/kernel' for a `ConvBlock`),
    'stitch{b}/alpha', 'heads/<task>/...'.

    Attributes:
      blocks: block templates, e.g. `(ConvBlock(10), ConvBlock(20), DenseBlock(50))`;
        any module called as `block(x, train)`, copied once per task. Every
        column must give same-shaped outputs after each block (true for copies).
      outputs: task name -> output width (`Heads.outputs`); at least two tasks.
      head_hidden: hidden widths of every head (`Heads.hidden`).
      self_weight: α_ii at initialisation; α_ij = (1 - self_weight) / (k - 1).
      channel_wise: one α matrix per channel (`CrossStitchUnit.channel_wise`).
    """

    blocks: Sequence[nn.Module]
    outputs: Mapping[str, int]
    head_hidden: Sequence[int] = ()
    self_weight: float = 0.9
    channel_wise: bool = False

    def __post_init__(self):
        self.outputs = task_outputs(self.outputs, "CrossStitch")
        if len(self.outputs) < 2:
            raise ValueError(f"CrossStitch needs at least two tasks, got {dict(self.outputs)!r}")
        self.blocks = tuple(self.blocks)
        if not self.blocks or not all(isinstance(b, nn.Module) for b in self.blocks):
            raise ValueError("CrossStitch needs one or more block modules (instances, e.g. "
                             f"DenseBlock(64)), got {self.blocks!r}")
        self.head_hidden = tuple(self.head_hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> dict[str, jax.Array]:
        tasks = tuple(self.outputs)
        columns = _Columns(self.blocks, tasks, name="columns")
        xs = {task: x for task in tasks}
        for b in range(len(self.blocks)):
            xs = columns(xs, b, train)
            stitch = CrossStitchUnit(self.self_weight, self.channel_wise, name=f"stitch{b}")
            xs = dict(zip(tasks, stitch([xs[task] for task in tasks])))
        heads = _TaskHeads(self.outputs, self.head_hidden, name="heads")
        return {task: heads(xs[task].reshape(x.shape[0], -1), task) for task in tasks}


class Hierarchical(nn.Module):
    """Hierarchical supervision: each task's head at its own depth of one stack of dense blocks.

    Lower-level tasks are supervised at lower blocks (Søgaard & Goldberg,
    2016), and a lower task's prediction is fed to the next level (Hashimoto
    et al., 2017): the input of block b + 1 is the output h_b of block b
    concatenated with the fed outputs of the tasks whose heads read h_b,

        h_{b+1} = block_{b+1}([h_b, feed(head_t(h_b)) for t at depth b]).

    A classification task feeds its softmax probabilities p, a regression
    task its raw outputs. Hashimoto et al. feed the label embedding
    Σ_j p_j ℓ(j); concatenating p before the next Dense is the same with the
    ℓ(j) learned as rows of that Dense's kernel. With `feed_stop_gradient`
    the fed values are constants for the blocks above: a higher task's loss
    then does not train the lower task's head.

    Parameter paths: 'trunk/...' (with a trunk), 'block{b}/dense/kernel',
    'heads/<task>/...'.

    Attributes:
      widths: width of each dense block (`DenseBlock`), from the bottom.
      outputs: task name -> output width (`Heads.outputs`).
      task_depth: task name -> index of the block whose output its head reads;
        every task of `outputs` needs one.
      task_kinds: task name -> 'classification' (feeds softmax probabilities)
        or 'regression' (feeds raw values); tasks not listed are
        classification. A one-output task that feeds a block must be
        'regression' (the softmax of one logit is constant; ValueError).
      feed_stop_gradient: feed the lower heads' outputs through stop_gradient.
      trunk: optional module applied first as `trunk(x, train)` (e.g. a conv
        trunk); its output is flattened for the first block.
      head_hidden: hidden widths of every head (`Heads.hidden`).
      dropout_rate: `DenseBlock.dropout_rate` of every block.
    """

    widths: Sequence[int]
    outputs: Mapping[str, int]
    task_depth: Mapping[str, int]
    task_kinds: Mapping[str, str] = FrozenDict()
    feed_stop_gradient: bool = False
    trunk: nn.Module | None = None
    head_hidden: Sequence[int] = ()
    dropout_rate: float = 0.0

    def __post_init__(self):
        self.outputs = task_outputs(self.outputs, "Hierarchical")
        self.widths = tuple(self.widths)
        self.head_hidden = tuple(self.head_hidden)
        self.task_depth = FrozenDict(self.task_depth)
        self.task_kinds = FrozenDict(self.task_kinds)
        self._check_tasks()
        super().__post_init__()

    def _check_tasks(self):
        if set(self.task_depth) != set(self.outputs):
            raise ValueError(f"Hierarchical: task_depth must give a depth for exactly the tasks "
                             f"{sorted(self.outputs)}, got {dict(self.task_depth)!r}")
        for task, depth in self.task_depth.items():
            if not isinstance(depth, int) or not 0 <= depth < len(self.widths):
                raise ValueError(f"Hierarchical: depth {depth!r} of task {task!r} is not a "
                                 f"block index in [0, {len(self.widths)})")
        for task, kind in self.task_kinds.items():
            if task not in self.outputs or kind not in FEED_KINDS:
                raise ValueError(f"Hierarchical: task_kinds[{task!r}] = {kind!r}; expected a "
                                 f"task of outputs and a kind in {FEED_KINDS}")
        for task, width in self.outputs.items():
            feeds = self.task_depth[task] < len(self.widths) - 1
            if feeds and width == 1 and self.task_kinds.get(task) != "regression":
                raise ValueError(f"Hierarchical: task {task!r} has one output and feeds the next "
                                 "block as a classification task, whose softmax is constant; "
                                 "declare it 'regression' in task_kinds")

    def _feed(self, task: str, output: jax.Array) -> jax.Array:
        """What a head passes up: softmax probabilities or raw values, maybe stop-gradient."""
        if self.task_kinds.get(task, "classification") == "classification":
            output = nn.softmax(output)
        return jax.lax.stop_gradient(output) if self.feed_stop_gradient else output

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> dict[str, jax.Array]:
        h = self.trunk(x, train) if self.trunk is not None else x
        h = h.reshape(h.shape[0], -1)
        heads = _TaskHeads(self.outputs, self.head_hidden, name="heads")
        outs, fed = {}, []
        for b, width in enumerate(self.widths):
            h = DenseBlock(width, self.dropout_rate, name=f"block{b}")(
                jnp.concatenate([h, *fed], axis=-1), train)
            fed = []
            for task in self.outputs:
                if self.task_depth[task] == b:
                    outs[task] = heads(h, task)
                    fed.append(self._feed(task, outs[task]))
        return {task: outs[task] for task in self.outputs}


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., 2018): shared experts, one softmax gate per task.

    With features x (the input, or the output of `trunk`), n experts f_e and
    a gate per task t (Ma et al. 2018, Eqs. 5-6):

        g_t(x) = softmax(W_t x),   y_t = head_t(Σ_e g_t(x)_e f_e(x)).

    The gate reads x flattened and has no bias, as in the paper (LibMTL's
    gate has one). With one expert every gate is 1 and the network is
    shared-bottom hard sharing. Each forward pass sows every task's gate
    weights [batch, n] as 'intermediates/gates_<task>' (retrieve with
    `apply(..., mutable=["intermediates"])`).

    Parameter paths: 'trunk/...' (with a trunk), 'expert{e}/...' (an
    `MLPTrunk`'s 'expert{e}/dense{i}/kernel' by default), 'gate_<task>/kernel',
    'heads/<task>/...'.

    Attributes:
      outputs: task name -> output width (`Heads.outputs`).
      num_experts: number of shared experts.
      expert_hidden: widths of the default experts, `MLPTrunk(expert_hidden)`.
      expert: an expert template instead, any module called as
        `expert(x, train)` (e.g. a `ConvBlock` or a trunk); copied once per
        expert. The mixed expert outputs are flattened for the heads.
      trunk: optional shared module applied first as `trunk(x, train)`.
      tower_hidden: hidden widths of every task's tower (`Heads.hidden`).
      dropout_rate: `MLPTrunk.dropout_rate` of the default experts.
    """

    outputs: Mapping[str, int]
    num_experts: int
    expert_hidden: Sequence[int] = (64,)
    expert: nn.Module | None = None
    trunk: nn.Module | None = None
    tower_hidden: Sequence[int] = ()
    dropout_rate: float = 0.0

    def __post_init__(self):
        self.outputs = task_outputs(self.outputs, "MMoE")
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"MMoE needs a positive integer num_experts, got {self.num_experts!r}")
        self.expert_hidden = tuple(self.expert_hidden)
        self.tower_hidden = tuple(self.tower_hidden)
        super().__post_init__()

    def _make_expert(self, e: int) -> nn.Module:
        if self.expert is not None:
            return self.expert.copy(name=f"expert{e}")
        return MLPTrunk(hidden=self.expert_hidden, dropout_rate=self.dropout_rate,
                        name=f"expert{e}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> dict[str, jax.Array]:
        if self.trunk is not None:
            x = self.trunk(x, train)
        experts = jnp.stack([self._make_expert(e)(x, train) for e in range(self.num_experts)],
                            axis=1)  # [batch, n, ...]
        flat = x.reshape(x.shape[0], -1)
        heads = _TaskHeads(self.outputs, self.tower_hidden, name="heads")
        outs = {}
        for task in self.outputs:
            gate = nn.softmax(nn.Dense(self.num_experts, use_bias=False,
                                       name=f"gate_{task}")(flat))  # Eq. 6
            self.sow("intermediates", f"gates_{task}", gate)
            mixed = jnp.einsum("be,be...->b...", gate, experts)  # Eq. 5
            outs[task] = heads(mixed.reshape(mixed.shape[0], -1), task)
        return outs
