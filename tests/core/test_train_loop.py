"""The generic loop: schedule, best-validation slot, resumption."""

import jax.numpy as jnp
import numpy as np
import pytest

from core import train_loop
from core.checkpoint import Checkpointer
from core.metrics import MetricsWriter, read_metrics


def _step(state, batch):
    new = {"step": state["step"] + 1, "w": state["w"] + batch}
    return new, {"loss": new["w"]}


def _run(workdir, num_steps, eval_fn=None):
    ckpt = Checkpointer(workdir / "checkpoints")
    best = Checkpointer(workdir / "best", max_to_keep=1)
    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros(())}
    config = train_loop.LoopConfig(num_steps=num_steps, eval_every=4, checkpoint_every=3,
                                   log_every=2, select_metric="score", select_mode="max")
    with MetricsWriter(workdir, resume_step=ckpt.latest_step()) as writer:
        result = train_loop.run(config, state, _step, lambda i: jnp.float32(i % 5), writer=writer,
                                checkpointer=ckpt, best_checkpointer=best, eval_fn=eval_fn,
                                progress=False)
    return result, ckpt, best, state


def _score(state, step):
    # Peaks at step 8 of 10; NaN at step 4 must never be selected.
    return {"score": float("nan") if step == 4 else -abs(step - 8)}


def test_loop_trains_validates_and_keeps_the_best_state(tmp_path):
    result, ckpt, best, template = _run(tmp_path, 10, _score)
    assert int(result.state["step"]) == 10
    assert float(result.state["w"]) == sum(i % 5 for i in range(10))
    assert result.best_step == 8 and result.best_value == 0.0
    assert int(train_loop.restore_best(best, template)["step"]) == 8
    assert ckpt.latest_step() == 10
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 4, 8, 10]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6, 8, 10]


def test_resumed_loop_ends_like_an_uninterrupted_one(tmp_path):
    full, *_ = _run(tmp_path / "full", 10, _score)
    _run(tmp_path / "split", 7, _score)  # stops after the checkpoint at 7
    resumed, *_ = _run(tmp_path / "split", 10, _score)
    assert resumed.resumed_from == 7
    np.testing.assert_array_equal(resumed.state["w"], full.state["w"])
    assert resumed.best_step == full.best_step
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]
    # The first part's own last step (7) is logged and validated as its end; nothing else differs.
    split_rows = [r for r in read_metrics(tmp_path / "split") if r["step"] != 7]
    assert strip(split_rows) == strip(read_metrics(tmp_path / "full"))


def test_loop_config_rejects_bad_values():
    with pytest.raises(ValueError, match="select_mode"):
        train_loop.LoopConfig(num_steps=1, select_mode="up")
    with pytest.raises(ValueError, match="num_steps"):
        train_loop.LoopConfig(num_steps=-1)
