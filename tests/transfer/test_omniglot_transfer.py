"""The Omniglot transfer benchmarks on fake zips: splits, the Conv4 trunk, MAML sources, flagfiles.

The fake zips (`core.datasets.fake.write_fake_omniglot`, 28 px) hold 6 characters each, 12 in
all; the MAML split is drawn with --omniglot_split=6,3 (6 training, 3 validation, 3 test).
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from core import cli
from core import experiment
from core import networks as core_networks
from core.datasets import omniglot
from core.datasets.fake import write_fake_omniglot
from core.errors import ConfigError, DataError
from core.trunks import Conv4Trunk
from meta import runner as maml_runner
from transfer import data, networks, omniglot_data, runner
from tests.transfer.transfer_fixtures import train

SPLIT = (6, 3)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGFILES = sorted(glob.glob(os.path.join(REPO, "experiments", "flags", "transfer",
                                          "omniglot_*.flags")))


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    """(data_dir, cache_dir) of fake Omniglot zips."""
    root = tmp_path_factory.mktemp("omniglot")
    write_fake_omniglot(str(root / "data"), n_alphabets=2, chars_per_alphabet=3, image_size=28)
    return str(root / "data"), str(root / "cache")


def _load(omni, dataset, k=1, seed=0, **options):
    data_dir, cache_dir = omni
    options = omniglot_data.OmniglotOptions(cache_dir=cache_dir, maml_split=SPLIT, **options)
    return data.load_target(dataset, data_dir, (), k, 0, seed, omniglot=options)


def _keys(split):
    """{(label, image bytes)} of a split: which drawing of which class each example is."""
    return {(int(y), x.tobytes()) for x, y in zip(split.x, split.y["label"])}


def test_characters_know_their_zip_and_the_split_is_load_omniglots(omni):
    characters = omniglot.load_omniglot_characters(*omni)
    background = characters.of_zip(omniglot.OMNIGLOT_ZIP_NAMES[0])
    assert len(background) == 6 and len(characters.of_zip(omniglot.OMNIGLOT_ZIP_NAMES[1])) == 6
    assert all(characters.names[i].startswith("Background") for i in background)
    split = omniglot.maml_character_split(len(characters.names), SPLIT)
    rotated = omniglot.load_omniglot(*omni, split_sizes=SPLIT)
    for name, indices in split.items():
        names = [f"{characters.names[i]}/rot{r}" for i in indices for r in omniglot.ROTATIONS]
        assert list(rotated[name].class_names) == names
    with pytest.raises(DataError, match="1201"):
        omniglot.maml_character_split(12)


@pytest.mark.parametrize("dataset", omniglot_data.DATASETS)
def test_splits_are_disjoint_with_the_right_counts_per_class(omni, dataset):
    target = _load(omni, dataset, k=5)
    counts = {"train": 5, "val": 2, "test": 5}
    classes = {"omniglot_maml_train": 24, "omniglot_maml_test": 3}.get(dataset, 6)
    assert target.num_classes == len(target.class_names) == classes
    for name, split in target.splits.items():
        assert split.x.shape[1:] == (28, 28, 1) and split.x.dtype == np.uint8
        assert np.bincount(split.y["label"], minlength=classes).tolist() == [counts[name]] * classes
    keys = {name: _keys(split) for name, split in target.splits.items()}
    assert sum(map(len, keys.values())) == 12 * classes
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert not keys["train"] & keys["val"]


def test_splits_are_seeded_fixed_across_k_and_nested(omni):
    one, five, again = (_load(omni, "omniglot_evaluation", k=k) for k in (1, 5, 1))
    other = _load(omni, "omniglot_evaluation", k=1, seed=1)
    for name in ("train", "val", "test"):
        assert np.array_equal(one.splits[name].x, again.splits[name].x)
    assert _keys(one.splits["test"]) == _keys(five.splits["test"])
    assert _keys(one.splits["val"]) == _keys(five.splits["val"])
    assert _keys(one.splits["train"]) < _keys(five.splits["train"])
    assert _keys(other.splits["test"]) != _keys(one.splits["test"])
    subsets = {_load(omni, "omniglot_evaluation", seed=s, num_classes=3).class_names
               for s in range(4)}
    assert len(subsets) > 1 and all(len(names) == 3 for names in subsets)


def test_the_maml_test_target_holds_no_maml_train_character(omni):
    train_names = {n.rsplit("/rot", 1)[0] for n in _load(omni, "omniglot_maml_train").class_names}
    rotations = {n.rsplit("/rot", 1)[1] for n in _load(omni, "omniglot_maml_train").class_names}
    test_names = set(_load(omni, "omniglot_maml_test").class_names)
    assert len(train_names) == 6 and rotations == {"0", "90", "180", "270"}
    assert len(test_names) == 3 and not train_names & test_names


@pytest.mark.parametrize("options, match", [
    (dict(test_per_class=5, val_per_class=10), "exceed the 20"),
    (dict(num_classes=7), "has 6 characters"),
])
def test_bad_counts_are_one_config_error(omni, options, match):
    with pytest.raises(ConfigError, match=match):
        _load(omni, "omniglot_evaluation", k=6, **options)


def test_a_missing_zip_names_the_file_and_where_to_get_it(tmp_path):
    write_fake_omniglot(str(tmp_path), n_alphabets=1, chars_per_alphabet=1, drawers=2,
                        image_size=28)
    os.remove(tmp_path / "images_evaluation.zip")
    options = omniglot_data.OmniglotOptions(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="images_evaluation.zip.*brendenlake/omniglot"):
        omniglot_data.load_splits("omniglot_background", str(tmp_path), options, 1, 0)


@pytest.mark.parametrize("overrides, match", [
    (dict(dataset="mnist", num_classes_target=5), "--num_classes_target applies"),
    (dict(classes=(1, 2)), "--num_classes_target instead of --classes"),
    (dict(val_size=100), "--val_per_class instead of --val_size"),
    (dict(strategy="dann", da_target="inverted"), "MNIST-family"),
    (dict(dataset="mnist", omniglot_resize="nearest_binary"), "--omniglot_resize applies"),
    (dict(network="lenet", bn_scale=False), "--bn_scale is the batch norm of --network=conv4"),
    (dict(network="mlp", bn_epsilon=1e-3), "--bn_epsilon is the batch norm"),
    (dict(bn_epsilon=0.0), "--bn_epsilon must be > 0"),
    (dict(cut_features="mean"), "--cut_features applies to --network=conv4 cut by"),
    (dict(network="lenet", strategy="keep_blocks", keep_blocks=2, cut_features="mean",
          source_workdir="/s"), "--cut_features applies"),
])
def test_omniglot_flags_only_where_they_act(overrides, match):
    config = runner.TransferRunConfig(**dict(dict(dataset="omniglot_evaluation", network="conv4",
                                                  strategy="scratch", data_dir="/d",
                                                  workdir="/w"), **overrides))
    with pytest.raises(ConfigError, match=match):
        config.validate()


@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
def test_conv4_cut_networks_build_and_match_maml_layout(blocks):
    model = networks.make_classifier("conv4", 7, blocks, conv_impl="im2col")
    x = jnp.asarray(np.random.default_rng(0).random((6, 28, 28, 1)), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    assert sorted(params["trunk"]) == [f"block{i}" for i in range(blocks)]
    assert model.apply({"params": params}, x).shape == (6, 7)
    features = {1: 14 * 14 * 64, 2: 7 * 7 * 64, 3: 4 * 4 * 64, 4: 64}[blocks]  # flattened cuts
    assert params["head"]["kernel"].shape == (features, 7)
    if blocks < 4:
        averaged = networks.make_classifier("conv4", 7, blocks, conv_impl="im2col",
                                            cut_features="mean")
        mean_params = averaged.init(jax.random.PRNGKey(0), x, train=False)["params"]
        assert mean_params["head"]["kernel"].shape == (64, 7)
        maps = model.apply({"params": params}, x, method=networks.Classifier.features)
        assert np.allclose(averaged.apply({"params": dict(params, head=mean_params["head"])}, x,
                                          method=networks.Classifier.features),
                           maps.reshape(6, -1, 64).mean(axis=1), atol=1e-6)
    padded = jnp.concatenate([x, jnp.zeros((3, 28, 28, 1))])
    features = model.apply({"params": params}, x, method=networks.Classifier.features)
    assert np.allclose(model.apply({"params": params}, padded,
                                   method=networks.Classifier.features)[:6], features)
    if blocks == 4:
        maml = core_networks.omniglot_conv4(5, conv_impl="im2col")
        maml_params = maml.init(jax.random.PRNGKey(1), x)["params"]
        assert (jax.tree.structure(maml_params["trunk"])
                == jax.tree.structure(params["trunk"]))
        reference = Conv4Trunk(filters=64, conv_impl="im2col").apply(
            {"params": params["trunk"]}, x, train=False)
        assert np.allclose(reference, features, atol=1e-6)


def test_the_conv4_without_scale_is_the_maml_reference_trunk():
    x = jnp.asarray(np.random.default_rng(0).random((6, 28, 28, 1)), jnp.float32)
    model = networks.make_classifier("conv4", 7, 4, conv_impl="im2col", bn_scale=False,
                                     bn_epsilon=1e-3)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    assert sorted(params["trunk"]["block0"]["bn"]) == ["bias"]
    params = jax.tree.map(lambda p: p + 0.1, params)  # a shift that is not zero
    trunk = Conv4Trunk(filters=64, conv_impl="im2col", bn_scale=False, bn_epsilon=1e-3)
    expected = trunk.apply({"params": params["trunk"]}, x, train=False)
    features = model.apply({"params": params}, x, method=networks.Classifier.features)
    assert np.allclose(expected, features, atol=1e-6)
    other_epsilon = networks.make_classifier("conv4", 7, 4, conv_impl="im2col", bn_scale=False)
    assert not np.allclose(other_epsilon.apply({"params": params}, x,
                                               method=networks.Classifier.features), features,
                           atol=1e-6)


def test_the_resize_flag_reaches_the_target_images(tmp_path):
    write_fake_omniglot(str(tmp_path / "data"), n_alphabets=1, chars_per_alphabet=1,
                        image_size=105)  # resized to 28 px: Lanczos gives grey levels
    omni_105 = (str(tmp_path / "data"), str(tmp_path / "cache"))
    binary = _load(omni_105, "omniglot_evaluation", resize="nearest_binary").splits["train"].x
    grey = _load(omni_105, "omniglot_evaluation").splits["train"].x
    assert set(np.unique(binary).tolist()) == {0, 255} and len(np.unique(grey)) > 2


def _maml_run(directory, omni, preset):
    """A 2-step MAML Omniglot run directory (3-way 1-shot, transductive batch norm)."""
    data_dir, cache_dir = omni
    config = maml_runner.MamlRunConfig(
        workdir=str(directory), dataset="omniglot", data_dir=data_dir, cache_dir=cache_dir,
        omniglot_split=SPLIT, ways=3, shots=1, query=1, meta_batch_size=1, inner_lr=0.4,
        num_steps=2, eval_every=2, checkpoint_every=2, log_every=2, eval_tasks=1, val_tasks=1,
        eval_inner_steps=1, num_devices=1, progress=False, fidelity_preset=preset)
    experiment.train_and_evaluate(config, maml_runner.build)
    return str(directory)


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory, omni):
    """A MAML run of this library's choices (`--fidelity_preset=ours`)."""
    return _maml_run(tmp_path_factory.mktemp("maml") / "run", omni, "ours")


@pytest.fixture(scope="module")
def reference_maml_run(tmp_path_factory, omni):
    """A MAML run of the reference code's choices: no BN scale, epsilon 1e-3, binary images."""
    return _maml_run(tmp_path_factory.mktemp("maml_reference") / "run", omni, "reference")


def _target(omni, workdir, **overrides):
    data_dir, cache_dir = omni
    base = dict(workdir=str(workdir), data_dir=data_dir, cache_dir=cache_dir,
                dataset="omniglot_maml_test", omniglot_split=SPLIT, network="conv4",
                strategy="finetune", train_per_class=1, batch_size=3, eval_batch_size=8,
                num_steps=2, eval_every=2, checkpoint_every=2, log_every=1, num_devices=1,
                progress=False)
    return runner.TransferRunConfig(**dict(base, **overrides))


def test_a_maml_run_is_a_strict_conv4_source_end_to_end(omni, maml_run, tmp_path):
    results = train(_target(omni, tmp_path / "run", source_workdir=maml_run))
    assert results["test"]["num_examples"] == 15 and 0 <= results["test"]["accuracy"] <= 1
    record = json.loads((tmp_path / "run" / runner.RECORD_FILE).read_text())
    assert record["source"]["config"]["dataset"] == "omniglot"
    params = record["parameters"]
    trunk = [p for p in params if p.startswith("trunk/")]
    assert len(trunk) == 16 and all(params[p]["source"] == p for p in trunk)
    assert {params[p]["init"] for p in params if p.startswith("head/")} == {"fresh"}
    assert sorted(record["ignored_source"]) == ["head/bias", "head/kernel"]


REFERENCE_NETWORK = dict(bn_scale=False, bn_epsilon=1e-3, omniglot_resize="nearest_binary")


def test_a_reference_preset_maml_run_is_a_source_with_its_network(omni, reference_maml_run,
                                                                  tmp_path):
    results = train(_target(omni, tmp_path / "run", source_workdir=reference_maml_run,
                            **REFERENCE_NETWORK))
    assert 0 <= results["test"]["accuracy"] <= 1
    record = json.loads((tmp_path / "run" / runner.RECORD_FILE).read_text())
    trunk = [p for p in record["parameters"] if p.startswith("trunk/")]
    assert len(trunk) == 12 and all(record["parameters"][p]["source"] == p for p in trunk)
    assert not [p for p in trunk if p.endswith("/scale")]


@pytest.mark.parametrize("source, overrides, match", [
    ("reference", {}, "trained with --nobn_scale --bn_epsilon=0.001 "
                      "--omniglot_resize=nearest_binary but this run has --bn_scale "
                      "--bn_epsilon=1e-05 --omniglot_resize=lanczos"),
    ("reference", dict(REFERENCE_NETWORK, omniglot_resize="lanczos"),
     "trained with --omniglot_resize=nearest_binary but"),
    ("ours", dict(bn_epsilon=1e-3), "trained with --bn_epsilon=1e-05 but"),
])
def test_a_source_of_another_network_or_resize_is_refused(omni, maml_run, reference_maml_run,
                                                          tmp_path, source, overrides, match):
    workdir = {"ours": maml_run, "reference": reference_maml_run}[source]
    config = _target(omni, tmp_path / "run", source_workdir=workdir, **overrides)
    with pytest.raises(ConfigError, match=match):
        runner.prepare(config, None)


def test_a_conv4_cut_started_before_cut_features_resumes_only_with_the_mean(omni, maml_run,
                                                                            tmp_path):
    train(_target(omni, tmp_path / "run", source_workdir=maml_run, strategy="keep_blocks",
                  keep_blocks=3, cut_features="mean"))
    path = tmp_path / "run" / "config.json"  # as the code before the option wrote it
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                if k != "cut_features"}))
    more = dict(source_workdir=maml_run, strategy="keep_blocks", keep_blocks=3, num_steps=3)
    with pytest.raises(ConfigError, match="cut_features: 'mean' -> 'flatten'"):
        train(_target(omni, tmp_path / "run", **more))
    assert train(_target(omni, tmp_path / "run", cut_features="mean", **more))["steps"] == 3


def test_a_maml_source_with_another_split_is_refused(omni, maml_run, tmp_path):
    with pytest.raises(ConfigError, match="omniglot_split=6,3"):
        runner.prepare(_target(omni, tmp_path / "run", source_workdir=maml_run,
                               omniglot_split=(5, 3)), None)


def _parse(path, *extra):
    values = flags.FlagValues()
    cli.define_flags(runner.TransferRunConfig, values)
    values(["transfer", f"--flagfile={path}", "--data_dir=/data", "--train_per_class=5", *extra])
    return cli.config_from_flags(runner.TransferRunConfig, values)


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_each_omniglot_flagfile_is_a_valid_documented_run(path):
    with open(path) as f:
        lines = f.read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[:len(header)] == header and header[-1].startswith("# Published number: none (")
    run = [line for line in header if line.startswith("# Run: python -m experiments.transfer")]
    assert len(run) == 1 and f"--flagfile=experiments/flags/transfer/{os.path.basename(path)}" \
        in run[0]
    source = [arg for arg in run[0].split() if arg.startswith("--source_workdir=")]
    config = _parse(path, *source)
    config.validate()
    assert config.network == "conv4"
    name = os.path.basename(path)
    if name.endswith("_source.flags"):
        assert config.strategy == "scratch" and not source
        assert config.dataset in ("omniglot_background", "omniglot_maml_train")
    elif name.startswith("omniglot_eval_"):
        assert config.dataset == "omniglot_evaluation"
        assert bool(source) == (config.strategy != "scratch")
    else:
        assert config.dataset == "omniglot_maml_test" and config.num_classes_target == 20
