"""Tests for core.progress."""

import io
import time

import jax.numpy as jnp

from core import progress


def test_plain_lines_when_not_a_tty():
    out = io.StringIO()
    with progress.ProgressBar(100, start_step=10, file=out, log_secs=0.0) as bar:
        for step in range(10, 100):
            bar.update(step, loss=jnp.float32(0.123456))
    lines = out.getvalue().splitlines()
    assert '\r' not in out.getvalue()
    assert lines[-1].startswith('train: step 100/100 (100.0%)')
    assert 'loss=0.1235' in lines[-1]
    assert bar.position == 100


def test_plain_lines_are_rate_limited():
    out = io.StringIO()
    bar = progress.ProgressBar(10_000, file=out, log_secs=60.0)
    start = time.perf_counter()
    for step in range(10_000):
        bar.update(step, loss=step)
    assert time.perf_counter() - start < 1.0
    assert out.getvalue() == ''
    bar.close()
    bar.close()
    assert len(out.getvalue().splitlines()) == 1


def test_tty_mode_uses_tqdm():
    out = io.StringIO()
    with progress.ProgressBar(50, file=out, tty=True, refresh_secs=0.0) as bar:
        for step in range(50):
            bar.update(step, loss=1.5)
    text = out.getvalue()
    assert '50/50' in text and 'loss=1.5' in text


def test_disabled_writes_nothing():
    out = io.StringIO()
    with progress.ProgressBar(5, file=out, disable=True) as bar:
        bar.update(4)
    assert out.getvalue() == ''
