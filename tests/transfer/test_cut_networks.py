"""Tests of `transfer.networks`: the full-depth trunks compute what core's trunks compute
from the same parameters, and a cut trunk keeps the lowest blocks' names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import trunks
from transfer import networks

X = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))


def _init(model):
    return model.init(jax.random.PRNGKey(0), X[:1], train=False)["params"]


@pytest.mark.parametrize("network, core_trunk", [
    ("lenet", trunks.LeNetTrunk()),
    ("mlp", trunks.MLPTrunk(hidden=(16, 12))),
])
def test_full_depth_matches_core_trunks(network, core_trunk):
    model = networks.make_classifier(network, 5, 4 if network == "lenet" else 2,
                                     mlp_hidden=(16, 12))
    params = _init(model)
    assert set(params) == {"trunk", "head"}
    assert jax.tree.structure(params["trunk"]) == jax.tree.structure(
        core_trunk.init(jax.random.PRNGKey(0), X[:1], train=False)["params"])
    ours = model.apply({"params": params}, X, method=networks.Classifier.features)
    theirs = core_trunk.apply({"params": params["trunk"]}, X, train=False)
    np.testing.assert_array_equal(ours, theirs)
    logits = model.apply({"params": params}, X, train=False)
    np.testing.assert_array_equal(
        logits, model.apply({"params": params}, ours, method=networks.Classifier.classify))


@pytest.mark.parametrize("blocks, width", [(1, 14 * 14 * 6), (2, 7 * 7 * 16), (3, 120)])
def test_a_cut_lenet_keeps_its_lowest_blocks(blocks, width):
    model = networks.make_classifier("lenet", 5, blocks)
    params = _init(model)
    assert tuple(params["trunk"]) == networks.block_names("lenet")[:blocks]
    assert params["head"]["kernel"].shape == (width, 5)
    assert model.apply({"params": params}, X, train=False).shape == (3, 5)


def test_block_names_and_bad_depths():
    assert networks.block_names("mlp", (8, 8, 8)) == ("dense0", "dense1", "dense2")
    with pytest.raises(ValueError, match="3 of its 2 blocks"):
        networks.make_classifier("mlp", 5, 3, mlp_hidden=(8, 8))
    assert jnp.shape(_init(networks.make_classifier("mlp", 2, 1, mlp_hidden=(8, 8)))
                     ["head"]["kernel"]) == (8, 2)
