"""The reference code's hidden details as switches (meta/fidelity.py): each does what it says.

Generated data only: random images for the inner-loop checks, fake Omniglot zips
(`core.datasets.fake`) for the runs.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags

from core import cli
from core import experiment
from core import mesh as mesh_lib
from core import networks
from core.datasets.fake import random_image_episodes, write_fake_omniglot
from core.datasets.omniglot import load_omniglot
from core.errors import ConfigError
from core.losses import classification_loss, split_variables
from core.param_paths import PathFilter, flatten
from meta import episodes as episodes_lib
from meta import evaluation
from meta import fidelity as fidelity_lib
from meta import maml
from meta import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_OMNIGLOT = {"preset": "reference", "inner_loss_reduction": "sum_div_shots",
                      "bn_scale": False, "bn_epsilon": 1e-3, "inner_adapt": ["*"],
                      "inner_adapt_exclude": ["*/bn*"], "omniglot_resize": "nearest_binary",
                      "rotation_sampling": "per_episode", "head_init": "normal"}
OURS_OMNIGLOT = {"preset": "ours", "inner_loss_reduction": "mean", "bn_scale": True,
                 "bn_epsilon": 1e-5, "inner_adapt": ["*"], "inner_adapt_exclude": [],
                 "omniglot_resize": "lanczos", "rotation_sampling": "as_classes",
                 "head_init": "lecun_normal"}


def _config(dataset="omniglot", **fields):
    data_dir = None if dataset == "sinusoid" else "/data"
    return runner.MamlRunConfig(workdir="w", dataset=dataset, data_dir=data_dir, **fields)


def _parse(*argv):
    flag_values = flags.FlagValues()
    cli.define_flags(runner.MamlRunConfig, flag_values)
    flag_values(["prog", *argv])
    return cli.config_from_flags(runner.MamlRunConfig, flag_values)


# --- The preset and the switches -----------------------------------------------------------

def test_the_default_is_ours_and_the_reference_preset_sets_all_five_details():
    assert _config().fidelity.record() == OURS_OMNIGLOT
    assert _config(fidelity_preset="reference").fidelity.record() == REFERENCE_OMNIGLOT
    mini = _config("miniimagenet", fidelity_preset="reference").fidelity.record()
    assert mini == dict(REFERENCE_OMNIGLOT, head_init="glorot_uniform", omniglot_resize=None,
                        rotation_sampling=None)
    sinusoid = _config("sinusoid", fidelity_preset="reference").fidelity.record()
    assert sinusoid == {"preset": "reference", "inner_loss_reduction": "mean",
                        "bn_scale": None, "bn_epsilon": None, "inner_adapt": ["*"],
                        "inner_adapt_exclude": [], "omniglot_resize": None,
                        "rotation_sampling": None, "head_init": None}
    # Sinusoid under either preset is today's run.
    ours = _config("sinusoid").fidelity
    assert dataclasses.replace(ours, preset="reference") == _config(
        "sinusoid", fidelity_preset="reference").fidelity


@pytest.mark.parametrize("switch, value", [
    ("inner_loss_reduction", "mean"), ("bn_scale", True), ("bn_epsilon", 1e-5),
    ("inner_adapt_exclude", ()), ("omniglot_resize", "lanczos"),
    ("rotation_sampling", "as_classes"), ("head_init", "lecun_normal"),
    ("inner_adapt", ("head",))])
def test_an_explicit_switch_wins_over_the_preset_and_changes_nothing_else(switch, value):
    record = _config(fidelity_preset="reference", **{switch: value}).fidelity.record()
    expected = dict(REFERENCE_OMNIGLOT, **{switch: list(value) if isinstance(value, tuple)
                                           else value})
    assert record == expected


def test_flags_parse_into_the_switches_and_an_empty_exclusion_is_explicit():
    config = _parse("--dataset=omniglot", "--data_dir=/data", "--fidelity_preset=reference",
                    "--inner_adapt_exclude=", "--nobn_scale", "--bn_epsilon=0.01",
                    "--inner_adapt=head,trunk/block3")
    assert config.inner_adapt_exclude == () and config.inner_adapt == ("head", "trunk/block3")
    resolved = config.fidelity
    assert resolved.inner_adapt_exclude == () and resolved.bn_epsilon == 0.01
    assert resolved.inner_filter() == PathFilter(("head", "trunk/block3"), ())
    unset = _parse("--dataset=omniglot", "--data_dir=/data")
    assert all(getattr(unset, name) is None for name in fidelity_lib.SWITCHES)


@pytest.mark.parametrize("dataset, fields, message", [
    ("sinusoid", {"omniglot_resize": "lanczos"}, "--omniglot_resize does not apply"),
    ("sinusoid", {"bn_scale": False}, "--bn_scale does not apply"),
    ("sinusoid", {"head_init": "normal"}, "--head_init does not apply"),
    ("sinusoid", {"inner_loss_reduction": "sum_div_shots"}, "sinusoid loss is the mean MSE"),
    ("miniimagenet", {"rotation_sampling": "per_episode"}, "--rotation_sampling does not apply"),
    ("omniglot", {"bn_epsilon": 0.0}, "--bn_epsilon must be > 0"),
    ("omniglot", {"inner_adapt": ()}, "names no parameter pattern"),
    ("omniglot", {"inner_adapt_exclude": ("head/(",)}, "not a valid regular expression"),
    ("omniglot", {"fidelity_preset": "paper"}, "unknown --fidelity_preset='paper'"),
    ("omniglot", {"head_init": "zeros"}, "unknown --head_init='zeros'"),
])
def test_a_bad_or_inapplicable_switch_is_refused_by_validate(dataset, fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _config(dataset, **fields).validate()


def test_the_fidelity_preset_and_switches_are_not_resumable():
    resumable = set(runner.MamlRunConfig.resumable_keys())
    assert not resumable & ({"fidelity_preset"} | set(fidelity_lib.SWITCHES))


# --- Each switch changes only what it should ------------------------------------------------

def _model_fields(config):
    model, _, _ = runner.build_model(config, "xla")
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ("parent", "name")}


def _differences(config, base):
    ours, other = _model_fields(base), _model_fields(config)
    changed = {name for name in ours if ours[name] != other[name]}
    # Initialisers are new function objects each time: compare them by name.
    if "head_init" in changed and (config.fidelity.head_init == base.fidelity.head_init):
        changed.discard("head_init")
    return changed


@pytest.mark.parametrize("switch, value, model_attributes", [
    ("inner_loss_reduction", "sum_div_shots", set()),
    ("bn_scale", False, {"bn_scale"}),
    ("bn_epsilon", 1e-3, {"bn_epsilon"}),
    ("inner_adapt_exclude", ("*/bn*",), set()),
    ("omniglot_resize", "nearest_binary", set()),
    ("rotation_sampling", "per_episode", set()),
    ("head_init", "normal", {"head_init"}),
])
def test_each_switch_changes_only_its_own_part_of_the_run(switch, value, model_attributes):
    base, config = _config(ways=5), _config(ways=5, **{switch: value})
    assert _differences(config, base) == model_attributes
    ours, other = base.fidelity, config.fidelity
    assert (other.inner_loss_scale(5) != ours.inner_loss_scale(5)) == (
        switch == "inner_loss_reduction")
    assert (other.inner_filter() != ours.inner_filter()) == (switch == "inner_adapt_exclude")
    for data_switch in ("omniglot_resize", "rotation_sampling"):
        assert (getattr(other, data_switch) != getattr(ours, data_switch)) == (
            switch == data_switch)


def test_the_ours_preset_builds_the_network_it_built_before_the_switches():
    model, _, example = runner.build_model(_config(ways=5), "xla")
    before = networks.omniglot_conv4(5, "transductive", "xla")
    key = jax.random.PRNGKey(3)
    jax.tree.map(np.testing.assert_array_equal, model.init(key, example),
                 before.init(key, example))
    assert _config(ways=5).fidelity.inner_filter() is None  # the unfiltered inner step


# --- The inner loss, the inner-loop filter, batch norm, the head ----------------------------

def _conv4_problem(ways, shots=2, **model_options):
    model = networks.omniglot_conv4(ways, **model_options)
    tasks = random_image_episodes(1, ways, ways * shots, ways, seed=ways)
    task = jax.tree.map(lambda a: a[0], tasks)
    params, state = split_variables(model.init(jax.random.PRNGKey(0), task.support_x))
    return model, classification_loss(model), params, state, task


def test_the_summed_loss_step_is_the_reference_step_and_ways_times_the_mean_step():
    ways, shots, alpha = 5, 2, 0.4
    model, loss_fn, params, state, task = _conv4_problem(ways, shots)
    scale = _config(ways=ways, inner_loss_reduction="sum_div_shots").fidelity.inner_loss_scale(
        ways)
    summed = maml.inner_step(loss_fn, params, state, task.support_x, task.support_y,
                             inner_lr=alpha, first_order=False, loss_scale=scale)
    mean = maml.inner_step(loss_fn, params, state, task.support_x, task.support_y,
                           inner_lr=alpha, first_order=False)

    def reference_loss(p):  # cbfinn/maml utils.py xent: CE / K per example, summed by tf.gradients
        logits = model.apply({"params": p}, task.support_x, train=True)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, task.support_y)
                       / shots)

    reference_grads = jax.grad(reference_loss)(params)
    for path, leaf in flatten(summed).items():
        theta, g = flatten(params)[path], flatten(reference_grads)[path]
        np.testing.assert_allclose(leaf, theta - alpha * g, rtol=1e-5, atol=1e-6, err_msg=path)
        step_sum, step_mean = leaf - theta, flatten(mean)[path] - theta
        np.testing.assert_allclose(step_sum, ways * step_mean, rtol=2e-3, atol=1e-6,
                                   err_msg=path)


def test_with_four_ways_the_summed_step_is_bit_identical_to_the_mean_at_four_alpha():
    # Scaling by a power of two is exact in floating point, so here "N times" is exact.
    _, loss_fn, params, state, task = _conv4_problem(4)
    summed = maml.inner_loop(loss_fn, params, state, task.support_x, task.support_y,
                             inner_lr=0.1, steps=2, loss_scale=4.0)
    mean = maml.inner_loop(loss_fn, params, state, task.support_x, task.support_y,
                           inner_lr=0.4, steps=2)
    jax.tree.map(np.testing.assert_array_equal, summed, mean)
    # The test-time adaptation takes the same loss as meta-training, as the reference's does.
    tasks = jax.tree.map(lambda a: a[None], task)
    evaluate = lambda lr, **scale: evaluation.make_adaptation_eval(
        loss_fn, inner_lr=lr, steps=2, metric="accuracy", **scale)(params, state, tasks)
    jax.tree.map(np.testing.assert_array_equal, evaluate(0.1, loss_scale=4.0), evaluate(0.4))


@pytest.mark.parametrize("scan", [False, True])
def test_the_reference_filter_keeps_the_bn_shift_bit_identical_and_adapts_the_rest(scan):
    fidelity = _config(fidelity_preset="reference").fidelity
    _, loss_fn, params, state, task = _conv4_problem(
        3, bn_scale=fidelity.bn_scale, bn_epsilon=fidelity.bn_epsilon)
    adapts = fidelity.inner_filter()
    loop = maml.scanned_inner_loop if scan else (
        lambda *a, **k: maml.inner_loop(*a, **k)[-1])
    adapted = loop(loss_fn, params, state, task.support_x, task.support_y, inner_lr=0.4,
                   steps=3, adapts=adapts)
    before, after = flatten(params), flatten(adapted)
    shifts = [path for path in before if "/bn/" in path]
    assert shifts == [path for path in before if path.endswith("bn/bias")] and len(shifts) == 4
    for path in before:
        if path in shifts:
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)
        elif not path.endswith("conv/bias"):
            assert np.any(after[path] != before[path]), path
        # (A conv bias feeds batch norm, which removes any per-channel constant: its
        # gradient is zero but for rounding, so whether it moves says nothing.)
    # The outer optimizer still trains the shift: its meta-gradient is not zero.
    cfg = maml.MamlConfig(inner_lr=0.4, adapts=adapts)
    tasks = jax.tree.map(lambda a: a[None], task)
    _, grads = maml.meta_gradient(loss_fn, params, state, tasks, cfg)
    assert all(np.any(flatten(grads)[path] != 0) for path in shifts)


def test_without_scale_batch_norm_has_only_its_shift_and_uses_its_epsilon():
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 5, 5, 4)) * 0.02 + 0.3
    bn = networks.BatchNorm(use_scale=False, epsilon=1e-3)
    variables = bn.init(jax.random.PRNGKey(0), x, train=True)
    assert set(variables["params"]) == {"bias"}
    bias = jnp.linspace(-1.0, 1.0, 4)
    out = bn.apply({"params": {"bias": bias}}, x, train=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / jnp.sqrt(var + 1e-3) + bias, atol=1e-4)
    # The epsilon matters at this variance: 1e-5 normalises differently.
    default = (x - mean) / jnp.sqrt(var + 1e-5) + bias
    assert np.max(np.abs(out - default)) > 0.1
    _, _, params, _, _ = _conv4_problem(3, bn_scale=False)
    assert not any(path.endswith("/scale") for path in flatten(params))


@pytest.mark.parametrize("head_init, std", [("normal", 1.0), ("lecun_normal", 1 / 8),
                                            ("glorot_uniform", np.sqrt(2 / (64 + 20)))])
def test_the_head_init_has_its_standard_deviation_and_a_zero_bias(head_init, std):
    model, _, example = runner.build_model(_config(ways=20, head_init=head_init), "xla")
    params, _ = split_variables(model.init(jax.random.PRNGKey(0), example))
    kernel = np.asarray(params["head"]["kernel"])
    assert kernel.shape == (64, 20)
    assert abs(kernel.std() / std - 1) < 0.1 and abs(kernel.mean()) < 0.2 * std
    np.testing.assert_array_equal(params["head"]["bias"], 0.0)
    # Only the head: the trunk is initialised as before.
    ours, _ = split_variables(runner.build_model(_config(ways=20), "xla")[0].init(
        jax.random.PRNGKey(0), example))
    jax.tree.map(np.testing.assert_array_equal, params["trunk"], ours["trunk"])


# --- Omniglot runs: rotations, resume ------------------------------------------------------

@pytest.fixture(scope="module")
def fake_omniglot(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    # 16 characters: 6 train, 5 validation, 5 test (5-way episodes of distinct characters).
    write_fake_omniglot(str(root / "omniglot"), n_alphabets=2, chars_per_alphabet=4)
    return root


def _omniglot_config(root, workdir="run", **fields):
    base = dict(workdir=str(root / workdir), dataset="omniglot",
                data_dir=str(root / "omniglot"), cache_dir=str(root / "cache"),
                omniglot_split=(6, 5), ways=5, shots=1, query=2, meta_batch_size=2,
                inner_lr=0.4, num_steps=4, eval_every=2, checkpoint_every=2, log_every=2,
                eval_tasks=4, val_tasks=2, eval_inner_steps=1, num_devices=1, progress=False)
    base.update(fields)
    return runner.MamlRunConfig(**base)


def _characters_per_episode(config, root, episodes=200):
    """For each training episode of the run, the Omniglot characters of its classes."""
    splits = load_omniglot(config.data_dir, config.cache_dir, split_sizes=(6, 5),
                           resize=config.fidelity.omniglot_resize)
    images = splits["train"].images
    character_of = {}
    for cls in range(images.shape[0]):
        for drawing in images[cls]:
            character_of.setdefault(drawing.tobytes(), set()).add(cls // 4)
    assert all(len(c) == 1 for c in character_of.values())
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    sample = episodes_lib.image_episodes(config, mesh).train
    found = []
    for index in range(episodes // config.meta_batch_size):
        support = np.asarray(sample(index).support_x)
        pixels = np.rint(support * 255).astype(np.uint8)
        for task in pixels:
            found.append([next(iter(character_of[image.tobytes()])) for image in task])
    return found


def test_under_the_reference_sampling_no_episode_holds_two_rotations_of_one_character(
        fake_omniglot):
    reference = _characters_per_episode(
        _omniglot_config(fake_omniglot, rotation_sampling="per_episode"), fake_omniglot)
    assert all(len(set(chars)) == len(chars) for chars in reference)
    ours = _characters_per_episode(_omniglot_config(fake_omniglot), fake_omniglot)
    shared = sum(len(set(chars)) < len(chars) for chars in ours)
    assert shared > len(ours) // 2  # 5 of 24 rotated classes of 6 characters: most episodes


def test_a_reference_run_records_its_details_and_refuses_a_changed_preset_on_resume(
        fake_omniglot):
    config = _omniglot_config(fake_omniglot, fidelity_preset="reference")
    results = experiment.train_and_evaluate(config, runner.build)
    assert results["fidelity"] == REFERENCE_OMNIGLOT
    stored = json.loads((fake_omniglot / "run" / "config.json").read_text())
    assert stored["fidelity_preset"] == "reference"
    assert stored["fidelity"] == {k: v for k, v in REFERENCE_OMNIGLOT.items() if k != "preset"}
    assert results["config"]["fidelity"] == stored["fidelity"]
    params = experiment.load_params(config.workdir, "latest")
    assert not any(path.endswith("/scale") for path in flatten(params))
    assert 0.0 <= results["test"]["mean"] <= 100.0
    assert any("nearest_binary" in name for name in os.listdir(fake_omniglot / "cache"))
    with pytest.raises(ConfigError) as info:
        experiment.train_and_evaluate(dataclasses.replace(config, fidelity_preset="ours"),
                                      runner.build)
    message = str(info.value)
    assert "\n" not in message
    assert "fidelity_preset: 'reference' -> 'ours'" in message
    assert "fidelity.bn_scale: False -> True" in message
    with pytest.raises(ConfigError, match="inner_loss_reduction: None -> 'mean'"):
        experiment.train_and_evaluate(
            dataclasses.replace(config, inner_loss_reduction="mean"), runner.build)


def test_a_run_started_before_the_switches_resumes_as_ours_and_only_as_ours(fake_omniglot):
    full = experiment.train_and_evaluate(_omniglot_config(fake_omniglot, "full"), runner.build)
    interrupted = _omniglot_config(fake_omniglot, "before", num_steps=2)
    experiment.train_and_evaluate(interrupted, runner.build)
    path = fake_omniglot / "before" / "config.json"  # as the code before the switches wrote it
    stored = json.loads(path.read_text())
    for name in ("fidelity_preset", "fidelity", *fidelity_lib.SWITCHES):
        del stored[name]
    path.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="fidelity_preset: 'ours' -> 'reference'"):
        experiment.train_and_evaluate(
            dataclasses.replace(interrupted, num_steps=4, fidelity_preset="reference"),
            runner.build)
    with pytest.raises(ConfigError, match="head_init: None -> 'normal'"):
        experiment.train_and_evaluate(
            dataclasses.replace(interrupted, num_steps=4, head_init="normal"), runner.build)
    resumed = experiment.train_and_evaluate(dataclasses.replace(interrupted, num_steps=4),
                                            runner.build)
    assert resumed["test"] == full["test"]
    assert resumed["fidelity"] == OURS_OMNIGLOT


def test_the_cli_refuses_a_changed_preset_on_resume_with_one_line(tmp_path):
    common = ["--noprogress", f"--workdir={tmp_path / 'run'}", "--shots=2", "--query=2",
              "--meta_batch_size=2", "--num_steps=2", "--eval_every=0", "--checkpoint_every=2",
              "--eval_tasks=2", "--eval_inner_steps=1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda *extra: subprocess.run([sys.executable, "-m", "experiments.maml", *common,
                                         *extra], cwd=REPO, env=env, capture_output=True,
                                        text=True, timeout=300)
    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    refused = run("--fidelity_preset=reference")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: ") and "fidelity_preset: 'ours' -> 'reference'" in lines[0]
