"""Shared supervised options: decoupled weight decay, dropout keys, the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core import supervised
from core import train_state
from core.errors import ConfigError


def _config(**overrides):
    return supervised.SupervisedConfig(workdir="w", **overrides)


def _params():
    return {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}}


@pytest.mark.parametrize("name", supervised.OPTIMIZERS)
def test_weight_decay_is_decoupled_and_only_on_kernels(name):
    params = _params()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = supervised.make_optimizer(_config(optimizer=name, learning_rate=0.1,
                                           weight_decay=0.5))
    updates, _ = tx.update(zero, tx.init(params), params)
    # With zero gradients the update is exactly -lr * λ * θ on kernels and 0 elsewhere.
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)


def test_decay_is_not_rescaled_by_adam():
    params, grads = _params(), jax.tree.map(lambda p: jnp.full_like(p, 1e-3), _params())
    plain = supervised.make_optimizer(_config(learning_rate=0.1))
    decayed = supervised.make_optimizer(_config(learning_rate=0.1, weight_decay=0.5))
    u_plain, _ = plain.update(grads, plain.init(params), params)
    u_decayed, _ = decayed.update(grads, decayed.init(params), params)
    np.testing.assert_allclose(u_decayed["dense"]["kernel"] - u_plain["dense"]["kernel"],
                               -0.1 * 0.5 * 2.0, rtol=1e-5)


def test_without_decay_the_optimizer_is_plain_adam():
    params = _params()
    grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=p.dtype).reshape(p.shape), params)
    ours = supervised.make_optimizer(_config(learning_rate=0.01))
    reference = optax.adam(0.01)
    np.testing.assert_array_equal(ours.update(grads, ours.init(params), params)[0]["dense"]["kernel"],
                                  reference.update(grads, reference.init(params), params)[0]
                                  ["dense"]["kernel"])


def test_dropout_keys_are_a_function_of_seed_and_step():
    a = supervised.dropout_key(0, jnp.int32(5))
    assert np.array_equal(a, supervised.dropout_key(0, jnp.int32(5)))
    assert not np.array_equal(a, supervised.dropout_key(0, jnp.int32(6)))
    assert not np.array_equal(a, supervised.dropout_key(1, jnp.int32(5)))


def test_train_step_passes_the_steps_dropout_key_and_counts():
    seen = []

    def loss_fn(params, model_state, batch, train, rng):
        seen.append(train)
        noise = jax.random.normal(rng, ())
        loss = jnp.sum(params["w"] * batch) + 0.0 * noise
        return loss, (model_state, {"loss": loss, "noise": noise})

    tx = optax.sgd(0.1)
    state = train_state.create({"w": jnp.ones(())}, {}, tx)
    step = jax.jit(supervised.make_train_step(loss_fn, tx, seed=3))
    state, m1 = step(state, jnp.float32(1.0))
    state, m2 = step(state, jnp.float32(1.0))
    assert int(state.step) == 2 and seen == [True]
    np.testing.assert_allclose(state.params["w"], 0.8, rtol=1e-6)
    expected = jax.random.normal(supervised.dropout_key(3, jnp.int32(1)), ())
    np.testing.assert_array_equal(m2["noise"], expected)
    assert float(m1["noise"]) != float(m2["noise"])


@pytest.mark.parametrize("overrides, message", [({"dropout": 1.0}, "--dropout must be < 1"),
                                                ({"learning_rate": 0.0}, "--learning_rate"),
                                                ({"weight_decay": -1.0}, "--weight_decay")])
def test_bad_options_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides).validate()
