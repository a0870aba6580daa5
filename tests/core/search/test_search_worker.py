"""The search loop on a fake experiment: coverage, determinism, resumption, pruning, storage."""

import json
import os

import optuna
from optuna.trial import TrialState
import pytest

from core.search import study as study_lib
from core.search import trials as trials_lib
from core.search import worker
from search_fake_family import score
from search_helpers import attempts, make_search

SPACE = {"x": {"type": "uniform", "low": 0.0, "high": 1.0},
         "y": {"type": "log_uniform", "low": 1e-3, "high": 1.0},
         "depth": {"type": "int", "low": 0, "high": 3}}


def _params(study):
    return [t.params for t in study.get_trials(deepcopy=False)]


def test_grid_covers_every_point_exactly_once(tmp_path):
    space = {"x": [0.1, 0.3], "depth": {"type": "int", "low": 1, "high": 2},
             "mode": ["a", "b"]}
    study, ctx = make_search(tmp_path, space, sampler="grid", num_trials=100)
    assert worker.run_worker(study, ctx) == 8
    points = sorted(json.dumps(p, sort_keys=True) for p in _params(study))
    expected = sorted(json.dumps(p, sort_keys=True) for p in ctx.space.grid_points())
    assert points == expected
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.value == pytest.approx(score(trial.params["x"], 0.0, trial.params["mode"]))
    # A rerun finds the grid done and runs nothing.
    assert worker.run_worker(study, ctx) == 0


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_fixed_seed_gives_the_same_trials(tmp_path, sampler):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        study, ctx = make_search(tmp_path, SPACE, sampler=sampler, num_trials=3, seed=seed,
                                 name=name)
        worker.run_worker(study, ctx)
        runs.append(_params(study))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert len({json.dumps(p, sort_keys=True) for p in runs[0]}) == 3


def test_a_resumed_search_does_not_replay_its_suggestions(tmp_path):
    study, ctx = make_search(tmp_path, SPACE, num_trials=2)
    worker.run_worker(study, ctx)
    ctx.num_trials = 4
    worker.run_worker(study, ctx)
    params = [json.dumps(p, sort_keys=True) for p in _params(study)]
    assert len(params) == 4 and len(set(params)) == 4


def test_a_trial_left_running_is_retried_with_its_params_in_its_run_dir(tmp_path):
    study, ctx = make_search(tmp_path, SPACE, num_trials=3)
    # A worker that died mid-trial: RUNNING, owned, its run half written, its lock free.
    dead = study.ask()
    values = ctx.space.suggest(dead)
    dead.set_user_attr("run_dir", "trials/0")
    dead.set_user_attr("owner", {"host": "gone", "pid": 1})
    workdir = trials_lib.trial_dir(ctx.study_dir, "trials/0")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "split": "val", "time": 0.0, "score": -5.0}) + "\n")
    worker.run_worker(study, ctx)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].user_attrs[worker.SUPERSEDED] and trials[0].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == values
    assert retry[0].user_attrs["run_dir"] == "trials/0" and retry[0].state == TrialState.COMPLETE
    assert len(worker.counted(trials)) == 3
    assert all(t.state == TrialState.COMPLETE for t in worker.counted(trials))
    # The retried run went on from its own metrics (the fake run resumes after step 1).
    assert attempts(ctx.study_dir, "trials/0")[0]["flags"]["x"] == repr(values["x"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert json.loads(f.readline())["score"] == -5.0


def test_a_live_trial_is_not_taken_over(tmp_path):
    study, ctx = make_search(tmp_path, SPACE, num_trials=1)
    live = study.ask()
    ctx.space.suggest(live)
    live.set_user_attr("run_dir", "trials/0")
    live.set_user_attr("owner", {"host": "here", "pid": 1})
    fd = trials_lib.try_lock(trials_lib.trial_dir(ctx.study_dir, "trials/0"))
    try:
        worker.recover_stale(study, ctx)
        assert study.trials[0].state == TrialState.RUNNING
        assert not study.trials[0].user_attrs.get(worker.SUPERSEDED)
    finally:
        os.close(fd)
    worker.recover_stale(study, ctx)
    assert study.trials[0].user_attrs[worker.SUPERSEDED]


def test_the_median_pruner_stops_a_trial_whose_values_are_bad(tmp_path):
    space = {"x": [0.3, 0.31, 0.32, 5.0]}
    study, ctx = make_search(tmp_path, space, sampler="grid", pruner="median", startup=2,
                             base="--num_steps=20\n--eval_every=1\n--step_seconds=0.02\n")
    # The good points first, so the bad one meets a median to be compared with.
    for x in (0.32, 0.31, 0.3, 5.0):
        study.enqueue_trial({"x": x})
    worker.run_worker(study, ctx)
    by_x = {t.params["x"]: t for t in study.trials}
    assert by_x[5.0].state == TrialState.PRUNED
    assert all(by_x[x].state == TrialState.COMPLETE for x in (0.3, 0.31, 0.32))
    bad_dir = os.path.join(ctx.study_dir, by_x[5.0].user_attrs["run_dir"])
    assert not os.path.exists(os.path.join(bad_dir, "results.json"))
    assert max(by_x[5.0].intermediate_values) < 20


def test_a_journal_file_storage_holds_the_study(tmp_path):
    url = f"journal:{tmp_path / 'journal.log'}"
    study, ctx = make_search(tmp_path, SPACE, num_trials=2, storage=url)
    worker.run_worker(study, ctx)
    again = optuna.load_study(study_name="study", storage=study_lib.open_storage(url))
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 2


def test_a_run_that_refuses_its_flags_stops_the_search(tmp_path):
    study, ctx = make_search(tmp_path, SPACE, num_trials=3,
                             base="--num_steps=3\n--eval_every=1\n--exit_code=2\n")
    with pytest.raises(worker.SearchInputError, match="fake refusal"):
        worker.run_worker(study, ctx)


def test_the_storage_password_is_masked():
    url = "postgresql://alice:s3cret@db.example:5432/optuna?sslmode=require"
    assert study_lib.mask_url(url) == "postgresql://alice:***@db.example:5432/optuna?sslmode=require"
    assert "s3cret" not in study_lib.mask_url("mysql://db/x?user=a&password=s3cret")


def test_a_trial_directory_stays_inside_the_study(tmp_path):
    assert trials_lib.trial_dir(str(tmp_path), "trials/3").startswith(str(tmp_path))
    with pytest.raises(Exception, match="not inside"):
        trials_lib.trial_dir(str(tmp_path), "../elsewhere")


def test_tpe_starts_modelling_after_the_given_number_of_trials():
    sampler = study_lib.make_sampler("tpe", 0, tpe_startup_trials=3)
    # pylint: disable=protected-access
    assert sampler._factory(7)._n_startup_trials == 3
    assert study_lib.make_sampler("tpe", 0)._factory(7)._n_startup_trials == 10


def test_searches_with_adjacent_seeds_draw_independent_trials():
    def draws(seed):
        study = optuna.create_study(sampler=study_lib.make_sampler("random", seed))
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(6)]
    # With `seed + trial number`, seed 1 would replay seed 0's trials 1-5 as its trials 0-4.
    assert not set(draws(0)) & set(draws(1))
    assert draws(0) == draws(0)


class _RecordingTrial:
    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True


def test_the_untrained_step_0_validation_is_not_reported_to_the_pruner(tmp_path):
    lines = [{"step": 0, "split": "val", "loss": 9.0}, {"step": 5, "split": "train", "loss": 1.0},
             {"step": 10, "split": "val", "loss": 2.0}]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines[:1]))
    trial = _RecordingTrial()
    watcher = trials_lib.Watcher(trial, str(tmp_path), "loss")
    assert not watcher.poll() and trial.reports == []
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines[1:]))
    assert watcher.poll()
    assert trial.reports == [(10, 2.0)] and watcher.last_step == 10

