"""Every task-map/convolution strategy computes the same meta-gradient; 'auto' follows the backend."""

import functools

import jax
import jax.flatten_util
import numpy as np
import pytest

from core import networks
from core.datasets.fake import random_image_episodes
from core.losses import classification_loss, split_variables
from meta import maml
from meta import task_map


def _conv_problem(conv_impl):
    # Two-pass batch-norm variance: the one-pass E[x^2] - E[x]^2 amplifies float32 rounding in
    # near-constant channels past this test's tolerance, which would hide what it compares
    # (how tasks are mapped and convolutions computed).
    model = networks.Conv4(outputs=3, filters=8, spatial_pool="flatten", conv_impl=conv_impl,
                           bn_fast_variance=False)
    tasks = random_image_episodes(num_tasks=2, ways=3, support=3, query=6, image_shape=(16, 16, 1))
    params, state = split_variables(model.init(jax.random.PRNGKey(0), tasks.support_x[0]))
    return classification_loss(model), params, state, tasks


@functools.lru_cache(maxsize=None)
def _meta_gradient(strategy, first_order):
    mapping, conv_impl = task_map.resolve_strategy(strategy)
    loss_fn, params, state, tasks = _conv_problem(conv_impl)
    cfg = maml.MamlConfig(inner_lr=0.4, inner_steps=1, first_order=first_order)
    grad = jax.jit(lambda p: maml.meta_gradient(loss_fn, p, state, tasks, cfg, mapping)[1])
    return np.asarray(jax.flatten_util.ravel_pytree(grad(params))[0])


@pytest.mark.parametrize("first_order", [False, True])
def test_every_strategy_gives_the_same_meta_gradient(first_order):
    reference = _meta_gradient("loop_xla", first_order)  # plain convolutions, one task at a time
    assert np.abs(reference).max() > 1e-3
    for strategy in ("vmap_xla", "vmap_im2col", "loop_im2col"):
        np.testing.assert_allclose(_meta_gradient(strategy, first_order), reference, rtol=1e-4,
                                   atol=1e-5 * np.abs(reference).max(), err_msg=strategy)


def test_second_order_terms_are_visible_at_this_tolerance():
    """The comparison above can fail: dropping the Hessian terms moves the gradient far more."""
    diff = _meta_gradient("loop_xla", True) - _meta_gradient("loop_xla", False)
    assert np.abs(diff).max() > 1e-3 * np.abs(_meta_gradient("loop_xla", False)).max()


@pytest.mark.parametrize("backend, expected", [("cpu", ("vmap", "im2col")),
                                               ("gpu", ("vmap", "xla")),
                                               ("tpu", ("vmap", "xla"))])
def test_auto_strategy_follows_the_backend(backend, expected):
    assert task_map.resolve_strategy("auto", backend) == expected


def test_explicit_strategy_overrides_the_backend_choice():
    assert task_map.resolve_strategy("loop_xla", "cpu") == ("loop", "xla")
    assert task_map.resolve_strategy("vmap_im2col", "gpu") == ("vmap", "im2col")
    with pytest.raises(ValueError, match="unknown strategy"):
        task_map.resolve_strategy("pmap_xla")
