"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a student fitted to a teacher run.

The student (`--network`, freshly initialised: `--strategy=distill`) trains on

    L = CE(z_s, y) + λ · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))

with z_s the student's logits, z_t the teacher's on the same images, λ
`--distill_lambda` and T `--distill_temperature`. The gradient of the soft
term with respect to z_s is λ·T·(softmax(z_s/T) − softmax(z_t/T)), which
shrinks like 1/T² at high temperature as the logits' differences do; the T²
restores the balance with the hard-label term, so λ means the same thing at
every T. (TLlib's KnowledgeDistillationLoss omits T²; big_vision's distill
trainer drops the hard-label term.) λ = 0 is the plain task loss.

The teacher is a run directory of this library (`--teacher_workdir`, the
checkpoint `--which`): any network this family builds, rebuilt from its
config.json (network, MLP widths, kept blocks, classes), so a LeNet teacher
can teach an MLP student. It must have learnt the student's task: the same
dataset and classes in the same order (the KL compares probabilities class
by class), and the same validation split (--val_size, --data_seed), or it may
have trained on the images the student selects its checkpoint with.

The teacher's logits are computed inside the jitted train step, on the
step's batch after augmentation, rather than cached once per training
image: the teacher then sees exactly the view the student sees whatever
`--augment` does (big_vision's consistent teaching), the code path is the
same with and without augmentation, and a teacher forward pass costs less
than the student's forward and backward. The teacher's parameters ride in the
train state's `extra['teacher']`, never differentiated nor updated (like
L2-SP's anchor): a resumed run uses the teacher it started with, restored
from its own checkpoint, so the resume rule "the checkpoint wins" holds for
the teacher as for a source.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from core import experiment
from core import run_dir
from core import supervised
from core import train_state
from core.errors import ConfigError, DataError
from transfer import data as data_lib
from transfer import networks
from transfer.data import LABEL
from transfer.params import flatten
from transfer.steps import LogitsFn

TEACHER = "teacher"
# What transfer.json records of the teacher's config.json.
_TEACHER_KEYS = ("network", "mlp_hidden", "keep_blocks", "dataset", "classes", "val_size",
                 "data_seed", "strategy", "train_per_class", "seed", "augment")
# What the student's own task must share with the teacher's.
_SAME_TASK = ("dataset", "val_size", "data_seed")


def soft_kl(student_logits: jax.Array, teacher_logits: jax.Array,
            temperature: float) -> jax.Array:
    """Mean over the batch of KL(softmax(z_t/T) ‖ softmax(z_s/T)); exactly 0 when z_s is z_t."""
    log_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1))


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      labels: jax.Array, lam: float,
                      temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(CE + λ·T²·KL, {'cross_entropy', 'distill_kl'}) of a batch (see the module docstring)."""
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(student_logits,
                                                                    labels).mean()
    kl = soft_kl(student_logits, teacher_logits, temperature)
    loss = cross_entropy + lam * temperature ** 2 * kl
    return loss, {"cross_entropy": cross_entropy, "distill_kl": kl}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher run, rebuilt.

    Attributes:
      path: its run directory.
      which: the checkpoint read ('best' or 'latest').
      config: the entries of its config.json that transfer.json records.
      model: its classifier, rebuilt from its config.
      params: its parameters ('trunk' and 'head').
    """

    path: str
    which: str
    config: dict[str, Any]
    model: networks.Classifier
    params: dict

    def logits(self, params, x: jax.Array) -> jax.Array:
        """The teacher's logits, in evaluation mode (no dropout)."""
        return self.model.apply({"params": params}, x, train=False)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "which": self.which, "config": self.config,
                "logits": "computed in the jitted train step, on the step's augmented batch",
                "parameters": "train state extra['teacher'], never updated"}


def _teacher_config(path: str) -> dict[str, Any]:
    """The teacher's config.json, checked to be a run of this family."""
    stored = run_dir.read_run_config(path)
    if stored is None:
        raise DataError(f"--teacher_workdir={path} has no config.json; the teacher must be a "
                        f"run directory of experiments.transfer")
    missing = [k for k in ("network", "mlp_hidden", "keep_blocks") + _SAME_TASK + ("classes",)
               if k not in stored]
    if missing or stored["network"] not in networks.NETWORKS:
        raise DataError(f"--teacher_workdir={path} is not a run of experiments.transfer (its "
                        f"config.json has no {', '.join(missing) or 'known network'}); its "
                        f"network cannot be rebuilt")
    return stored


def _check_same_task(path: str, stored: dict, student: dict, classes: Sequence[int]) -> None:
    """Refuses a teacher of another task or with another validation split."""
    theirs = data_lib.check_classes(stored["classes"])
    if tuple(theirs) != tuple(classes):
        raise ConfigError(f"the teacher {path} classifies classes {list(theirs)}, the student "
                          f"{list(classes)}: distillation compares their probabilities class "
                          f"by class, so both must have the same classes in the same order")
    for key in _SAME_TASK:
        if stored[key] != student[key]:
            raise ConfigError(f"the teacher {path} has --{key}={stored[key]}, the student "
                              f"--{key}={student[key]}: the teacher must have learnt the same "
                              f"task with the same validation split (else it may have trained "
                              f"on the student's validation images)")


def load_teacher(path: str, which: str, student: dict[str, Any], classes: Sequence[int],
                 input_shape: Sequence[int], conv_impl: str) -> Teacher:
    """The teacher run at `path`, its network rebuilt and its checkpoint loaded.

    Args:
      path: the teacher's run directory.
      which: its checkpoint, 'best' or 'latest'.
      student: the student's dataset, val_size and data_seed.
      classes: the student's resolved class ids, in label order.
      input_shape: the shape of one input image.
      conv_impl: the convolution implementation (the parameters do not depend on it).

    Raises:
      ConfigError: a teacher of another task.
      DataError: not a run of this family, no checkpoint, or a checkpoint that
        does not fit the network its config describes.
    """
    stored = _teacher_config(path)
    _check_same_task(path, stored, student, classes)
    names = networks.block_names(stored["network"], stored["mlp_hidden"])
    blocks = stored["keep_blocks"] or len(names)
    try:
        model = networks.make_classifier(stored["network"], len(classes), blocks,
                                         mlp_hidden=stored["mlp_hidden"], conv_impl=conv_impl)
    except ValueError as err:
        raise DataError(f"the teacher {path}'s config.json describes no network: {err}") from err
    loaded = experiment.load_params(path, which)
    params = {k: loaded[k] for k in ("trunk", "head") if k in loaded}
    example = jnp.zeros((1, *input_shape), jnp.float32)
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example,
                                                 train=False)["params"])
    shapes = {p: tuple(v.shape) for p, v in flatten(expected).items()}
    if shapes != {p: tuple(v.shape) for p, v in flatten(params).items()}:
        raise DataError(f"the {which} checkpoint of the teacher {path} does not fit the "
                        f"{stored['network']} network its config.json describes")
    return Teacher(path=path, which=which, model=model,
                   config={k: stored[k] for k in _TEACHER_KEYS if k in stored},
                   params=jax.tree.map(jnp.asarray, params))


def make_distill_step(logits: LogitsFn, teacher: Teacher,
                      optimizer: optax.GradientTransformation, seed: int, lam: float,
                      temperature: float) -> train_state.StepFn:
    """The student's update on CE + λ·T²·KL, the teacher's logits computed in the step.

    Args:
      logits: the student's `logits(params, x, train, rng)`.
      teacher: the teacher; its parameters are read from `state.extra['teacher']`.
      optimizer: the student's optimizer (everything trains).
      seed: the run's seed (dropout keys).
      lam: λ, the weight of the soft term.
      temperature: T.
    """

    def step(state: train_state.TrainState, batch):
        rng = supervised.dropout_key(seed, state.step)
        labels = batch["y"][LABEL]
        soft = jax.lax.stop_gradient(teacher.logits(state.extra[TEACHER], batch["x"]))

        def loss_fn(params):
            out = logits(params, batch["x"], True, rng)
            loss, parts = distillation_loss(out, soft, labels, lam, temperature)
            accuracy = jnp.mean(jnp.argmax(out, -1) == labels)
            return loss, dict(loss=loss, accuracy=accuracy, **parts)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = train_state.apply_gradients(state, grads, optimizer)
        return state, dict(metrics, grad_norm=optax.tree.norm(grads))

    return step


def distill_state(params, optimizer: optax.GradientTransformation,
                  teacher: Teacher) -> train_state.TrainState:
    """The student's initial state, the teacher's parameters in `extra['teacher']`."""
    return train_state.create(params, {}, optimizer, {TEACHER: teacher.params})


def make_teacher_eval_step(teacher: Teacher, student_logits: LogitsFn):
    """Per-example teacher accuracy and cross-entropy, and student-teacher agreement."""

    def eval_step(state, batch):
        out = teacher.logits(state.extra[TEACHER], batch["x"])
        student = student_logits(state.params, batch["x"], False, None)
        labels = batch["y"][LABEL]
        return {"accuracy": (jnp.argmax(out, -1) == labels).astype(jnp.float32),
                "loss": optax.softmax_cross_entropy_with_integer_labels(out, labels),
                "agreement": (jnp.argmax(out, -1) == jnp.argmax(student, -1)).astype(
                    jnp.float32)}

    return eval_step
