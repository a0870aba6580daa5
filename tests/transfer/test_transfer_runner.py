"""Transfer runs end to end on generated IDX files: one source run, then a target run per
strategy; the per-path record, frozen parameters bit-identical to the source, cached
features, LP-FT's switch across an interruption, resume, and clear errors."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from core import experiment
from core import mesh as mesh_lib
from core.errors import ConfigError, DataError
from core.metrics import read_metrics
from tests.transfer.transfer_fixtures import (LR, Interrupted, interrupted_at, make_config,
                                              rows, train)
from transfer import runner
from transfer.params import flatten, save_npz

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Per strategy: the options of its target run.
STRATEGY_OPTIONS = {
    "scratch": {},
    "structure": {},
    "feature_extraction": {},
    "finetune": {"freeze_blocks": 1, "trunk_lr_scale": 0.1, "layer_decay": 0.5,
                 "weight_decay": 0.01, "grad_clip_norm": 1.0},
    "keep_blocks": {"keep_blocks": 2},
    "lp_ft": {"lp_steps": 3},
    "l2_sp": {"l2_sp_alpha": 0.1, "l2_sp_beta": 0.2},
}


_config = make_config
_train = train


def _target(workdir, data_dir, source, strategy, **overrides):
    options = dict(STRATEGY_OPTIONS[strategy], strategy=strategy, classes=(5, 6, 7, 8, 9),
                   train_per_class=4)
    if strategy != "scratch":
        options["source_workdir"] = source
    return _config(workdir, data_dir, **dict(options, **overrides))


@pytest.fixture(scope="module")
def target_runs(tmp_path_factory, mnist_dir, source_run, source):
    """strategy -> (workdir, results) of its target run, each run once for the module.

    The source run stands for scratch: it is a --strategy=scratch run of the same entry
    point (on other classes), so the suite trains one network fewer.
    """
    done = {"scratch": source_run}

    def run(strategy):
        if strategy not in done:
            workdir = tmp_path_factory.mktemp(strategy) / "run"
            done[strategy] = workdir, _train(_target(workdir, mnist_dir, source, strategy))
        return done[strategy]

    return run


def _expected(strategy, path):
    """(init, frozen, learning rate) the record must give a parameter path."""
    block = path.split("/")[1] if path.startswith("trunk/") else "head"
    if strategy in ("scratch", "structure"):
        return "fresh", False, LR
    if block == "head":
        return "fresh", False, LR
    if strategy == "feature_extraction":
        return "loaded", True, None
    if strategy == "finetune":
        rates = {"dense0": None, "dense1": LR * 0.1 * 0.25, "dense2": LR * 0.1 * 0.5}
        return "loaded", block == "dense0", rates[block]
    return "loaded", False, LR


@pytest.mark.parametrize("strategy", list(STRATEGY_OPTIONS))
def test_each_strategy_records_every_parameter_and_keeps_frozen_ones(strategy, target_runs,
                                                                     source):
    workdir, results = target_runs(strategy)
    assert results["strategy"] == strategy
    assert results["source"] == (None if strategy == "scratch" else source)
    assert 0 <= results["test"]["accuracy"] <= 1 and results["test"]["num_examples"] == 20
    record = json.loads((workdir / runner.RECORD_FILE).read_text())
    assert record["strategy"] == strategy
    final = flatten(experiment.load_params(str(workdir), "latest"))
    assert set(record["parameters"]) == set(final)
    source_params = flatten(experiment.load_params(source, "best"))
    moved = []
    for path, entry in record["parameters"].items():
        init, frozen, rate = _expected(strategy, path)
        assert (entry["init"], entry["frozen"]) == (init, frozen), path
        assert entry["learning_rate"] == pytest.approx(rate), path
        assert entry["source"] == (path if init == "loaded" else None)
        if frozen:
            np.testing.assert_array_equal(final[path], source_params[path])
        elif init == "loaded":
            moved.append(not np.array_equal(final[path], source_params[path]))
    assert strategy not in ("finetune", "keep_blocks", "lp_ft", "l2_sp") or all(moved)


def test_structure_cut_networks_and_regularisers_are_recorded(target_runs, source):
    record = {s: json.loads((target_runs(s)[0] / runner.RECORD_FILE).read_text())
              for s in ("scratch", "structure", "keep_blocks", "lp_ft", "l2_sp")}
    assert record["scratch"]["source"] is None
    structure = record["structure"]["parameters"]
    assert structure["trunk/dense2/kernel"]["shape_of"] == "trunk/dense2/kernel"
    assert record["structure"]["source"]["config"]["classes"] == [0, 1, 2, 3, 4]
    keep = record["keep_blocks"]
    assert keep["kept_blocks"] == ["dense0", "dense1"]
    assert not any(p.startswith("trunk/dense2") for p in keep["parameters"])
    assert {"trunk/dense2/kernel", "head/kernel"} <= set(keep["ignored_source"])
    lp_ft = record["lp_ft"]["parameters"]
    assert lp_ft["trunk/dense0/kernel"]["probe_phase"] == {"frozen": True, "learning_rate": None}
    assert lp_ft["head/kernel"]["probe_phase"] == {"frozen": False, "learning_rate": LR}
    l2_sp = record["l2_sp"]["parameters"]
    assert l2_sp["trunk/dense1/bias"]["l2_sp"] == {"anchor": "source", "strength": 0.1}
    assert l2_sp["head/kernel"]["l2_sp"] == {"anchor": "zero", "strength": 0.2}


def test_feature_extraction_trains_on_features_equal_to_recomputed_ones(target_runs,
                                                                        mnist_dir, source):
    workdir, _ = target_runs("feature_extraction")
    config = _target(workdir, mnist_dir, source, "feature_extraction")
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    target = runner.prepare(config, mesh)
    params = experiment.load_params(str(workdir), "latest")
    assert target.on_features
    for name, images in target.data.splits.items():
        x = images.x.astype(np.float32) / 255
        recomputed = target.model.apply({"params": params}, x, train=False,
                                        method=type(target.model).features)
        np.testing.assert_allclose(target.splits[name].x, recomputed, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(target.splits[name].y["label"], images.y["label"])
    assert runner.build(config, mesh).batch_fn(0)["x"].shape == (8, 8)


def _interrupted_target(tmp_path, mnist_dir, source, strategy):
    """The config of a target run checkpointed every 2 steps and interrupted at step 3."""
    config = _target(tmp_path / "run", mnist_dir, source, strategy, checkpoint_every=2)
    with pytest.raises(Interrupted):
        _train(config, interrupted_at(3))
    return config


def test_lp_ft_interrupted_before_its_switch_resumes_bit_identically(
        target_runs, tmp_path, mnist_dir, source):
    full_dir, full = target_runs("lp_ft")
    config = _interrupted_target(tmp_path, mnist_dir, source, "lp_ft")
    probed = experiment.load_train_state(config.workdir, "latest")
    assert probed["step"] == 2
    source_params = experiment.load_params(source, "best")
    chex.assert_trees_all_equal(probed["params"]["trunk"], source_params["trunk"])
    resumed = _train(config)
    assert resumed["test"] == full["test"]
    final = experiment.load_train_state(config.workdir, "latest")
    chex.assert_trees_all_equal(final, experiment.load_train_state(str(full_dir), "latest"))
    assert not np.array_equal(final["params"]["trunk"]["dense0"]["kernel"],
                              source_params["trunk"]["dense0"]["kernel"])
    assert rows(config.workdir) == rows(full_dir)
    probing = [r["probing"] for r in read_metrics(config.workdir, split="train")]
    assert probing == [1.0, 1.0, 1.0, 0.0]


def test_a_checkpoint_in_the_workdir_wins_over_the_source_for_cached_features(
        target_runs, tmp_path, mnist_dir, source):
    workdir, _ = target_runs("feature_extraction")
    stored = experiment.load_train_state(source, "best")["params"]
    save_npz(str(tmp_path / "zeros.npz"), jax.tree.map(np.zeros_like, stored))
    config = _target(workdir, mnist_dir, source, "feature_extraction", source_workdir=None,
                     source_params=str(tmp_path / "zeros.npz"))
    target = runner.prepare(config, mesh_lib.make_mesh(jax.devices()[:1]))
    assert not np.any(target.initial.params["trunk"]["dense0"]["kernel"])
    params = experiment.load_params(str(workdir), "latest")
    images = target.data.splits["test"].x.astype(np.float32) / 255
    np.testing.assert_allclose(target.splits["test"].x, target.model.apply(
        {"params": params}, images, train=False, method=type(target.model).features),
        rtol=1e-6, atol=1e-6)
    assert np.any(target.splits["test"].x)


def test_an_npz_source_loads_what_the_run_directory_holds(tmp_path, mnist_dir, source):
    stored = experiment.load_train_state(source, "best")
    save_npz(str(tmp_path / "source.npz"), stored["params"])
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    from_dir = runner.prepare(_target(tmp_path / "a", mnist_dir, source, "finetune"), mesh)
    from_npz = runner.prepare(_target(tmp_path / "b", mnist_dir, source, "finetune",
                                      source_workdir=None,
                                      source_params=str(tmp_path / "source.npz")), mesh)
    chex.assert_trees_all_equal(from_dir.initial.params, from_npz.initial.params)
    assert from_npz.source.describe()["kind"] == "npz"


@pytest.mark.parametrize("overrides, error, message", [
    ({"strategy": "finetune", "source_workdir": None}, ConfigError,
     "--strategy=finetune needs a source"),
    ({"strategy": "scratch", "source_workdir": "SOURCE"}, ConfigError,
     "--strategy=scratch trains from a fresh init and reads no source"),
    ({"strategy": "finetune", "source_workdir": "MISSING"}, DataError,
     "transfer source .* does not exist"),
    ({"strategy": "finetune", "source_workdir": "EMPTY"}, DataError, "no checkpoint in"),
    ({"strategy": "finetune", "mlp_hidden": (16, 10, 8)}, ConfigError,
     "cannot transfer the parameters"),
    ({"strategy": "feature_extraction", "freeze_blocks": 1}, ConfigError,
     "--freeze_blocks applies to --strategy=finetune/keep_blocks/lp_ft/l2_sp"),
    ({"strategy": "lp_ft"}, ConfigError, "needs --lp_steps >= 1"),
    ({"strategy": "lp_ft", "lp_steps": 4}, ConfigError, "fewer than --num_steps=4"),
    ({"strategy": "feature_extraction", "dropout": 0.1}, ConfigError, "in evaluation mode"),
    ({"strategy": "keep_blocks", "keep_blocks": 3}, ConfigError,
     "keeping them all is --strategy=finetune"),
    ({"strategy": "finetune", "freeze_blocks": 4}, ConfigError,
     "--freeze_blocks=4 but the trunk keeps 3 blocks"),
    ({"strategy": "finetune", "dont_load": ("trunk/dense9",)}, ConfigError,
     "match no parameter: dont_load 'trunk/dense9'"),
])
def test_bad_input_gives_one_clear_error(tmp_path, mnist_dir, source, overrides, error,
                                         message):
    (tmp_path / "EMPTY").mkdir()
    paths = {"SOURCE": source, "MISSING": str(tmp_path / "nowhere"),
             "EMPTY": str(tmp_path / "EMPTY")}
    if overrides.get("source_workdir") in paths:
        overrides = dict(overrides, source_workdir=paths[overrides["source_workdir"]])
    options = dict(dict(source_workdir=source, classes=(5, 6, 7, 8, 9)), **overrides)
    with pytest.raises(error, match=message):
        _train(_config(tmp_path / "run", mnist_dir, **options))


def test_the_entry_point_exits_2_with_one_line_without_a_source(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.transfer", "--strategy=lp_ft",
                           f"--workdir={tmp_path / 'run'}", "--noprogress"], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--strategy=lp_ft needs a source" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_started_before_the_conv4_options_resumes_bit_identically(
        target_runs, tmp_path, mnist_dir, source):
    _, full = target_runs("keep_blocks")
    config = _interrupted_target(tmp_path, mnist_dir, source, "keep_blocks")
    # config.json as the code before the options wrote it.
    path = tmp_path / "run" / "config.json"
    stored = json.loads(path.read_text())
    for name in ("bn_scale", "bn_epsilon", "cut_features", "omniglot_resize"):
        del stored[name]
    path.write_text(json.dumps(stored))
    assert _train(config)["test"] == full["test"]
