"""Tests of `transfer.distillation`: the loss (λ = 0 is the task loss, KL(z, z) = 0, the T²
scaling of the soft gradient against its closed form), the step, and a distillation run from a
teacher of another architecture, with clear errors for a teacher that does not fit."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core import experiment
from core import train_state
from core.errors import ConfigError, DataError
from core.metrics import read_metrics
from tests.transfer.transfer_fixtures import make_config, train
from transfer import distillation, networks, runner, steps, strategies

STUDENT = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
TEACHER = 3 * jax.random.normal(jax.random.PRNGKey(1), (6, 5))
LABELS = jnp.array([0, 1, 2, 3, 4, 0])


def test_lambda_zero_is_the_plain_task_loss():
    loss, parts = distillation.distillation_loss(STUDENT, TEACHER, LABELS, 0.0, 4.0)
    task = optax.softmax_cross_entropy_with_integer_labels(STUDENT, LABELS).mean()
    assert loss == task and parts["cross_entropy"] == task and parts["distill_kl"] > 0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_the_kl_term_is_zero_when_the_student_is_the_teacher(temperature):
    assert distillation.soft_kl(TEACHER, TEACHER, temperature) == 0
    loss, _ = distillation.distillation_loss(TEACHER, TEACHER, LABELS, 2.0, temperature)
    assert loss == optax.softmax_cross_entropy_with_integer_labels(TEACHER, LABELS).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_the_soft_gradient_is_lambda_t_times_the_softmax_difference(temperature):
    lam = 0.7
    soft = lambda z: lam * temperature ** 2 * distillation.soft_kl(z, TEACHER, temperature)
    closed = lam * temperature * (jax.nn.softmax(STUDENT / temperature)
                                  - jax.nn.softmax(TEACHER / temperature)) / len(STUDENT)
    np.testing.assert_allclose(jax.grad(soft)(STUDENT), closed, rtol=1e-4, atol=1e-7)


def test_t_squared_keeps_the_soft_gradient_at_the_scale_of_the_logit_difference():
    # Hinton et al. §2: at high T the gradient of T²·KL tends to (z_s − z_t) / (N·B) for
    # zero-mean logits, whatever T; without the T² it would shrink like 1/T².
    zero_mean = lambda z: z - z.mean(-1, keepdims=True)
    student, teacher = zero_mean(STUDENT), zero_mean(TEACHER)
    limit = (student - teacher) / (student.shape[1] * len(student))
    scale = float(jnp.abs(limit).max())
    for temperature in (250.0, 1000.0):
        kl = lambda z: distillation.soft_kl(z, teacher, temperature)
        scaled = jax.grad(lambda z: temperature ** 2 * kl(z))(student)
        np.testing.assert_allclose(scaled, limit, rtol=0.03, atol=0.03 * scale)
        np.testing.assert_allclose(jax.grad(kl)(student), scaled / temperature ** 2,
                                   rtol=1e-3, atol=1e-3 * scale / temperature ** 2)


def _tiny(hidden):
    model = networks.make_classifier("mlp", 5, len(hidden), mlp_hidden=hidden)
    params = model.init(jax.random.PRNGKey(len(hidden)), jnp.zeros((1, 28, 28, 1)),
                        train=False)["params"]
    return model, params


def test_a_distill_step_with_lambda_zero_is_the_plain_step():
    model, params = _tiny((10,))
    teacher_model, teacher_params = _tiny((6, 4))
    teacher = distillation.Teacher("teacher", "best", {}, teacher_model, teacher_params)
    groups = strategies.per_block_groups(params, ("dense0",), 0.1)
    optimizer = optax.sgd(0.1)
    logits = steps.logits_fn(model, on_features=False)
    batch = {"x": jax.random.uniform(jax.random.PRNGKey(2), (6, 28, 28, 1)),
             "y": {"label": LABELS}}
    plain, _ = jax.jit(steps.make_train_step(logits, groups, optimizer, 0))(
        train_state.create(params, {}, optimizer), batch)
    distilled, metrics = jax.jit(distillation.make_distill_step(
        logits, teacher, optimizer, 0, 0.0, 4.0))(
        distillation.distill_state(params, optimizer, teacher), batch)
    chex.assert_trees_all_equal(distilled.params, plain.params)
    chex.assert_trees_all_equal(distilled.extra["teacher"], teacher_params)
    assert metrics["loss"] == metrics["cross_entropy"] and metrics["distill_kl"] > 0


def _student(workdir, data_dir, teacher, **overrides):
    options = dict(strategy="distill", teacher_workdir=teacher, classes=(0, 1, 2, 3, 4),
                   train_per_class=4, mlp_hidden=(10,), distill_temperature=2.0,
                   distill_lambda=0.5, augment="source")
    return make_config(workdir, data_dir, **dict(options, **overrides))


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, mnist_dir, source):
    workdir = tmp_path_factory.mktemp("student") / "run"
    return workdir, train(_student(workdir, mnist_dir, source))


def test_a_student_learns_from_a_teacher_of_another_architecture(student_run, source_run,
                                                                 source):
    workdir, results = student_run
    teacher_dir, teacher_results = source_run
    assert results["strategy"] == "distill" and results["source"] is None
    assert results["test"]["teacher"]["accuracy"] == pytest.approx(
        teacher_results["test"]["accuracy"])
    assert 0 <= results["test"]["teacher"]["agreement"] <= 1
    record = json.loads((workdir / runner.RECORD_FILE).read_text())
    assert record["teacher"]["path"] == source and record["teacher"]["which"] == "best"
    assert record["teacher"]["config"]["mlp_hidden"] == [16, 12, 8]
    assert record["distillation"]["lambda"] == 0.5 and record["distillation"]["temperature"] == 2
    assert record["augmentation"] == {"pipeline": "shift", "from": "teacher", "run": source}
    assert set(record["parameters"]) == {"trunk/dense0/kernel", "trunk/dense0/bias",
                                         "head/kernel", "head/bias"}
    final = experiment.load_train_state(str(workdir), "latest")
    chex.assert_trees_all_equal(final["extra"]["teacher"],
                                experiment.load_params(str(teacher_dir), "best"))
    train_rows = read_metrics(str(workdir), split="train")
    assert len(train_rows) == 4 and all(r["loss"] > r["cross_entropy"] for r in train_rows)


@pytest.mark.parametrize("overrides, error, message", [
    ({"teacher_workdir": None}, ConfigError, "--strategy=distill needs --teacher_workdir"),
    ({"distill_temperature": 0.0}, ConfigError, "--distill_temperature must be > 0"),
    ({"strategy": "scratch", "augment": "none"}, ConfigError,
     "--teacher_workdir applies to --strategy=distill"),
    ({"classes": (5, 6, 7, 8, 9)}, ConfigError, "same classes in the same order"),
    ({"val_size": 12}, ConfigError, "--val_size=10, the student --val_size=12"),
    ({"teacher_workdir": "EMPTY"}, DataError, "has no config.json"),
    ({"teacher_workdir": "NOT_TRANSFER"}, DataError, "is not a run of experiments.transfer"),
])
def test_a_teacher_that_does_not_fit_is_one_clear_error(tmp_path, mnist_dir, source, overrides,
                                                        error, message):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "NOT_TRANSFER").mkdir()
    (tmp_path / "NOT_TRANSFER" / "config.json").write_text(json.dumps({"dataset": "mnist"}))
    if overrides.get("teacher_workdir") in ("EMPTY", "NOT_TRANSFER"):
        overrides = dict(overrides, teacher_workdir=str(tmp_path / overrides["teacher_workdir"]))
    with pytest.raises(error, match=message):
        train(_student(tmp_path / "run", mnist_dir, source, **overrides))
