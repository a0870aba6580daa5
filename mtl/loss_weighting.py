"""Multi-task loss weightings ("loss scalarizers"): per-task losses [K] -> one scalar.

The one entry point for choosing a weighting by name::

    weighting = make_loss_weighting("famo", num_tasks=3, w_lr=0.025)
    extra = weighting.init(3)                       # lives in TrainState.extra
    total, weights, extra = weighting.update(losses, extra, key=key, aux=aux)

The interface, the train-step calling convention and how learned weights are
optimised are documented in `mtl.loss_weighting_base`; the methods are in
`mtl.loss_weighting_fixed` (static, equal, sum, scale_invariant, gls, rlw,
dwa) and `mtl.loss_weighting_learned` (uw, gradnorm, famo). (The Gramian
weightings of gradient aggregators are a different interface: `mtl.weightings`.)

| name            | method                                   | needs               |
|-----------------|------------------------------------------|---------------------|
| static          | Σ c_k L_k, user weights c ≥ 0            |                     |
| equal           | mean_k L_k (EW)                          |                     |
| sum             | Σ_k L_k (LS)                             |                     |
| scale_invariant | Σ_k log L_k                              |                     |
| gls             | (Π_k L_k)^{1/K} (Chennupati 2019)        |                     |
| rlw             | softmax(N(0, I)) weights (Lin 2022)      | key                 |
| dwa             | K softmax(loss ratios / T) (Liu 2019)    | steps_per_epoch     |
| uw              | uncertainty weighting (Kendall 2018)     |                     |
| gradnorm        | GradNorm (Chen 2018)                     | aux task_grad_norms |
| famo            | FAMO (Liu 2023)                          | observe (optional)  |
"""

import inspect
from typing import Callable

import jax

from core.errors import ConfigError
from mtl.loss_weighting_base import (KEY, OBSERVE, TASK_GRAD_NORMS, LossWeighting,
                                     no_observe, task_gradient_norms, weighting_key)
from mtl.loss_weighting_fixed import (DwaState, dwa, equal, gls, rlw, scale_invariant,
                                      static, sum_)
from mtl.loss_weighting_learned import (FamoState, GradNormState, UwState, famo, gradnorm,
                                        uw)

__all__ = [
    "LOSS_WEIGHTINGS", "make_loss_weighting", "LossWeighting", "weighting_key",
    "task_gradient_norms", "no_observe", "KEY", "OBSERVE", "TASK_GRAD_NORMS", "static", "equal",
    "sum_", "scale_invariant", "gls", "rlw", "dwa", "uw", "gradnorm", "famo", "DwaState",
    "UwState", "GradNormState", "FamoState",
]

LOSS_WEIGHTINGS: dict[str, Callable[..., LossWeighting]] = {
    "static": static,
    "equal": equal,
    "sum": sum_,
    "scale_invariant": scale_invariant,
    "gls": gls,
    "rlw": rlw,
    "dwa": dwa,
    "uw": uw,
    "gradnorm": gradnorm,
    "famo": famo,
}


def make_loss_weighting(name: str, num_tasks: int | None = None,
                        **hyperparams) -> LossWeighting:
    """The loss weighting `name` of `LOSS_WEIGHTINGS` with its hyper-parameters.

    Args:
      name: a key of `LOSS_WEIGHTINGS`.
      num_tasks: if given, the configuration is checked against it now (e.g.
        the number of static weights) instead of at `init`.
      **hyperparams: keyword arguments of the method's factory (e.g.
        `weights=[1, 2]` for static, `steps_per_epoch=100` for dwa).

    Returns:
      The `LossWeighting`.

    Raises:
      ConfigError: for an unknown name, an unknown or missing
        hyper-parameter, or an invalid value.
    """
    if name not in LOSS_WEIGHTINGS:
        raise ConfigError(f"Unknown loss weighting {name!r}; known: "
                          f"{', '.join(sorted(LOSS_WEIGHTINGS))}.")
    factory = LOSS_WEIGHTINGS[name]
    signature = inspect.signature(factory)
    try:
        signature.bind(**hyperparams)
    except TypeError as e:
        accepted = ", ".join(signature.parameters) or "none"
        raise ConfigError(f"Bad hyper-parameters {sorted(hyperparams)} for loss weighting "
                          f"{name!r} ({e}); it accepts: {accepted}.") from e
    weighting = factory(**hyperparams)
    if num_tasks is not None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ConfigError(f"num_tasks must be an integer >= 1, got {num_tasks!r}.")
        jax.eval_shape(lambda: weighting.init(num_tasks))
    return weighting
