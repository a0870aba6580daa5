"""The meta-gradient (the all-reduced mean over tasks) with the task axis sharded over 4 fake CPU devices equals the 1-device one.

Few such tests, each with a timeout: CPU collectives can hang on a busy 2-core machine.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import mesh as mesh_lib
from core import networks
from core.datasets.fake import random_image_episodes
from core.losses import classification_loss, split_variables
from meta import maml


@pytest.mark.timeout(180)
@pytest.mark.parametrize("strategy", [("vmap", "im2col"), ("vmap", "xla")])
def test_sharded_meta_step_equals_single_device(strategy):
    assert len(jax.devices()) >= 4, "tests/conftest.py asks for 4 CPU devices"
    task_map, conv_impl = strategy
    model = networks.Conv4(outputs=3, filters=8, conv_impl=conv_impl)
    loss_fn = classification_loss(model)
    tasks = random_image_episodes(num_tasks=4, ways=3, support=3, query=6)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(0), tasks.support_x[0]))
    cfg = maml.MamlConfig(inner_lr=0.4)
    grad_fn = lambda p, t: maml.meta_gradient(loss_fn, p, model_state, t, cfg, task_map)

    (single_loss, _), single_grads = jax.jit(grad_fn)(params, tasks)

    mesh = mesh_lib.make_mesh(jax.devices()[:4])
    repl, batch = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    sharded_tasks = mesh_lib.put_batch(tasks, mesh)
    assert len(sharded_tasks.support_x.sharding.device_set) == 4
    (sharded_loss, _), sharded_grads = jax.jit(grad_fn, in_shardings=(repl, batch),
                                               out_shardings=repl)(
        mesh_lib.put_replicated(params, mesh), sharded_tasks)
    jax.block_until_ready(sharded_grads)
    assert sharded_grads["head"]["kernel"].sharding.is_fully_replicated
    np.testing.assert_allclose(sharded_loss, single_loss, rtol=1e-6)
    chex.assert_trees_all_close(jax.device_get(sharded_grads), jax.device_get(single_grads),
                                rtol=1e-4, atol=1e-6)
    # The gradient is not trivially zero (all-zero trees would also be "equal").
    assert float(jnp.abs(single_grads["head"]["kernel"]).max()) > 1e-3


def test_meta_batch_not_divisible_by_devices_is_a_clear_error():
    from core.errors import ConfigError
    mesh = mesh_lib.make_mesh(jax.devices()[:4])
    with pytest.raises(ConfigError, match="multiple of the number of devices"):
        mesh_lib.check_divisible(6, mesh, "--meta_batch_size")
