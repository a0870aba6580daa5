"""Tests of `transfer.params`: the pattern rule, strict loading both ways, rename,
dont_load / ignore_source / zero_init, model_state, the record and the two sources
(.npz files and run directories)."""

import json
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core import train_state
from core.checkpoint import Checkpointer
from core.errors import ConfigError, DataError
from transfer import params as tp


def _tree(seed=0, head="left", width=3):
    """A tiny trunk-and-heads parameter tree (jax arrays, float32)."""
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {"trunk": {"conv0": {"kernel": arr(2, width), "bias": arr(width)},
                      "bn0": {"scale": arr(width), "bias": arr(width)}},
            "heads": {head: {"kernel": arr(width, 2), "bias": arr(2)}}}


def _state(seed=0, width=3):
    rng = np.random.default_rng(seed + 100)
    return {"batch_stats": {"trunk": {"bn0": {"mean": jnp.asarray(rng.normal(size=width)),
                                              "var": jnp.asarray(rng.random(width) + 1.0)}}}}


def _equal(a, b):
    fa, fb = tp.flatten(a), tp.flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_flatten_round_trip_and_bad_keys():
    tree = _tree()
    flat = tp.flatten(tree)
    assert set(flat) == {"trunk/conv0/kernel", "trunk/conv0/bias", "trunk/bn0/scale",
                         "trunk/bn0/bias", "heads/left/kernel", "heads/left/bias"}
    assert _equal(tp.unflatten(flat), tree)
    with pytest.raises(ConfigError, match="without '/'"):
        tp.flatten({"a/b": np.zeros(1)})


@pytest.mark.parametrize("pattern, path, expected", [
    ("heads", "heads/left/kernel", True),            # a plain name covers its sub-tree
    ("heads/*", "heads/left/kernel", True),          # glob: * crosses '/'
    ("heads/.*", "heads/left/kernel", True),         # regex
    ("trunk/block1", "trunk/block10/kernel", False),  # whole components only
    ("trunk/block?", "trunk/block1/kernel", True),   # glob: ? is one character
    ("trunk/block?", "trunk/blockx1/kernel", False),
    ("trunk/block[01]", "trunk/block1/kernel", True),
    ("trunk/block[01]", "trunk/block2/kernel", False),
    ("trunk/(conv|bn)0", "trunk/bn0/scale", True),   # regex alternation
    ("heads/l.ft", "heads/l-ft/kernel", True),       # '.' makes it a regex: any character
    ("heads/l*t", "heads/l.xt/kernel", True),        # glob
    ("left", "heads/left/kernel", False),            # anchored at the root
])
def test_pattern_rule(pattern, path, expected):
    assert bool(tp.match_path(tp.compile_pattern(pattern), path)) is expected


def test_pattern_kind_and_invalid_regex():
    assert not tp.is_regex("heads/*") and not tp.is_regex("trunk/block[01]")
    assert tp.is_regex("heads/.*") and tp.is_regex("a|b") and tp.is_regex(r"block\d")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        tp.compile_pattern("heads/(left")


def test_identity_transfer_loads_everything_in_the_target_dtype():
    target = {"w": jnp.zeros((2, 2), jnp.bfloat16), "b": jnp.zeros((2,), jnp.float32)}
    source = {"w": np.arange(4.0).reshape(2, 2), "b": np.ones(2)}   # float64
    kept = {k: v.copy() for k, v in source.items()}
    params, model_state, record = tp.transfer_params(target, source)
    assert params["w"].dtype == jnp.bfloat16 and params["b"].dtype == jnp.float32
    np.testing.assert_array_equal(params["w"].astype(np.float32), source["w"])
    assert model_state is None
    assert record["params"] == {"w": {"source": "w", "init": "loaded"},
                                "b": {"source": "b", "init": "loaded"}}
    assert record["ignored_source"] == {"params": [], "model_state": []}
    assert _equal(source, kept) and np.array_equal(target["w"], np.zeros((2, 2)))


def test_missing_target_key_is_one_clear_error():
    source = tp.flatten(_tree())
    del source["trunk/conv0/bias"]
    with pytest.raises(ConfigError) as error:
        tp.transfer_params(_tree(1), tp.unflatten(source))
    message = str(error.value)
    assert "1 target leaves have no source leaf: trunk/conv0/bias;" in message
    assert "dont_load" in message and "unused" not in message


def test_unexpected_source_key_is_one_clear_error():
    source = _tree()
    source["trunk"]["extra"] = {"kernel": np.zeros((2, 2))}
    with pytest.raises(ConfigError) as error:
        tp.transfer_params(_tree(1), source)
    message = str(error.value)
    assert "1 source leaves are not used by the target: trunk/extra/kernel;" in message
    assert "ignore_source" in message and "no source leaf" not in message


def test_many_missing_keys_are_listed_up_to_ten():
    target = {f"layer{i:02d}": np.zeros(1) for i in range(13)}
    with pytest.raises(ConfigError, match=r"13 target leaves .*layer09 \(and 3 more\)"):
        tp.transfer_params(target, {})


def test_shape_mismatch_names_the_parameter_and_both_shapes():
    with pytest.raises(ConfigError) as error:
        tp.transfer_params(_tree(width=4), _tree(width=3))
    message = str(error.value)
    assert ("trunk/conv0/kernel has target shape (2, 4) but source trunk/conv0/kernel has "
            "shape (2, 3)") in message
    assert "dont_load" in message


def test_dtype_kind_mismatch_is_refused():
    with pytest.raises(ConfigError, match=r"step has target dtype int32 \(int\) but source step "
                                          r"has float32 \(float\)"):
        tp.transfer_params({"step": jnp.zeros((), jnp.int32)}, {"step": np.zeros((), np.float32)})


def test_dont_load_keeps_the_fresh_head_and_drops_its_source():
    target, source = _tree(1, head="new"), _tree(0, head="old")
    with pytest.raises(ConfigError, match="heads/new/kernel"):
        tp.transfer_params(target, source)
    params, _, record = tp.transfer_params(target, source, dont_load=["heads/new"],
                                           ignore_source=["heads/old"])
    assert _equal(params["heads"], target["heads"])
    assert _equal(params["trunk"], source["trunk"])
    assert record["params"]["heads/new/kernel"] == {"source": None, "init": "fresh"}
    assert record["params"]["trunk/bn0/scale"] == {"source": "trunk/bn0/scale", "init": "loaded"}
    assert sorted(record["ignored_source"]["params"]) == ["heads/old/bias", "heads/old/kernel"]


def test_dont_load_of_a_shared_name_also_accounts_for_the_source_leaf():
    params, _, record = tp.transfer_params(_tree(1), _tree(0), dont_load=["heads/*"])
    assert _equal(params["heads"], _tree(1)["heads"])
    assert sorted(record["ignored_source"]["params"]) == ["heads/left/bias", "heads/left/kernel"]


def test_ignoring_a_source_leaf_that_is_loaded_is_a_contradiction():
    with pytest.raises(ConfigError, match="matched by ignore_source are loaded.*trunk/bn0/bias"):
        tp.transfer_params(_tree(1), _tree(0), ignore_source=["trunk/bn0"])


def test_a_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ConfigError, match="match no parameter: dont_load 'heads/lft'"):
        tp.transfer_params(_tree(1), _tree(0), dont_load=["heads/lft"])
    with pytest.raises(ConfigError, match="rename 'trunk/conv9'"):
        tp.transfer_params(_tree(1), _tree(0), rename={"trunk/conv9": "trunk/conv0"})


def test_rename_maps_whole_prefixes_and_the_record_says_so():
    source = {"encoder": {"layer0": _tree(0)["trunk"]}, "heads": _tree(0)["heads"]}
    params, _, record = tp.transfer_params(_tree(1), source, rename={"trunk": "encoder/layer0"})
    assert _equal(params, _tree(0))
    assert record["params"]["trunk/conv0/kernel"] == {"source": "encoder/layer0/conv0/kernel",
                                                      "init": "loaded"}
    assert record["params"]["heads/left/bias"]["source"] == "heads/left/bias"


def test_rename_regex_groups_and_missing_renamed_source():
    target = {"trunk": {f"block{i}": {"kernel": np.zeros(2, np.float32)} for i in range(2)}}
    source = {"encoder": {f"layer{i}": {"kernel": np.full(2, i, np.float32)} for i in range(2)}}
    rename = {r"trunk/block(\d)": r"encoder/layer\1"}
    params, _, _ = tp.transfer_params(target, source, rename=rename)
    np.testing.assert_array_equal(params["trunk"]["block1"]["kernel"], [1.0, 1.0])
    # The first matching entry wins; block1 falls through to "trunk" -> "encoder".
    expected = re.escape("trunk/block1/kernel (as encoder/block1/kernel)")
    with pytest.raises(ConfigError, match=expected):
        tp.transfer_params(target, source, rename={"trunk/block0": "encoder/layer0",
                                                   "trunk": "encoder"})


def test_zero_init_sets_zeros_in_the_target_dtype():
    target = _tree(1)
    target["heads"]["left"]["kernel"] = target["heads"]["left"]["kernel"].astype(jnp.bfloat16)
    params, _, record = tp.transfer_params(target, _tree(0), zero_init=["heads"])
    kernel = params["heads"]["left"]["kernel"]
    assert kernel.dtype == jnp.bfloat16 and not np.any(np.asarray(kernel, np.float32))
    assert record["params"]["heads/left/bias"] == {"source": None, "init": "zeros"}
    assert _equal(params["trunk"], _tree(0)["trunk"])


def test_model_state_is_transferred_by_the_same_rules():
    params, state, record = tp.transfer_params(
        _tree(1), _tree(0), target_model_state=_state(1), source_model_state=_state(0))
    assert _equal(state, _state(0))
    assert record["model_state"]["batch_stats/trunk/bn0/mean"] == {
        "source": "batch_stats/trunk/bn0/mean", "init": "loaded"}
    # dont_load of the layer keeps both its parameters and its statistics fresh.
    params, state, record = tp.transfer_params(
        _tree(1), _tree(0), target_model_state=_state(1), source_model_state=_state(0),
        dont_load=["trunk/bn0"])
    assert _equal(state, _state(1)) and _equal(params["trunk"]["bn0"], _tree(1)["trunk"]["bn0"])
    assert record["model_state"]["batch_stats/trunk/bn0/var"]["init"] == "fresh"
    assert "batch_stats/trunk/bn0/var" in record["ignored_source"]["model_state"]


def test_model_state_follows_a_rename_and_is_strict():
    source_state = {"batch_stats": {"encoder": _state(0)["batch_stats"]["trunk"]}}
    source = {"encoder": _tree(0)["trunk"], "heads": _tree(0)["heads"]}
    _, state, _ = tp.transfer_params(_tree(1), source, rename={"trunk": "encoder"},
                                     target_model_state=_state(1), source_model_state=source_state)
    assert _equal(state, _state(0))
    with pytest.raises(ConfigError, match="no source leaf: batch_stats/trunk/bn0/mean"):
        tp.transfer_params(_tree(1), _tree(0), target_model_state=_state(1))
    with pytest.raises(ConfigError, match="no target_model_state was given"):
        tp.transfer_params(_tree(1), _tree(0), source_model_state=_state(0))


def test_record_is_json_serialisable():
    _, _, record = tp.transfer_params(_tree(1), _tree(0), target_model_state=_state(1),
                                      source_model_state=_state(0), zero_init=["heads"])
    assert json.loads(json.dumps(record)) == record


def test_select_subtree():
    assert _equal(tp.select_subtree(_tree(), "trunk/conv0"), _tree()["trunk"]["conv0"])
    with pytest.raises(ConfigError, match="trunk has no key 'conv9' \\(it has bn0, conv0\\)"):
        tp.select_subtree(_tree(), "trunk/conv9")


def test_npz_round_trip(tmp_path):
    params = _tree(0)
    params["trunk"]["conv0"]["kernel"] = params["trunk"]["conv0"]["kernel"].astype(jnp.bfloat16)
    path = str(tmp_path / "source.npz")
    tp.save_npz(path, params, _state(0))
    with np.load(path, allow_pickle=False) as archive:
        assert "params/trunk/conv0/kernel" in archive.files
        assert "model_state/batch_stats/trunk/bn0/var" in archive.files
        assert archive["params/trunk/conv0/kernel"].dtype == np.float32   # no bfloat16 in npz
    source = tp.read_source(path)
    assert _equal(source["params"], params) and _equal(source["model_state"], _state(0))
    loaded, state, _ = tp.transfer_params(params, source["params"], target_model_state=_state(1),
                                          source_model_state=source["model_state"])
    assert loaded["trunk"]["conv0"]["kernel"].dtype == jnp.bfloat16
    assert _equal(loaded, params) and _equal(state, _state(0))


def test_npz_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"params/w": np.zeros(2), "params/o": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(DataError, match=f"{re.escape(str(path))} holds pickled Python objects"):
        tp.read_source(str(path))


@pytest.mark.parametrize("content, expected", [
    (b"not a zip archive", "is not an .npz archive"),
    (b"PK\x03\x04 then garbage", "is not a readable .npz archive"),
    (None, "holds the key 'w'"),
])
def test_corrupt_or_foreign_npz_is_one_data_error(tmp_path, content, expected):
    path = tmp_path / "bad.npz"
    if content is None:
        np.savez(path, w=np.zeros(2))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + re.escape(expected)):
        tp.read_source(str(path))


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nowhere.npz does not exist"):
        tp.read_source(str(tmp_path / "nowhere.npz"))
    with pytest.raises(DataError, match="no checkpoint in"):
        tp.read_source(str(tmp_path))


def test_run_directory_source(tmp_path):
    state = train_state.create(_tree(0), _state(0), optax.sgd(0.1))
    with Checkpointer(tmp_path / "best", max_to_keep=1) as checkpointer:
        checkpointer.save(3, {"state": state, "loop": {"step": 3}})
    source = tp.read_source(str(tmp_path))
    assert _equal(source["params"], _tree(0)) and _equal(source["model_state"], _state(0))
    assert isinstance(source["params"]["trunk"]["conv0"]["kernel"], np.ndarray)
    with pytest.raises(ConfigError, match="which must be 'best' or 'latest'"):
        tp.read_source(str(tmp_path), which="last")
