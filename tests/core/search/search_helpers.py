"""Shared set-up of the search tests: a fake experiment's study in a temporary directory."""

import json
import os

from core.search import experiment_spec
from core.search import space as space_lib
from core.search import study as study_lib
from core.search import worker as worker_lib
import search_fake_family

EXPERIMENT = search_fake_family.SEARCH_EXPERIMENT


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def make_search(tmp_path, space, *, sampler="random", num_trials=4, seed=0, pruner="none",
                base="--num_steps=3\n--eval_every=1\n", storage=None, startup=2, name="study"):
    """(study, context) of a search of the fake experiment, ready for `run_worker`."""
    flagfile = write(tmp_path / "base.flags", base)
    space_path = write(tmp_path / "space.json", json.dumps(space))
    config = experiment_spec.parse_config(EXPERIMENT, [f"--flagfile={flagfile}"])
    checked = space_lib.load_space(space_path, EXPERIMENT.flag_types(),
                                   experiment_spec.config_values(config))
    study_dir = str(tmp_path / name)
    grid = checked.grid() if sampler == "grid" else None
    ctx = worker_lib.SearchContext(
        experiment=EXPERIMENT, study_dir=study_dir, space=checked,
        base_lines=experiment_spec.read_flag_lines(flagfile), extra_flags=[],
        num_trials=num_trials, grid_size=len(checked.grid_points()) if grid else None,
        poll_seconds=0.05, log=lambda line: None)
    url = storage or study_lib.default_storage(study_dir)
    os.makedirs(study_dir, exist_ok=True)
    study = study_lib.open_study(study_dir, name, url, "maximize",
                                 study_lib.make_sampler(sampler, seed, grid),
                                 study_lib.make_pruner(pruner, startup))
    return study, ctx


def attempts(study_dir, relative):
    path = os.path.join(study_dir, relative, "attempts.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f]
