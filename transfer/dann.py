"""DANN (Ganin et al., 2016): domain-adversarial training through a gradient reversal layer.

A domain classifier D (`DomainClassifier`, `--domain_hidden` ReLU layers
and one logit) learns to tell the trunk's features of source images (domain
0) from those of target images (domain 1). Between the trunk and D sits the
gradient reversal layer R_λ (`gradient_reversal`): the identity forward,
−λ·g backward. One minimisation of

    L = CE(head(f(x_s)), y_s) + w · BCE(D(R_λ(f([x_s; x_t]))), [0; 1])

then trains D to separate the domains and, through the reversal, the trunk f
to make them inseparable, while the head learns the labelled source task
(w is `--dann_weight`, TLlib's trade-off; the paper's is 1). The source and
target images go through the trunk as one batch.

Schedules, with p = step / num_steps the training progress (paper §5.2.2):

    λ_p = 2 / (1 + exp(−γ·p)) − 1 = tanh(γ·p / 2)      γ = --dann_gamma (10)
    μ_p = μ_0 / (1 + α·p)^β                              α = 10, β = 0.75

λ_p starts at 0, so D is trained before the trunk feels it, and is 0.99 at
p ≈ 0.53 for γ = 10. μ_p (`--da_lr_annealing`, for source_only too, so the
baseline has the same schedule) scales the optimizer's whole update, weight
decay included, by (1 + α·p)^−β, counted by the optimizer's own step (in
its checkpointed state). Both are pure functions of the step, so a resumed
run continues them exactly.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core import supervised
from core import train_state
from transfer.data import LABEL
from transfer.networks import Classifier

ANNEALING_ALPHA = 10.0
ANNEALING_BETA = 0.75
DOMAIN = "domain"
CLASSIFIER = ("trunk", "head")


@jax.custom_vjp
def gradient_reversal(x: jax.Array, lam: jax.Array) -> jax.Array:
    """R_λ(x) = x forward; the cotangent g comes back as −λ·g (and none for λ)."""
    del lam
    return x


def _reversal_forward(x, lam):
    return x, lam


def _reversal_backward(lam, g):
    return -jnp.asarray(lam, g.dtype) * g, jnp.zeros_like(lam)


gradient_reversal.defvjp(_reversal_forward, _reversal_backward)


def progress(step: jax.Array, num_steps: int) -> jax.Array:
    """p = step / num_steps in [0, 1], float32."""
    return jnp.clip(jnp.asarray(step, jnp.float32) / max(num_steps, 1), 0.0, 1.0)


def reversal_lambda(p: jax.Array, gamma: float = 10.0) -> jax.Array:
    """The paper's λ_p = 2 / (1 + exp(−γ·p)) − 1."""
    return 2.0 / (1.0 + jnp.exp(-gamma * jnp.asarray(p, jnp.float32))) - 1.0


def annealing_factor(p: jax.Array) -> jax.Array:
    """The paper's learning-rate factor μ_p / μ_0 = (1 + α·p)^−β."""
    return (1.0 + ANNEALING_ALPHA * jnp.asarray(p, jnp.float32)) ** -ANNEALING_BETA


def lr_annealing(num_steps: int) -> optax.GradientTransformation:
    """Scales each update by `annealing_factor(count / num_steps)` (chain it last)."""
    return optax.scale_by_schedule(lambda count: annealing_factor(progress(count, num_steps)))


class DomainClassifier(nn.Module):
    """Features [batch, F] -> one domain logit per example (positive: target).

    Attributes:
      hidden: widths of the ReLU layers ('dense0', ...) before the logit ('logit').
    """

    hidden: Sequence[int] = (100,)

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = features
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
        return nn.Dense(1, name="logit")(x)[:, 0]


def init_domain_classifier(module: DomainClassifier, num_features: int, seed: int) -> dict:
    """D's fresh parameters, from a key split off the seed's.

    The classifier's init uses the seed's key itself and the dropout keys are
    folded into it, so D's init shares randomness with neither.
    """
    key = jax.random.split(jax.random.PRNGKey(seed))[1]
    return module.init(key, jnp.zeros((1, num_features), jnp.float32))["params"]


def make_dann_step(model: Classifier, domain: DomainClassifier,
                   optimizer: optax.GradientTransformation, seed: int, num_steps: int,
                   weight: float, gamma: float) -> train_state.StepFn:
    """DANN's update on a batch {'x', 'y', 'target_x'} (see the module docstring).

    Args:
      model: the classifier (its 'trunk' is f, its 'head' the label predictor).
      domain: the domain classifier; its parameters are params['domain'].
      optimizer: over all the parameters (classifier and domain classifier).
      seed: the run's seed (dropout keys).
      num_steps: the run's length, the denominator of the progress p.
      weight: w, the weight of the domain loss.
      gamma: γ of the reversal schedule.

    Returns:
      A pure step; its metrics include λ_p ('reversal_lambda') and the domain
      classifier's loss and accuracy.
    """

    def step(state: train_state.TrainState, batch):
        rng = supervised.dropout_key(seed, state.step)
        lam = reversal_lambda(progress(state.step, num_steps), gamma)
        labels = batch["y"][LABEL]
        num_source = batch["x"].shape[0]
        images = jnp.concatenate([batch["x"], batch["target_x"]])
        is_target = jnp.concatenate([jnp.zeros(num_source, jnp.float32),
                                     jnp.ones(batch["target_x"].shape[0], jnp.float32)])

        def loss_fn(params):
            classifier = {"params": {k: params[k] for k in CLASSIFIER}}
            features = model.apply(classifier, images, train=True, rngs={"dropout": rng},
                                   method=Classifier.features)
            out = model.apply(classifier, features[:num_source], method=Classifier.classify)
            cross_entropy = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
            domain_logits = domain.apply({"params": params[DOMAIN]},
                                         gradient_reversal(features, lam))
            domain_loss = optax.sigmoid_binary_cross_entropy(domain_logits, is_target).mean()
            loss = cross_entropy + weight * domain_loss
            return loss, {"loss": loss,
                          "accuracy": jnp.mean(jnp.argmax(out, -1) == labels),
                          "cross_entropy": cross_entropy, "domain_loss": domain_loss,
                          "domain_accuracy": jnp.mean((domain_logits > 0) == (is_target > 0))}

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = train_state.apply_gradients(state, grads, optimizer)
        return state, dict(metrics, reversal_lambda=lam, grad_norm=optax.tree.norm(grads))

    return step
