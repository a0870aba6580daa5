"""Tests of the parameter-path filter the MAML inner loop adapts with (core/param_paths.py)."""

import jax
import numpy as np
import pytest

from core import networks
from core.errors import ConfigError
from core.losses import split_variables
from core.param_paths import PathFilter, flatten


def _conv4_params():
    model = networks.omniglot_conv4(3)
    params, _ = split_variables(model.init(jax.random.PRNGKey(0), np.zeros((2, 28, 28, 1))))
    return params


def test_the_reference_exclusion_removes_exactly_the_batch_norm_parameters():
    params = _conv4_params()
    chosen = PathFilter(exclude=("*/bn*",)).selected(params)
    assert set(flatten(params)) - set(chosen) == {
        f"trunk/block{i}/bn/{name}" for i in range(4) for name in ("scale", "bias")}
    only_shift = PathFilter(exclude=("*/bn*/bias",)).selected(params)
    assert "trunk/block0/bn/scale" in only_shift and "trunk/block0/bn/bias" not in only_shift


def test_the_mlp_batch_norm_layers_are_covered_by_the_same_pattern():
    model = networks.MLP(hidden=(8, 8), outputs=3, batch_norm=True)
    params, _ = split_variables(model.init(jax.random.PRNGKey(0), np.zeros((2, 4))))
    assert sorted(PathFilter(exclude=("*/bn*",)).selected(params)) == [
        "head/bias", "head/kernel", "trunk/dense0/bias", "trunk/dense0/kernel",
        "trunk/dense1/bias", "trunk/dense1/kernel"]


@pytest.mark.parametrize("include", [("head",), ("head/*",), (r"head/.*",)])
def test_anil_adapts_the_head_only_by_glob_or_regex(include):
    chosen = PathFilter(include=include).selected(_conv4_params())
    assert sorted(chosen) == ["head/bias", "head/kernel"]


def test_mask_marks_the_selected_leaves():
    params = _conv4_params()
    mask = PathFilter(include=("head", "trunk/block3"), exclude=("*/bias",)).mask(params)
    marked = sorted(path for path, on in flatten(mask).items() if on)
    assert marked == ["head/kernel", "trunk/block3/bn/scale", "trunk/block3/conv/kernel"]


@pytest.mark.parametrize("include, exclude, message", [
    (("heads",), (), "--inner_adapt: no parameter matches heads"),
    (("*",), ("*/batchnorm*",), "--inner_adapt_exclude: no parameter matches"),
    (("head",), ("head",), "selects no parameter"),
])
def test_an_unused_pattern_or_an_empty_selection_is_an_error(include, exclude, message):
    with pytest.raises(ConfigError, match=message):
        PathFilter(include, exclude).selected(_conv4_params(), "--inner_adapt",
                                              "--inner_adapt_exclude")


def test_a_malformed_regex_fails_when_the_filter_is_made():
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        PathFilter(include=("head/(kernel",))
