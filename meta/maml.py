"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) as pure functions.

The paper's Algorithm 2, in its notation:

    inner step (eq. 1):   θ'_i = θ − α ∇_θ L_{T_i}(f_θ)            on the support set of task T_i
    meta-objective:       min_θ Σ_{T_i} L_{T_i}(f_{θ'_i})            on the query set of T_i
    meta-update (eq. 3):  θ ← θ − β ∇_θ Σ_{T_i} L_{T_i}(f_{θ'_i})

`inner_loop` is eq. 1 repeated `inner_steps` times; `task_query_loss` is one
term of the meta-objective; `meta_gradient` differentiates their mean over a
meta-batch *through* the inner loop (second order). With `first_order=True`
the inner gradients are treated as constants (`stop_gradient`), which drops the
Hessian-vector terms: first-order MAML (FOMAML, paper §5.2). β and the update
rule belong to an optax optimizer (Adam in the paper).

Every function works on any parameter pytree and any loss function of the
form documented in `core.losses`. How the tasks of a meta-batch are mapped
(`jax.vmap`, or an unrolled loop) is the `task_map` argument
(`meta.task_map`).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from core import train_state
from core.losses import LossFn
from core.param_paths import keypath_name
from core.train_state import Params
from meta import task_map as task_map_lib


@dataclasses.dataclass(frozen=True)
class MamlConfig:
    """Hyper-parameters of MAML's inner loop.

    Attributes:
      inner_lr: α, the step size of the inner SGD steps.
      inner_steps: number of inner steps during meta-training.
      first_order: drop second-order terms (FOMAML).
      remat: recompute each inner step's activations in the backward pass
        (`jax.checkpoint` around the step) so that memory does not grow with
        `inner_steps`: only θ'_k is kept per step. This runs the inner steps
        in a `lax.scan` (it implies `scan`): in an unrolled program XLA is
        free to schedule the recomputation early, and on CPU it does, keeping
        every step's activations (measured: docs/results.md, the `--remat` memory table).
      scan: run the inner steps in a `lax.scan` instead of unrolling them, so
        the compiled program (and its compile time) does not grow with
        `inner_steps`. XLA:CPU runs convolutions inside loops slowly
        (jax-ml/jax#12868), so this pairs with the im2col convolution there.
      inner_loss_scale: the support loss the inner step differentiates is
        this times the loss function's (mean) loss: the reference code's
        classification loss, the per-example cross-entropy divided by K and
        summed over the N·K support examples, is N times the mean.
      adapts: path -> whether the inner loop updates that parameter (paths
        '/'-joined, e.g. a `core.param_paths.PathFilter`); None: every
        parameter. A parameter it leaves out keeps θ's value in θ' (the outer
        optimizer still trains it).
    """

    inner_lr: float
    inner_steps: int = 1
    first_order: bool = False
    remat: bool = False
    scan: bool = False
    inner_loss_scale: float = 1.0
    adapts: Callable[[str], bool] | None = None

    @property
    def scanned(self) -> bool:
        """Whether the inner steps run in a `lax.scan` (`scan`, or implied by `remat`)."""
        return self.scan or self.remat

    def __post_init__(self):
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if self.inner_lr <= 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.inner_loss_scale <= 0:
            raise ValueError(f"inner_loss_scale must be > 0, got {self.inner_loss_scale}")

    @property
    def inner_options(self) -> dict:
        """The keyword arguments of `inner_loop` that come from the config."""
        return {"inner_lr": self.inner_lr, "first_order": self.first_order,
                "remat": self.remat, "loss_scale": self.inner_loss_scale,
                "adapts": self.adapts}


def inner_step(loss_fn: LossFn, params: Params, model_state, x, y, *, inner_lr: float,
               first_order: bool, train: bool = True, loss_scale: float = 1.0,
               adapts: Callable[[str], bool] | None = None) -> Params:
    """One SGD step on a task's support set: θ' = θ − α ∇_θ L(θ) (paper eq. 1).

    Args:
      loss_fn: a `core.losses` loss function.
      params: θ.
      model_state: non-differentiated model collections (e.g. BN statistics).
      x: support inputs.
      y: support targets.
      inner_lr: α.
      first_order: treat ∇_θ L as a constant when differentiating θ' w.r.t. θ.
      train: passed to the model (batch statistics in running-BN mode).
      loss_scale: L is this times the loss function's loss (`MamlConfig.inner_loss_scale`).
      adapts: which parameters the step updates, by path (`MamlConfig.adapts`).

    Returns:
      θ', a pytree like `params`.
    """
    if loss_scale == 1.0:
        support_loss = lambda p: loss_fn(p, model_state, x, y, train)[0]
    else:
        support_loss = lambda p: loss_scale * loss_fn(p, model_state, x, y, train)[0]
    grads = jax.grad(support_loss)(params)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    if adapts is None:
        return jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
    return jax.tree_util.tree_map_with_path(
        lambda path, p, g: p - inner_lr * g if adapts(keypath_name(path)) else p, params, grads)


def _step_fn(loss_fn: LossFn, model_state, x, y, *, remat: bool, train: bool,
             **options) -> Callable[[Params], Params]:
    """θ -> θ' for one task's support set, optionally rematerialised."""
    step = lambda p: inner_step(loss_fn, p, model_state, x, y, train=train, **options)
    return jax.checkpoint(step) if remat else step


def inner_loop(loss_fn: LossFn, params: Params, model_state, x, y, *, inner_lr: float,
               steps: int, first_order: bool = False, remat: bool = False,
               train: bool = True, loss_scale: float = 1.0,
               adapts: Callable[[str], bool] | None = None) -> list[Params]:
    """`steps` inner SGD steps; returns the parameters after each of them.

    The loop is unrolled in Python (steps are few) because XLA:CPU runs
    convolutions inside loop bodies slowly (jax-ml/jax#12868).

    Args:
      loss_fn: a `core.losses` loss function.
      params: θ.
      model_state: non-differentiated model collections.
      x: support inputs.
      y: support targets.
      inner_lr: α.
      steps: number of inner steps.
      first_order: FOMAML.
      remat: wrap each step in `jax.checkpoint`.
      train: passed to the model.
      loss_scale: multiplies the support loss (`MamlConfig.inner_loss_scale`).
      adapts: which parameters are updated, by path (`MamlConfig.adapts`).

    Returns:
      A list of `steps + 1` pytrees: θ, θ'_1, ..., θ'_steps.
    """
    step = _step_fn(loss_fn, model_state, x, y, inner_lr=inner_lr, first_order=first_order,
                    remat=remat, train=train, loss_scale=loss_scale, adapts=adapts)
    trajectory = [params]
    for _ in range(steps):
        trajectory.append(step(trajectory[-1]))
    return trajectory


def scanned_inner_loop(loss_fn: LossFn, params: Params, model_state, x, y, *, inner_lr: float,
                       steps: int, first_order: bool = False, remat: bool = False,
                       train: bool = True, loss_scale: float = 1.0,
                       adapts: Callable[[str], bool] | None = None) -> Params:
    """`inner_loop` as a `lax.scan`: the same θ'_steps, one compiled step body.

    Args: as `inner_loop`.

    Returns:
      θ'_steps only (the trajectory is not kept).
    """
    step = _step_fn(loss_fn, model_state, x, y, inner_lr=inner_lr, first_order=first_order,
                    remat=remat, train=train, loss_scale=loss_scale, adapts=adapts)
    adapted, _ = jax.lax.scan(lambda p, _: (step(p), None), params, None, length=steps)
    return adapted


def task_query_loss(loss_fn: LossFn, params: Params, model_state, task, config: MamlConfig):
    """One task's term of the meta-objective: L_{T_i}(f_{θ'_i}) on its query set.

    Args:
      loss_fn: a `core.losses` loss function.
      params: θ.
      model_state: non-differentiated model collections.
      task: an episode with `support_x, support_y, query_x, query_y`.
      config: inner-loop hyper-parameters.

    Returns:
      (query loss, (new model state, query metrics)).
    """
    if config.scanned:
        adapted = scanned_inner_loop(loss_fn, params, model_state, task.support_x,
                                     task.support_y, steps=config.inner_steps,
                                     **config.inner_options)
    else:
        adapted = inner_loop(loss_fn, params, model_state, task.support_x, task.support_y,
                             steps=config.inner_steps, **config.inner_options)[-1]
    return loss_fn(adapted, model_state, task.query_x, task.query_y, True)


def meta_loss(loss_fn: LossFn, params: Params, model_state, tasks, config: MamlConfig,
              task_map: str = "vmap"):
    """The meta-objective averaged over a meta-batch: (1/B) Σ_i L_{T_i}(f_{θ'_i}).

    Args:
      loss_fn: a `core.losses` loss function.
      params: θ.
      model_state: non-differentiated model collections.
      tasks: episodes stacked on a leading task axis.
      config: inner-loop hyper-parameters.
      task_map: how to map over tasks (`meta.task_map.TASK_MAPS`).

    Returns:
      (mean query loss, (new model state averaged over tasks, mean query metrics)).
    """
    per_task = lambda task: task_query_loss(loss_fn, params, model_state, task, config)
    losses, (states, metrics) = task_map_lib.map_tasks(per_task, tasks, task_map)
    mean = lambda tree: jax.tree.map(lambda v: jnp.mean(v, axis=0), tree)
    return jnp.mean(losses), (mean(states), mean(metrics))


def meta_gradient(loss_fn: LossFn, params: Params, model_state, tasks, config: MamlConfig,
                  task_map: str = "vmap"):
    """∇_θ of `meta_loss`, through the inner loop unless `config.first_order`.

    Returns:
      ((mean query loss, (new model state, metrics)), gradient pytree like `params`).
    """
    return jax.value_and_grad(
        lambda p: meta_loss(loss_fn, p, model_state, tasks, config, task_map),
        has_aux=True)(params)


def outer_optimizer(meta_lr: float, clip_value: float | None = None) -> optax.GradientTransformation:
    """The paper's meta-optimizer: Adam with step size β.

    Args:
      meta_lr: β.
      clip_value: if set, clip each meta-gradient entry to [−clip, clip] before
        Adam, as the reference code does on mini-ImageNet (clip 10).

    Returns:
      An optax transformation.
    """
    adam = optax.adam(meta_lr)
    if clip_value is None:
        return adam
    return optax.chain(optax.clip(clip_value), adam)


def make_meta_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                         config: MamlConfig, task_map: str = "vmap"
                         ) -> train_state.StepFn:
    """Builds one meta-update (paper eq. 3): meta-gradient, then the optimizer.

    The returned function is pure and not yet jitted, so the caller can choose
    the shardings (see `core.mesh`).

    Args:
      loss_fn: a `core.losses` loss function.
      optimizer: the outer optimizer.
      config: inner-loop hyper-parameters.
      task_map: how to map over tasks.

    Returns:
      `step(state, tasks) -> (new_state, metrics)`; metrics are the mean query
      metrics of the meta-batch after adaptation, and the meta-gradient norm.
    """

    def step(state: train_state.TrainState, tasks):
        (loss, (model_state, metrics)), grads = meta_gradient(
            loss_fn, state.params, state.model_state, tasks, config, task_map)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return train_state.apply_gradients(state, grads, optimizer,
                                           model_state=model_state), metrics

    return step
