"""Summaries over seeds that every family's results tables share."""

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval); the width is nan for one value."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def format_ci(value: tuple[float, float], digits: int = 2) -> str:
    """'mean ± half' ('mean' alone when the interval is undefined)."""
    mean, half = value
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"
