"""Parameter groups for fine-tuning: freezing, per-group learning rates, layer decay, L2-SP.

A group is a name given to a set of parameter paths by ordered (pattern,
group) rules, first match wins, with the pattern rule of
`transfer.params.compile_pattern` ("trunk/block0" covers its sub-tree). Each
group has a learning rate; a rate of None or 0 freezes it:

    rules = freeze_lowest_blocks(2, ["trunk/block0", "trunk/block1", "trunk/block2"])
    labels = label_params(params, rules, default="trained")
    groups = {"frozen": None, "trained": 1e-3}
    optimizer = make_grouped_optimizer(labels, groups, optax.adam)

`make_grouped_optimizer` is one `optax.partition`: a frozen group gets
`optax.set_to_zero()`, so its parameters never move and hold no optimizer
state (no Adam moments). Masking an update does not skip computing its
gradient (optax#477); a train step that should not back-propagate into the
frozen leaves differentiates only the trainable part:

    trainable, frozen = split_trainable(params, labels, frozen_groups(groups))
    grads = jax.grad(lambda t: loss(merge(t, frozen)))(trainable)
    grads = merge(grads, jax.tree.map(jnp.zeros_like, frozen))   # the optimizer's tree

Layer-wise learning-rate decay (timm's `param_groups_layer_decay`) scales
block l of L by decay**(L - l), the head by 1 (`layerwise_lr_scales`,
`layer_decay_groups`). L2-SP (Li et al., 2018) pulls the backbone towards its
starting point and the head towards zero (`l2_sp_penalty`).

`describe_groups` gives, per path, the group, whether it is frozen and its
learning rate, for the run's transfer.json next to `transfer_params`' record.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.errors import ConfigError
from transfer.params import compile_pattern, flatten, listing, match_path, unflatten

Tree = Any
Rules = Sequence[tuple[str, str]] | Mapping[str, str]
Groups = Mapping[str, float | None]


def _rule_list(rules: Rules) -> list[tuple[str, str]]:
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    for item in items:
        if (not isinstance(item, (tuple, list)) or len(item) != 2
                or not isinstance(item[1], str) or not item[1]):
            raise ConfigError(f"a group rule is a (pattern, group name) pair, got {item!r}")
    return [(pattern, group) for pattern, group in items]


def label_params(params: Tree, rules: Rules, default: str | None = None) -> Tree:
    """The tree of group names of `params`: the first rule matching a path names its group.

    Args:
      params: the parameter tree.
      rules: ordered (pattern, group) pairs, or a dict in its order.
      default: the group of paths no rule matches; None makes them an error.

    Returns:
      A tree like `params` with a group name at every leaf.

    Raises:
      ConfigError: for a leaf no rule matches (without `default`), or a rule that
        labels no leaf (misspelt, or every path it matches is taken by an earlier rule).
    """
    compiled = [(pattern, compile_pattern(pattern), group) for pattern, group in _rule_list(rules)]
    labels, unmatched, used = {}, [], set()
    for path in flatten(params):
        index = next((i for i, (_, rx, _) in enumerate(compiled) if match_path(rx, path)), None)
        if index is None and default is None:
            unmatched.append(path)
        used.add(index)
        labels[path] = default if index is None else compiled[index][2]
    if unmatched:
        raise ConfigError(f"{len(unmatched)} parameters match no group rule: "
                          f"{listing(unmatched)}; add a rule for them or give a default group")
    idle = [f"{p!r} -> {g}" for i, (p, _, g) in enumerate(compiled) if i not in used]
    if idle:
        raise ConfigError(f"these group rules label no parameter: {listing(idle)}; check the "
                          f"pattern against the parameter paths, or an earlier rule takes them")
    return unflatten(labels)


def _check_groups(groups: Groups) -> None:
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"groups must map group names to learning rates, got {groups!r}")
    for group, lr in groups.items():
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                               or not np.isfinite(lr) or lr < 0):
            raise ConfigError(f"group {group!r} has learning rate {lr!r}; give a number >= 0, "
                              f"or None (or 0) to freeze it")


def frozen_groups(groups: Groups) -> frozenset[str]:
    """The groups that are frozen: learning rate None or 0."""
    _check_groups(groups)
    return frozenset(group for group, lr in groups.items() if not lr)


def _check_labels(labels: Tree, groups: Groups) -> set[str]:
    """The labels present, after checking each has a group (a group may label nothing)."""
    _check_groups(groups)
    present = set(flatten(labels).values())
    if present - set(groups):
        raise ConfigError(f"parameters are labelled with groups that have no learning rate: "
                          f"{listing(sorted(present - set(groups)))}; add them to the groups")
    return present


def make_grouped_optimizer(labels: Tree, groups: Groups,
                           base_optimizer_fn: Callable[[float], optax.GradientTransformation]
                           ) -> optax.GradientTransformation:
    """One optimizer over all parameters: `base_optimizer_fn(lr)` per group, frozen groups still.

    Args:
      labels: the group tree of `label_params`.
      groups: {group: learning rate}; None or 0 freezes the group
        (`optax.set_to_zero()`: zero updates, no state).
      base_optimizer_fn: the optimizer of one group from its learning rate,
        e.g. `optax.adam` or `lambda lr: optax.sgd(optax.cosine_decay_schedule(lr, n))`.

    Returns:
      An `optax.partition` over the groups, for the full parameter tree.

    Raises:
      ConfigError: for a label without a group, or a negative or non-finite
        learning rate. A group that labels nothing is allowed (e.g. no frozen blocks).
    """
    _check_labels(labels, groups)
    if not callable(base_optimizer_fn):
        raise ConfigError(f"base_optimizer_fn must be callable, got {base_optimizer_fn!r}")
    transforms = {group: optax.set_to_zero() if not lr else base_optimizer_fn(lr)
                  for group, lr in groups.items()}
    return optax.partition(transforms, labels)


def split_trainable(params: Tree, labels: Tree, frozen: Iterable[str]) -> tuple[dict, dict]:
    """(trainable, frozen): `params` split by group; each tree lacks the other's leaves."""
    if isinstance(frozen, str):
        raise ConfigError(f"frozen must be a collection of group names, got the string {frozen!r}")
    frozen = frozenset(frozen)
    flat_labels = flatten(labels)
    flat = flatten(params)
    if set(flat) != set(flat_labels):
        raise ConfigError(f"labels do not fit the parameters: "
                          f"{listing(sorted(set(flat) ^ set(flat_labels)))}; label this tree")
    parts = ({}, {})
    for path, leaf in flat.items():
        parts[flat_labels[path] in frozen][path] = leaf
    return unflatten(parts[0]), unflatten(parts[1])


def merge(first: Tree, second: Tree) -> dict:
    """The union of two trees with no path in common (the inverse of `split_trainable`)."""
    a, b = flatten(first), flatten(second)
    if a.keys() & b.keys():
        raise ConfigError(f"cannot merge trees that share paths: "
                          f"{listing(sorted(a.keys() & b.keys()))}")
    return unflatten({**a, **b})


def freeze_lowest_blocks(n: int, block_order: Sequence[str],
                         group: str = "frozen") -> list[tuple[str, str]]:
    """Rules putting the `n` lowest blocks of `block_order` (lowest first) in `group`.

    The blocks are patterns ("trunk/block0" covers its sub-tree); put the rules
    before the others, since the first matching rule wins.
    """
    _check_blocks(block_order)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(block_order):
        raise ConfigError(f"cannot freeze {n!r} blocks: give an integer from 0 to "
                          f"{len(block_order)} (the number of blocks)")
    return [(block, group) for block in block_order[:n]]


def _check_blocks(block_order: Sequence[str]) -> None:
    if isinstance(block_order, str) or not all(isinstance(b, str) and b for b in block_order):
        raise ConfigError(f"block_order must be a list of block paths, lowest first, got "
                          f"{block_order!r}")
    if len(set(block_order)) != len(block_order):
        raise ConfigError(f"block_order names a block twice: {list(block_order)}")


def layerwise_lr_scales(block_order: Sequence[str], decay: float) -> dict[str, float]:
    """{block: decay**(L - l)} for block l of the L in `block_order` (lowest first).

    The head (not in `block_order`) is level L, scale 1, so the top block gets
    `decay` and the lowest `decay**L`: lower, more generic features move less.
    """
    _check_blocks(block_order)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ConfigError(f"layer decay must be in (0, 1], got {decay!r}")
    depth = len(block_order)
    return {block: float(decay) ** (depth - level) for level, block in enumerate(block_order)}


def layer_decay_groups(block_order: Sequence[str], base_lr: float, decay: float = 1.0,
                       num_frozen: int = 0, head_group: str = "head"
                       ) -> tuple[list[tuple[str, str]], dict[str, float | None]]:
    """(rules, groups) of layer-wise decay: one group per block, named by it, the rest in the head.

    Block l gets `base_lr * decay**(L - l)`, the `num_frozen` lowest blocks are
    frozen (None), and every path under no block is in `head_group` at
    `base_lr`: label with `label_params(params, rules, default=head_group)`.
    """
    if head_group in block_order:
        raise ConfigError(f"the head group {head_group!r} is also a block; rename it")
    _check_groups({head_group: base_lr})
    scales = layerwise_lr_scales(block_order, decay)
    frozen = {block for block, _ in freeze_lowest_blocks(num_frozen, block_order)}
    groups = {block: None if block in frozen or not base_lr else base_lr * scale
              for block, scale in scales.items()}
    return [(block, block) for block in block_order], {**groups, head_group: base_lr}


def group_mask(labels: Tree, names: Iterable[str]) -> Tree:
    """A tree of bools like `labels`: True where the leaf's group is one of `names`."""
    names = frozenset(names)
    return jax.tree.map(lambda label: label in names, labels)


def l2_sp_penalty(params: Tree, start_params: Tree, backbone: Tree, alpha: float,
                  beta: float) -> jax.Array:
    """L2-SP: (alpha/2)·||θ_b − θ⁰_b||² + (beta/2)·||θ_h||² (Li et al., 2018).

    The backbone b is pulled towards the weights training started from, not
    towards zero (which would forget the transferred features); the new head h
    has no starting point worth keeping and gets plain weight decay. Pure and
    jittable; its gradient is alpha·(θ − θ⁰) on the backbone and beta·θ on the head.

    Args:
      params: θ, the current parameters.
      start_params: θ⁰, a tree like `params` (the output of `transfer_params`);
        its head leaves are not read.
      backbone: a tree of bools like `params` (`group_mask`), True on the backbone.
      alpha: strength of the pull towards θ⁰ on the backbone.
      beta: strength of the weight decay on the head.

    Returns:
      The scalar penalty, in float32 at least.
    """

    def term(theta, theta0, is_backbone):
        # One quadratic per leaf, anchored at θ⁰ (backbone) or 0 (head); `where`, not a
        # product, so a head's θ⁰ is never read, even when it is not finite.
        anchor = jnp.where(is_backbone, theta0, jnp.zeros_like(theta))
        strength = jnp.where(is_backbone, alpha, beta) / 2
        return strength * jnp.sum(jnp.square(theta.astype(jnp.float32) - anchor))

    terms = jax.tree.map(term, params, start_params, backbone)
    return sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def describe_groups(labels: Tree, groups: Groups) -> dict[str, dict[str, Any]]:
    """{path: {'group', 'frozen', 'learning_rate'}} (JSON-serialisable; rate None when frozen)."""
    _check_labels(labels, groups)
    return {path: {"group": group, "frozen": not groups[group],
                   "learning_rate": float(groups[group]) if groups[group] else None}
            for path, group in flatten(labels).items()}
