"""What each transfer strategy loads and trains: initial parameters, groups, the record.

A strategy is two decisions about the parameters of the target network (a
trunk of named blocks and a fresh head, `transfer.networks`):

    strategy             initial parameters                 what trains
    scratch              fresh init, no source              everything at lr
    structure            fresh init, shapes checked against everything at lr
                         the source (the architecture
                         without its weights)
    feature_extraction   trunk loaded, head fresh           the head only
    finetune             trunk loaded, head fresh           per-block groups (below)
    keep_blocks          the kept lowest blocks loaded      per-block groups
    lp_ft                trunk loaded, head fresh           the head for lp_steps,
                                                            then per-block groups
    l2_sp                trunk loaded, head fresh           per-block groups, with
                                                            the L2-SP penalty
    distill              fresh init, no source; a teacher   everything at lr
                         run's logits in the loss
                         (`transfer.distillation`)
    source_only          fresh init, no source; tested on   everything at lr
                         a target domain too
                         (`transfer.domain_adaptation`)
    dann                 fresh init, and a fresh domain     everything at lr
                         classifier (`transfer.dann`)

Per-block groups: the `freeze_blocks` lowest trunk blocks are frozen; trunk
block l of L trains at lr * trunk_lr_scale * layer_decay**(L - l) (timm's
layer decay; a rate of 0 freezes); the head trains at lr. Frozen groups get
no gradient and no optimizer state (`transfer.param_groups`).

Loading is `transfer.params.transfer_params`, strict both ways: the head is
always fresh (`dont_load`, or zeros with `zero_init_head`), the blocks a cut
network drops are ignored in the source, and every other leaf must load. The
per-path record it returns, with each path's group, frozen flag and learning
rate, is the run's transfer.json (`transfer_record`).
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from core import run_dir
from core.errors import ConfigError
from transfer import param_groups as pg
from transfer.params import (compile_pattern, flatten, match_path, read_source,
                             transfer_params, unflatten)

STRATEGIES = ("scratch", "structure", "feature_extraction", "finetune", "keep_blocks",
              "lp_ft", "l2_sp", "distill", "source_only", "dann")
FRESH = ("scratch", "distill", "source_only", "dann")
DOMAIN_ADAPTATION = ("source_only", "dann")
LOADING = ("feature_extraction", "finetune", "keep_blocks", "lp_ft", "l2_sp")
PER_BLOCK = ("finetune", "keep_blocks", "lp_ft", "l2_sp")
HEAD = "head"
TRUNK = "trunk"
RECORD_FILE = "transfer.json"
_SOURCE_CONFIG_KEYS = ("dataset", "classes", "network", "strategy", "train_per_class", "seed",
                       "augment")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the pretrained parameters come from.

    Attributes:
      path: a run directory of this library, or an .npz file (`transfer.params.save_npz`).
      which: 'best' or 'latest' checkpoint of a run directory (None for an .npz).
    """

    path: str
    which: str | None

    def describe(self) -> dict[str, Any]:
        """The source as transfer.json records it, with the source run's own config."""
        entry: dict[str, Any] = {"path": self.path, "which": self.which,
                                 "kind": "npz" if self.which is None else "run_directory"}
        config = run_dir.read_run_config(self.path) if self.which is not None else None
        if config:
            entry["config"] = {k: config[k] for k in _SOURCE_CONFIG_KEYS if k in config}
        return entry


@dataclasses.dataclass(frozen=True)
class Initial:
    """The target's initial parameters and where each leaf came from.

    Attributes:
      params: the parameter tree training starts from.
      record: {path: {'source': source path or None, 'init': 'loaded' | 'fresh' |
        'zeros'}} (structure adds 'shape_of', the source path it was checked against).
      ignored_source: source paths deliberately left unused.
    """

    params: dict
    record: dict[str, dict[str, Any]]
    ignored_source: list[str]

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(p for p, r in self.record.items() if r["init"] == "loaded")


@dataclasses.dataclass(frozen=True)
class Groups:
    """A labelling of the parameters and each group's learning rate (None: frozen)."""

    labels: dict
    rates: dict[str, float | None]

    @property
    def frozen(self) -> frozenset[str]:
        return pg.frozen_groups(self.rates)


def _zeroed_head(params: dict, zero_init_head: bool) -> tuple[dict, dict]:
    """(params, record) of a fresh init, the head zeroed with `zero_init_head`."""
    flat, record = dict(flatten(params)), {}
    for path, leaf in flat.items():
        zero = zero_init_head and path.startswith(HEAD + "/")
        flat[path] = jnp.zeros_like(leaf) if zero else leaf
        record[path] = {"source": None, "init": "zeros" if zero else "fresh"}
    return unflatten(flat), record


def _dropped_blocks(source_params: dict, dropped: Sequence[str]) -> tuple[str, ...]:
    """The trunk blocks a cut network drops that the source has (they are ignored there)."""
    paths = list(flatten(source_params))
    patterns = tuple(f"{TRUNK}/{block}" for block in dropped)
    return tuple(p for p in patterns if any(match_path(compile_pattern(p), s) for s in paths))


def initial_params(strategy: str, fresh: dict, source: Source | None, *,
                   dropped_blocks: Sequence[str] = (), dont_load: Sequence[str] = (),
                   ignore_source: Sequence[str] = (), zero_init_head: bool = False) -> Initial:
    """The parameters training starts from, by `strategy` (see the module docstring).

    Args:
      strategy: one of `STRATEGIES`.
      fresh: the target network's freshly initialised parameters.
      source: the pretrained parameters' origin; None for the `FRESH` strategies.
      dropped_blocks: names of the trunk blocks the target does not keep.
      dont_load: further target patterns kept at their fresh init.
      ignore_source: further source patterns deliberately unused.
      zero_init_head: the head starts at zeros instead of a fresh init.

    Raises:
      ConfigError: from `transfer_params` when the source does not fit.
      DataError: when the source is missing or unreadable.
    """
    if strategy in FRESH:
        params, record = _zeroed_head(fresh, zero_init_head)
        return Initial(params, record, [])
    tree = read_source(source.path, source.which or "best")
    head_rule = {"zero_init": (HEAD,)} if zero_init_head else {"dont_load": (HEAD,)}
    loaded, _, report = transfer_params(
        fresh, tree["params"], target_model_state={}, source_model_state=tree["model_state"],
        dont_load=tuple(head_rule.get("dont_load", ())) + tuple(dont_load),
        zero_init=head_rule.get("zero_init", ()),
        ignore_source=_dropped_blocks(tree["params"], dropped_blocks) + tuple(ignore_source))
    ignored = report["ignored_source"]["params"] + report["ignored_source"]["model_state"]
    if strategy != "structure":
        return Initial(loaded, report["params"], ignored)
    params, record = _zeroed_head(fresh, zero_init_head)
    for path, entry in report["params"].items():
        if entry["source"] is not None:
            record[path]["shape_of"] = entry["source"]
    return Initial(params, record, ignored)


def head_only_groups(params: dict, learning_rate: float) -> Groups:
    """The trunk frozen, the head at `learning_rate` (feature extraction, LP-FT's probe)."""
    labels = pg.label_params(params, [(TRUNK, TRUNK)], default=HEAD)
    return Groups(labels, {TRUNK: None, HEAD: learning_rate})


def per_block_groups(params: dict, blocks: Sequence[str], learning_rate: float, *,
                     freeze_blocks: int = 0, trunk_lr_scale: float = 1.0,
                     layer_decay: float = 1.0) -> Groups:
    """One group per trunk block (named by it) and the head (see the module docstring).

    Raises:
      ConfigError: for more frozen blocks than the trunk has, or a layer decay
        outside (0, 1].
    """
    if not 0 <= freeze_blocks <= len(blocks):
        raise ConfigError(f"--freeze_blocks={freeze_blocks} but the trunk keeps "
                          f"{len(blocks)} blocks ({', '.join(blocks)})")
    scales = pg.layerwise_lr_scales(list(blocks), layer_decay)
    frozen = {name for name, _ in pg.freeze_lowest_blocks(freeze_blocks, list(blocks))}
    rates: dict[str, float | None] = {}
    for block in blocks:
        rate = learning_rate * trunk_lr_scale * scales[block]
        rates[block] = None if block in frozen or not rate else rate
    labels = pg.label_params(params, [(f"{TRUNK}/{b}", b) for b in blocks], default=HEAD)
    return Groups(labels, {**rates, HEAD: learning_rate})


def backbone_mask(initial: Initial) -> dict:
    """L2-SP's backbone: True on the leaves loaded from the source (pulled towards them)."""
    return unflatten({path: path in initial.loaded for path in initial.record})


def transfer_record(strategy: str, source: Source | None, initial: Initial, groups: Groups,
                    probe: Groups | None = None, l2_sp: tuple[float, float] | None = None,
                    **details: Any) -> dict[str, Any]:
    """The content of transfer.json: the strategy, the source, and every parameter path.

    Each path has 'init' and 'source' (from `initial`), 'group', 'frozen' and
    'learning_rate' (of `groups`; for LP-FT the fine-tuning phase, with the
    probing phase under 'probe_phase'), and for L2-SP its anchor and strength.
    """
    described = pg.describe_groups(groups.labels, groups.rates)
    probed = pg.describe_groups(probe.labels, probe.rates) if probe else {}
    parameters = {}
    for path, entry in initial.record.items():
        row = dict(entry, **described[path])
        if probe:
            row["probe_phase"] = {k: probed[path][k] for k in ("frozen", "learning_rate")}
        if l2_sp:
            loaded = path in initial.loaded
            row["l2_sp"] = {"anchor": "source" if loaded else "zero",
                            "strength": l2_sp[0] if loaded else l2_sp[1]}
        parameters[path] = row
    return {"strategy": strategy, "source": source.describe() if source else None,
            **details, "parameters": parameters, "ignored_source": initial.ignored_source}


def write_record(record: dict[str, Any], workdir: str, results: dict[str, Any]) -> None:
    """Writes transfer.json (a `Program.finish`: after results.json)."""
    del results
    run_dir.atomic_write_text(os.path.join(workdir, RECORD_FILE), run_dir.to_json(record))


def source_from(source_workdir: str | None, source_params: str | None,
                which: str) -> Source | None:
    """The `Source` of the --source_workdir / --source_params flags (None when neither)."""
    if source_workdir:
        return Source(os.fspath(source_workdir), which)
    if source_params:
        return Source(os.fspath(source_params), None)
    return None
