"""A fake experiment for the search tests: a config class and a tiny run script.

The run (`search_fake_run.py`, no JAX) writes metrics.jsonl and results.json in
the run directory format in milliseconds, so a search of many trials runs in
seconds. Its validation 'score' (maximised) is -(x - 0.3)^2 - y^2 at every step,
scaled by `penalty` for mode 'b'.
"""

import dataclasses
import os
import sys

from core import experiment
from core.experiment import option, override
from core.search import experiment_spec

RUN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "search_fake_run.py")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FakeConfig(experiment.RunConfig):
    num_steps: int = override(4)
    eval_every: int = override(1)
    x: float = option(0.5, "A float to search.")
    y: float = option(0.0, "Another float.")
    depth: int = option(1, "An int.", minimum=0)
    mode: str = option("a", "A choice.", choices=("a", "b"))
    tag: str = option("t", "A free string.")
    step_seconds: float = option(0.0, "Sleep per step (kill tests).", resumable=True)
    exit_code: int = option(0, "Exit with this status instead of running.")


def score(x: float, y: float, mode: str = "a") -> float:
    """The fake run's validation value (the same formula as search_fake_run.py)."""
    value = -(x - 0.3) ** 2 - y ** 2
    return value - 1.0 if mode == "b" else value


SEARCH_EXPERIMENT = experiment_spec.Experiment(
    "fake", (sys.executable, RUN_SCRIPT), FakeConfig, lambda config: ("score", "max"))
