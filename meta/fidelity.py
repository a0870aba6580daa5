"""The reference MAML code's hidden details as switches, and the presets that set them.

A line-by-line comparison with the reference code (cbfinn/maml; the list is
`../shared/reference.md` §1.2, items 8-12) found five details the paper does
not state in which this library, by default, differs. Each is a switch of
`meta.runner.MamlRunConfig` (a flag of `experiments.maml`):

=======================  ==================  ==================================
switch                   'ours' (default)    'reference' (cbfinn/maml)
=======================  ==================  ==================================
inner_loss_reduction     mean                sum_div_shots: Σ CE / K over the
                                             N·K support examples = N × mean
                                             (sinusoid: mean, as the reference)
bn_scale                 true                false (no scale γ)
bn_epsilon               1e-5                1e-3
inner_adapt              *                   *
inner_adapt_exclude      (none)              */bn* (the BN shift is trained by
                                             the outer optimizer only)
omniglot_resize          lanczos             nearest_binary
rotation_sampling        as_classes          per_episode
head_init                lecun_normal        normal, N(0, 1) (Omniglot);
                                             glorot_uniform (mini-ImageNet)
=======================  ==================  ==================================

`--fidelity_preset` (`PRESETS`) gives every switch left unset its value; a
switch given explicitly wins over the preset, so
`--fidelity_preset=reference --inner_loss_reduction=mean` is the reference
code but for one detail (one flag per ablation). A switch that does nothing
for the run's dataset is refused when given explicitly (`APPLIES`: e.g.
`--omniglot_resize` with `--dataset=sinusoid`, or
`--inner_loss_reduction=sum_div_shots` for regression: the reference code's
sinusoid loss is the mean MSE, as ours); a preset leaves it out (None in the
record). What the switches resolve to is recorded in config.json and
results.json (`fidelity`), and a resumed run must match it; a run directory
written before the switches existed resumes as the 'ours' preset (what that
code did, `before_the_switches`) and is refused under another.

The inner-loop filter (`inner_adapt`, `inner_adapt_exclude`) is a
`core.param_paths.PathFilter` over '/'-joined parameter paths: a parameter is
adapted when an `inner_adapt` pattern matches it and no `inner_adapt_exclude`
pattern does; the others keep θ's value in θ' and are trained by the outer
optimizer only. `*/bn*` covers the batch-norm layers of `core.trunks`
('trunk/block0/bn/bias', and 'trunk/bn0/...' of the MLP); `--inner_adapt=head`
adapts the output layer only, as ANIL.

Two reference details are not switches. The outer (query) loss stays the
mean: the reference's is also Σ CE / K, over the query set (N·query / K times
the mean), a scale Adam absorbs up to its ε, but which the mini-ImageNet
meta-gradient clip (±10) would see. And the preset reproduces the reference's
Conv4 networks: with `--network=mlp` the hidden layers keep flax's init, where
the reference's MLP uses a truncated normal (std 0.01) for every layer.
"""

import dataclasses
import types
from typing import Any

from core.errors import ConfigError
from core.param_paths import PathFilter

PRESETS = ("ours", "reference")
INNER_LOSS_REDUCTIONS = ("mean", "sum_div_shots")
ROTATION_SAMPLINGS = ("as_classes", "per_episode")
BN_PARAMS = "*/bn*"

SWITCHES = ("inner_loss_reduction", "bn_scale", "bn_epsilon", "inner_adapt",
            "inner_adapt_exclude", "omniglot_resize", "rotation_sampling", "head_init")
_IMAGE_SWITCHES = frozenset(SWITCHES) - {"omniglot_resize", "rotation_sampling"}
# The switches that change something, per dataset.
APPLIES = {"sinusoid": frozenset({"inner_loss_reduction", "inner_adapt", "inner_adapt_exclude"}),
           "omniglot": frozenset(SWITCHES),
           "miniimagenet": _IMAGE_SWITCHES}
_NOT_APPLICABLE_WHY = {
    "bn_scale": "its network has no batch norm",
    "bn_epsilon": "its network has no batch norm",
    "omniglot_resize": "it reads no Omniglot images",
    "rotation_sampling": "it has no rotated classes (Omniglot only)",
    "head_init": "its network is initialised as the reference code's (truncated normal, "
                 "std 0.01, every layer)",
}


def preset_values(preset: str, dataset: str) -> dict[str, Any]:
    """What a preset sets every switch to, for one dataset (before `APPLIES`)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown --fidelity_preset={preset!r}; expected one of "
                          f"{', '.join(PRESETS)}")
    if preset == "ours":
        return {"inner_loss_reduction": "mean", "bn_scale": True, "bn_epsilon": 1e-5,
                "inner_adapt": ("*",), "inner_adapt_exclude": (),
                "omniglot_resize": "lanczos", "rotation_sampling": "as_classes",
                "head_init": "lecun_normal"}
    classification = dataset != "sinusoid"
    return {"inner_loss_reduction": "sum_div_shots" if classification else "mean",
            "bn_scale": False, "bn_epsilon": 1e-3,
            "inner_adapt": ("*",), "inner_adapt_exclude": (BN_PARAMS,) if classification else (),
            "omniglot_resize": "nearest_binary", "rotation_sampling": "per_episode",
            "head_init": "glorot_uniform" if dataset == "miniimagenet" else "normal"}


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """The resolved switches of one run; None where a switch does not apply to its dataset.

    Attributes: the preset's name and one per switch (see the module docstring).
    """

    preset: str
    inner_loss_reduction: str
    bn_scale: bool | None
    bn_epsilon: float | None
    inner_adapt: tuple[str, ...]
    inner_adapt_exclude: tuple[str, ...]
    omniglot_resize: str | None
    rotation_sampling: str | None
    head_init: str | None

    def record(self) -> dict[str, Any]:
        """The JSON record (config.json and results.json `fidelity`)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    def inner_loss_scale(self, ways: int) -> float:
        """`maml.MamlConfig.inner_loss_scale`: Σ CE / K over N·K examples is N × the mean."""
        return float(ways) if self.inner_loss_reduction == "sum_div_shots" else 1.0

    def inner_filter(self) -> PathFilter | None:
        """The inner loop's parameter filter; None when it adapts every parameter."""
        if self.inner_adapt == ("*",) and not self.inner_adapt_exclude:
            return None
        return PathFilter(self.inner_adapt, self.inner_adapt_exclude)


def resolve(config: Any) -> Fidelity:
    """The switches of a `MamlRunConfig`: explicit values, else the preset's.

    Raises:
      ConfigError: an unknown preset; a switch given explicitly that does not
        apply to the dataset; a summed loss for regression; a non-positive
        epsilon; an empty or malformed parameter pattern list.
    """
    dataset = config.dataset
    defaults = preset_values(config.fidelity_preset, dataset)
    applies = APPLIES.get(dataset, frozenset(SWITCHES))
    values = {}
    for name in SWITCHES:
        explicit = getattr(config, name)
        if name not in applies:
            if explicit is not None:
                raise ConfigError(f"--{name} does not apply to --dataset={dataset}: "
                                  f"{_NOT_APPLICABLE_WHY[name]}")
            values[name] = None
        else:
            values[name] = defaults[name] if explicit is None else explicit
    if dataset == "sinusoid" and values["inner_loss_reduction"] != "mean":
        raise ConfigError("--inner_loss_reduction=sum_div_shots is for classification (the "
                          "reference code's cross-entropy / K, summed); the reference code's "
                          "sinusoid loss is the mean MSE, as ours: use mean")
    if values["bn_epsilon"] is not None and not values["bn_epsilon"] > 0:
        raise ConfigError(f"--bn_epsilon must be > 0, got {values['bn_epsilon']}")
    values["inner_adapt"] = tuple(values["inner_adapt"])
    values["inner_adapt_exclude"] = tuple(values["inner_adapt_exclude"])
    if not values["inner_adapt"]:
        raise ConfigError("--inner_adapt names no parameter pattern, so the inner loop would "
                          "adapt nothing; '*' adapts every parameter")
    PathFilter(values["inner_adapt"], values["inner_adapt_exclude"])  # malformed patterns
    return Fidelity(preset=config.fidelity_preset, **values)


def before_the_switches(dataset: str) -> Fidelity:
    """What a run started before the switches existed did: the 'ours' preset.

    (A run directory of that code has none of them in its config.json; see
    `meta.runner.MamlRunConfig.values_before`.)
    """
    unset = types.SimpleNamespace(dataset=dataset, fidelity_preset="ours",
                                  **dict.fromkeys(SWITCHES))
    return resolve(unset)
