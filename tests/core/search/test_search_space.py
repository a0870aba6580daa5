"""The search-space file: what it accepts, and one clear error for each bad entry."""

import json

import pytest

from core.search import space as space_lib
from search_helpers import EXPERIMENT

TYPES = EXPERIMENT.flag_types()
BASE = {"mode": "a", "x": 0.5}


def _load(tmp_path, entries, base=BASE):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(entries) if not isinstance(entries, str) else entries)
    return space_lib.load_space(str(path), TYPES, base)


def test_every_entry_type_is_read(tmp_path):
    space = _load(tmp_path, {
        "comment": "how to run it",
        "x": {"type": "uniform", "low": 0.0, "high": 1.0},
        "y": {"type": "log_uniform", "low": 1e-4, "high": 1e-1},
        "depth": {"type": "int", "low": 1, "high": 3},
        "mode": ["a", "b"],
        "tag": {"type": "categorical", "values": ["u", "v"], "when": {"mode": "b"}}})
    assert space.comment == "how to run it"
    assert space.names == ("x", "y", "depth", "mode", "tag")  # conditional entries last
    assert space.params[-1].when == {"mode": ("b",)}


def test_a_when_on_a_base_flag_is_decided_once(tmp_path):
    entries = {"x": [0.1, 0.2], "depth": {"type": "int", "low": 1, "high": 3,
                                          "when": {"mode": "b"}}}
    assert _load(tmp_path, entries).names == ("x",)
    kept = _load(tmp_path, entries, dict(BASE, mode="b"))
    assert kept.names == ("x", "depth") and kept.params[1].when == {}
    assert kept.grid() == {"x": [0.1, 0.2], "depth": [1, 2, 3]}


@pytest.mark.parametrize("entries, message", [
    ({"nope": [1, 2]}, "entry 'nope': unknown flag"),
    ({"x": {"type": "uniform", "low": 0.5, "high": 0.5}}, "entry 'x': empty range"),
    ({"x": {"type": "uniform", "low": 1.0, "high": 0.5}}, "entry 'x': low (1.0) > high (0.5)"),
    ({"x": []}, "entry 'x': needs a non-empty list"),
    ({"x": {"type": "log_uniform", "low": 0.0, "high": 1.0}}, "entry 'x': a log_uniform range "
                                                               "needs low > 0"),
    ({"x": {"type": "gaussian"}}, "entry 'x': unknown type"),
    ({"x": {"type": "uniform", "low": "a", "high": 1}}, "entry 'x': 'low' must be a finite"),
    ({"depth": [1, "two"]}, "entry 'depth': \"two\" is not a value of this int flag"),
    ({"depth": {"type": "uniform", "low": 0, "high": 1}}, "entry 'depth': a uniform range "
                                                           "needs a float flag"),
    ({"tag": ["a\n--workdir=/etc"]}, "entry 'tag': the value"),
    ({"workdir": ["a"]}, "entry 'workdir': is set by the search itself"),
    ({"x": {"type": "categorical", "values": [1], "when": {"zzz": 1}}},
     "entry 'x': 'when' names an unknown flag 'zzz'"),
    ({"x": [0.1, 0.2], "y": {"type": "categorical", "values": [1.0], "when": {"x": 0.1}},
      "depth": {"type": "categorical", "values": [1], "when": {"y": 1.0}}},
     "entry 'depth': 'when' names 'y', which has a 'when' of its own"),
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_entry_is_one_clear_error(tmp_path, entries, message):
    with pytest.raises(space_lib.SpaceError) as err:
        _load(tmp_path, entries)
    assert str(tmp_path / "space.json") in str(err.value)
    assert message in str(err.value)


def test_the_grid_sampler_refuses_a_continuous_range(tmp_path):
    space = _load(tmp_path, {"x": {"type": "uniform", "low": 0.0, "high": 1.0}})
    with pytest.raises(space_lib.SpaceError, match="entry 'x': the grid sampler needs values"):
        space.grid()


def test_the_grid_sampler_refuses_a_condition_on_a_searched_flag(tmp_path):
    space = _load(tmp_path, {"mode": ["a", "b"],
                             "depth": {"type": "int", "low": 1, "high": 2,
                                       "when": {"mode": "b"}}})
    with pytest.raises(space_lib.SpaceError, match="entry 'depth': the grid sampler cannot"):
        space.grid()


def test_the_example_spaces_load():
    import os
    from meta import runner as maml_runner
    from transfer import runner as transfer_runner
    from core.search import experiment_spec
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    spaces = os.path.join(repo, "experiments", "spaces")
    for name, cls, flagfile, extra in [
            ("transfer_finetune_small.json", transfer_runner.TransferRunConfig,
             "experiments/flags/transfer/fashion_finetune.flags", ["--source_workdir=src"]),
            ("maml_sinusoid_lrs.json", maml_runner.MamlRunConfig,
             "experiments/flags/maml/sinusoid_10shot.flags", [])]:
        exp = experiment_spec.Experiment(name, (), cls, lambda c: ("m", "max"))
        config = experiment_spec.parse_config(
            exp, [f"--flagfile={os.path.join(repo, flagfile)}", *extra])
        space = space_lib.load_space(os.path.join(spaces, name), exp.flag_types(),
                                     experiment_spec.config_values(config))
        assert space.comment and len(space.params) >= 2, name
