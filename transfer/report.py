"""The four-scenario results table over many transfer run directories.

A run is read from its `results.json`: its target (dataset and classes; for
domain adaptation "<source> → <target domain>"), its training size
(`train_per_class`, 0 = all), its strategy, its seed and its test accuracy (for
domain adaptation, on the target domain's test split). A strategy is labelled with
the options that make it a different row: a distilled student by its temperature
(`distill T=4`, and `alone (λ=0)` for the student trained without the teacher), a
domain-adaptation run by its checkpoint selection (`dann (source_val)`). A cell is one (target, size); in a cell, every strategy's accuracy is
summarised over its seeds (mean ± 95% Student-t interval, in percent) and the
best mean wins; the strategies whose interval overlaps the winner's are listed
as tied, since with three seeds a gap inside the intervals decides nothing.

Runs of one cell must share a protocol: configs may differ only in the fields
of `FREE_FIELDS` (identity, bookkeeping and the strategies' own options), and
every strategy of a cell must have the same seeds, or the comparison would mix
seed luck into it.
"""

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

from core import run_dir
from core.errors import ConfigError
from core.stats import format_ci, mean_ci95

# Config fields that may differ within one cell.
FREE_FIELDS = frozenset({
    "seed", "data_seed", "workdir", "strategy", "source_workdir", "source_params", "which",
    "data_dir", "progress", "num_devices", "log_every", "checkpoint_every", "keep_blocks",
    "freeze_blocks", "trunk_lr_scale", "layer_decay", "lp_steps", "l2_sp_alpha", "l2_sp_beta",
    "dont_load", "ignore_source", "zero_init_head", "distill_temperature", "distill_lambda",
    "da_selection"})


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished transfer run."""

    workdir: str
    target: str
    train_per_class: int
    strategy: str
    seed: int
    accuracy: float  # percent
    config: Mapping[str, Any]


def _adapts_domain(config: Mapping[str, Any]) -> bool:
    return config.get("da_target") not in (None, "", "none")


def _target_name(config: Mapping[str, Any]) -> str:
    classes = config.get("classes") or ()
    name = config["dataset"]
    if _adapts_domain(config):
        name = f"{name} → {config['da_target']}"
    if not classes:
        return name
    return f"{name} {min(classes)}-{max(classes)}" if list(classes) == list(
        range(min(classes), max(classes) + 1)) else f"{name} {classes}"


def strategy_label(config: Mapping[str, Any]) -> str:
    """The row name of a run: its strategy, with the options that make it another row."""
    strategy = config["strategy"]
    if strategy == "distill":
        if float(config.get("distill_lambda", 1.0)) == 0.0:
            return "alone (λ=0)"
        return f"distill T={float(config['distill_temperature']):g}"
    if _adapts_domain(config) and config.get("da_selection"):
        return f"{strategy} ({config['da_selection']})"
    if _meta_learned_source(config):
        return f"{strategy} (MAML source)"
    return strategy


def _meta_learned_source(config: Mapping[str, Any]) -> bool:
    """Whether the run's source is a meta-learning run (its config has an inner loop)."""
    source = config.get("source_workdir")
    if not source:
        return False
    stored = run_dir.read_run_config(source)
    return bool(stored) and "inner_lr" in stored


def read_run(workdir: str) -> Run:
    """The run in `workdir` (its results.json)."""

    def parse(results):
        config = results["config"]
        return Run(workdir=workdir, target=_target_name(config),
                   train_per_class=int(config["train_per_class"]),
                   strategy=strategy_label(config), seed=int(config["seed"]),
                   accuracy=100.0 * float(results["test"]["accuracy"]), config=config)

    return run_dir.load_finished_results(workdir, "transfer", parse)


def size_label(train_per_class: int) -> str:
    return "all" if train_per_class == 0 else f"{train_per_class}/class"


def _check_cell(runs: Sequence[Run], allow_unequal_seeds: bool) -> None:
    first = runs[0]
    for run in runs[1:]:
        differ = sorted(k for k in set(first.config) | set(run.config)
                        if k not in FREE_FIELDS and first.config.get(k) != run.config.get(k))
        if differ:
            raise ConfigError(f"{run.workdir} and {first.workdir} differ in "
                              f"{', '.join(differ)}: runs of one cell must share a protocol")
    seeds: dict[str, set[int]] = {}
    for run in runs:
        seeds.setdefault(run.strategy, set()).add(run.seed)
    union = set().union(*seeds.values())
    missing = {s: sorted(union - have) for s, have in seeds.items() if union - have}
    if missing and not allow_unequal_seeds:
        detail = "; ".join(f"{s} lacks seeds {m}" for s, m in sorted(missing.items()))
        raise ConfigError(f"{first.target}, {size_label(first.train_per_class)}: the strategies "
                          f"have different seeds ({detail}); finish those runs or pass "
                          f"--allow_unequal_seeds")


def _tied(entries: Mapping[str, Mapping[str, Any]], best: str) -> list[str]:
    """Strategies whose interval overlaps the winner's (the winner excluded)."""
    mean_b, half_b = entries[best]["accuracy"]
    half_b = 0.0 if math.isnan(half_b) else half_b
    tied = []
    for name, entry in entries.items():
        mean, half = entry["accuracy"]
        half = 0.0 if math.isnan(half) else half
        if name != best and mean + half >= mean_b - half_b:
            tied.append(name)
    return sorted(tied, key=lambda n: -entries[n]["accuracy"][0])


def summarize(runs: Iterable[Run], allow_unequal_seeds: bool = False) -> dict[str, Any]:
    """{target: {size label: {'strategies': {name: {'seeds', 'accuracy'}}, 'best', 'tied'}}}."""
    cells: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        cells.setdefault((run.target, run.train_per_class), []).append(run)
    table: dict[str, Any] = {}
    # Sizes in increasing order, 'all' (0) last.
    for (target, size), group in sorted(cells.items(), key=lambda c: (c[0][0], c[0][1] or 1e9)):
        _check_cell(group, allow_unequal_seeds)
        by_strategy: dict[str, list[Run]] = {}
        for run in group:
            by_strategy.setdefault(run.strategy, []).append(run)
        entries = {s: {"seeds": sorted(r.seed for r in rs),
                       "accuracy": mean_ci95([r.accuracy for r in rs])}
                   for s, rs in sorted(by_strategy.items())}
        best = max(entries, key=lambda s: entries[s]["accuracy"][0])
        table.setdefault(target, {})[size_label(size)] = {
            "strategies": entries, "best": best, "tied": _tied(entries, best)}
    return table


def markdown(table: Mapping[str, Any]) -> str:
    """Per target: strategies x sizes (test accuracy %, the best in bold); then the winners."""
    parts, winners = [], ["| target | size | best | tied with the best (intervals overlap) |",
                          "|---|---|---|---|"]
    for target, sizes in table.items():
        strategies = sorted({s for cell in sizes.values() for s in cell["strategies"]})
        lines = [f"**{target}** (test accuracy %, mean ± 95% CI over seeds)", "",
                 "| strategy | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name in strategies:
            row = [name]
            for cell in sizes.values():
                entry = cell["strategies"].get(name)
                text = "" if entry is None else format_ci(entry["accuracy"])
                row.append(f"**{text}**" if cell["best"] == name else text)
            lines.append("| " + " | ".join(row) + " |")
        seeds = {",".join(map(str, e["seeds"])) for c in sizes.values()
                 for e in c["strategies"].values()}
        lines += ["", f"Seeds: {'; '.join(sorted(seeds))}."]
        parts.append("\n".join(lines))
        for size, cell in sizes.items():
            winners.append(f"| {target} | {size} | {cell['best']} | "
                           f"{', '.join(cell['tied']) or '-'} |")
    return "\n\n".join(parts + ["\n".join(winners)])
