"""Tests of domain adaptation: the gradient reversal layer, DANN's schedules in closed form,
the target domains, source-only and DANN runs on fake data, selection that never reads target
test labels (and says so when it reads target validation labels), and DANN's resume."""

import json
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import experiment
from core.errors import ConfigError, DataError
from core.metrics import read_metrics
from tests.transfer.transfer_fixtures import Interrupted, interrupted_at, make_config, rows, train
from transfer import da_data, dann, runner
from transfer import data as data_lib

X = jax.random.normal(jax.random.PRNGKey(0), (3, 4))


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_the_reversal_is_the_identity_forward_and_minus_lambda_g_backward(lam):
    out, vjp = jax.vjp(dann.gradient_reversal, X, jnp.float32(lam))
    np.testing.assert_array_equal(out, X)
    g = jax.random.normal(jax.random.PRNGKey(1), X.shape)
    grad_x, grad_lam = vjp(g)
    np.testing.assert_allclose(grad_x, -lam * g, rtol=1e-6)
    assert grad_lam == 0
    head = lambda z: jnp.sum(jnp.tanh(z) ** 2)
    through = jax.jit(jax.grad(lambda x: head(dann.gradient_reversal(2 * x, lam))))(X)
    np.testing.assert_allclose(through, -lam * jax.grad(lambda x: head(2 * x))(X), rtol=1e-5,
                               atol=1e-6)


def test_the_reversal_schedule_is_the_papers_closed_form():
    p = jnp.linspace(0, 1, 11)
    np.testing.assert_allclose(dann.reversal_lambda(p), 2 / (1 + np.exp(-10 * p)) - 1,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dann.reversal_lambda(p, 4.0), np.tanh(2.0 * p), rtol=1e-6,
                               atol=1e-7)
    assert dann.reversal_lambda(0.0) == 0
    assert dann.reversal_lambda(0.52) < 0.99 < dann.reversal_lambda(0.53)
    np.testing.assert_allclose(dann.progress(jnp.int32(30), 120), 0.25)
    assert dann.progress(jnp.int32(200), 120) == 1


def test_the_learning_rate_annealing_is_the_papers_closed_form():
    np.testing.assert_allclose(dann.annealing_factor(jnp.array([0.0, 0.5, 1.0])),
                               [1.0, 6 ** -0.75, 11 ** -0.75], rtol=1e-6)
    annealing = dann.lr_annealing(num_steps=4)
    state = annealing.init({"w": jnp.zeros(2)})
    factors = []
    for _ in range(3):
        update, state = annealing.update({"w": jnp.ones(2)}, state)
        factors.append(float(update["w"][0]))
    np.testing.assert_allclose(factors, [1.0, 3.5 ** -0.75, 6 ** -0.75], rtol=1e-6)


def _fake_sklearn():
    """A stand-in `sklearn` whose load_digits returns 1,797 random 8x8 digits in 0..16."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, (1797, 8, 8)).astype(np.float64)
    datasets = types.ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: types.SimpleNamespace(images=images,
                                                         target=np.arange(1797) % 10)
    package = types.ModuleType("sklearn")
    package.datasets = datasets
    return {"sklearn": package, "sklearn.datasets": datasets}


def test_the_digits_are_upsampled_into_a_mnist_frame_and_split_by_seed():
    digits = np.zeros((2, 8, 8))
    digits[:, 2:6, 3:5] = 16
    framed = da_data.upsample_digits(digits)
    assert framed.shape == (2, 28, 28, 1) and framed.dtype == np.uint8
    assert framed.max() == 255 and not framed[:, :4].any() and not framed[:, :, 24:].any()
    with pytest.MonkeyPatch.context() as patch:
        for name, module in _fake_sklearn().items():
            patch.setitem(sys.modules, name, module)
        domain = da_data.load_domain("sklearn_digits", "mnist", None, (3, 1), 20, 0)
        again = da_data.load_domain("sklearn_digits", "mnist", None, (3, 1), 20, 1)
    sizes = {k: len(v) for k, v in domain.splits.items()}
    assert sizes["val"] == 20 and sum(sizes.values()) == 360
    fixed_test = np.random.default_rng(da_data.DIGITS_SPLIT_SEED).permutation(1797)[:597]
    assert sizes["test"] == np.isin(fixed_test % 10, (3, 1)).sum()
    np.testing.assert_array_equal(domain.splits["test"].x, again.splits["test"].x)
    assert not np.array_equal(domain.splits["val"].x, again.splits["val"].x)
    assert set(np.unique(domain.splits["train"].y["label"])) == {0, 1}
    assert dict(domain.images("val").y) == {}


def test_without_scikit_learn_the_digits_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        da_data.load_domain("sklearn_digits", "mnist", None, (), 20, 0)


def test_the_inverted_domain_is_one_minus_the_source(mnist_dir):
    domain = da_data.load_domain("inverted", "mnist", mnist_dir, (5, 6), 4, 0)
    source = data_lib.load_target("mnist", mnist_dir, (5, 6), 0, 4, 0)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(domain.splits[split].x, 255 - source.splits[split].x)
        np.testing.assert_array_equal(domain.splits[split].y["label"],
                                      source.splits[split].y["label"])


DANN_OPTIONS = dict(strategy="dann", da_target="inverted", da_val_size=10,
                    da_selection="target_entropy", da_lr_annealing=True, domain_hidden=(6,),
                    augment="shift")


@pytest.fixture(scope="module")
def dann_run(tmp_path_factory, mnist_dir):
    workdir = tmp_path_factory.mktemp("dann") / "run"
    return workdir, train(make_config(workdir, mnist_dir, **DANN_OPTIONS))


@pytest.fixture(scope="module")
def source_only_run(tmp_path_factory, mnist_dir):
    """Source only, on the (fake) scikit-learn digits, selected by the oracle."""
    workdir = tmp_path_factory.mktemp("source_only") / "run"
    with pytest.MonkeyPatch.context() as patch:
        for name, module in _fake_sklearn().items():
            patch.setitem(sys.modules, name, module)
        return workdir, train(make_config(workdir, mnist_dir, strategy="source_only",
                                          da_target="sklearn_digits", da_val_size=10,
                                          da_selection="oracle"))


def test_dann_trains_a_domain_classifier_and_selects_without_target_labels(dann_run):
    workdir, results = dann_run
    assert results["selection"] == "target_entropy" and results["da_target"] == "inverted"
    test = results["test"]
    assert test["domain"] == "inverted" and test["num_examples"] == 40
    assert test["source_domain"]["num_examples"] == 40 and 0 <= test["accuracy"] <= 1
    val = read_metrics(str(workdir), split="val")
    assert val and all("target_entropy" in r and "target_accuracy" not in r for r in val)
    best = min(val, key=lambda r: r["target_entropy"])
    assert results["best_step"] == best["step"]
    train_rows = read_metrics(str(workdir), split="train")
    lambdas = [r["reversal_lambda"] for r in train_rows]
    np.testing.assert_allclose(lambdas, dann.reversal_lambda(np.arange(4) / 4), rtol=1e-6)
    assert all(0 <= r["domain_accuracy"] <= 1 for r in train_rows)
    record = json.loads((workdir / runner.RECORD_FILE).read_text())
    domain = {p: e for p, e in record["parameters"].items() if p.startswith("domain/")}
    assert set(domain) == {"domain/dense0/kernel", "domain/dense0/bias",
                           "domain/logit/kernel", "domain/logit/bias"}
    assert all(e["group"] == "domain" and e["init"] == "fresh" and not e["frozen"]
               for e in domain.values())
    assert record["dann"]["domain_hidden"] == [6] and record["lr_annealing"]
    assert record["augmentation"] == {"pipeline": "shift", "from": "flag"}
    params = experiment.load_params(str(workdir), "latest")
    assert set(params) == {"trunk", "head", "domain"}


def test_source_only_runs_and_the_oracle_is_labelled_as_such(source_only_run):
    workdir, results = source_only_run
    stored = json.loads((workdir / "results.json").read_text())
    assert stored["selection"] == "oracle" and stored["test"]["selection"] == "oracle"
    assert stored["test"]["domain"] == "sklearn_digits"
    assert stored["num_target_train_images"] == 1190
    val = read_metrics(str(workdir), split="val")
    assert all("target_accuracy" in r for r in val)
    assert results["best_step"] == max(val, key=lambda r: r["target_accuracy"])["step"]
    assert set(experiment.load_params(str(workdir), "latest")) == {"trunk", "head"}
    assert "selection: oracle (target labels chose the checkpoint" in runner.report(results)
    assert json.loads((workdir / runner.RECORD_FILE).read_text())["dann"] is None


def test_dann_interrupted_mid_run_resumes_bit_identically(dann_run, tmp_path, mnist_dir):
    full_dir, full = dann_run
    config = make_config(tmp_path / "run", mnist_dir, checkpoint_every=2, **DANN_OPTIONS)
    with pytest.raises(Interrupted):
        train(config, interrupted_at(3))
    assert experiment.load_train_state(config.workdir, "latest")["step"] == 2
    resumed = train(config)
    assert resumed["test"] == full["test"] and resumed["best_step"] == full["best_step"]
    chex.assert_trees_all_equal(experiment.load_train_state(config.workdir, "latest"),
                                experiment.load_train_state(str(full_dir), "latest"))
    assert rows(config.workdir) == rows(full_dir)
    with pytest.raises(ConfigError, match="num_steps: 4 -> 6"):
        train(make_config(tmp_path / "run", mnist_dir, num_steps=6, checkpoint_every=2,
                          **DANN_OPTIONS))


@pytest.mark.parametrize("overrides, error, message", [
    ({"da_target": "none"}, ConfigError, "needs a target domain"),
    ({"da_target": "sklearn_digits", "dataset": "fashion_mnist"}, ConfigError,
     "its source is --dataset=mnist"),
    ({"da_selection": "target_entropy", "da_val_size": 0}, ConfigError,
     "needs --da_val_size >= 1"),
    ({"da_selection": "oracle", "eval_every": 0}, ConfigError, "and --eval_every >= 1"),
    ({"da_val_size": 100}, ConfigError, "--da_val_size=100 would leave no target training"),
    ({"strategy": "source_only", "dann_weight": 0.5}, ConfigError,
     "--dann_weight applies to --strategy=dann"),
    ({"strategy": "scratch", "da_target": "inverted"}, ConfigError,
     "--da_target applies to --strategy=source_only/dann"),
    ({"source_workdir": "SOURCE"}, ConfigError, "--strategy=dann trains from a fresh init"),
    ({"domain_hidden": (0,)}, ConfigError, "--domain_hidden widths must be >= 1"),
])
def test_bad_domain_adaptation_input_is_one_clear_error(tmp_path, mnist_dir, source, overrides,
                                                        error, message):
    if overrides.get("source_workdir") == "SOURCE":
        overrides = dict(overrides, source_workdir=source)
    options = dict(dict(strategy="dann", da_target="inverted", da_val_size=10), **overrides)
    with pytest.raises(error, match=message):
        train(make_config(tmp_path / "run", mnist_dir, **options))
