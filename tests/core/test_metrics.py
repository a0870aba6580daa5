"""Tests for core.metrics."""

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from core import metrics
from core.errors import DataError


def _steps(records, split=None):
    return [r['step'] for r in records if split is None or r['split'] == split]


def test_write_and_read(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        writer.write(1, 'train', {'loss': jnp.float32(0.5), 'acc': np.float64(0.25)})
        writer.write(np.int64(2), 'valid', {'acc': jnp.array([0.75])})
    records = metrics.read_metrics(tmp_path)
    assert [(r['step'], r['split']) for r in records] == [(1, 'train'), (2, 'valid')]
    assert records[0]['loss'] == 0.5 and records[0]['acc'] == 0.25
    assert records[1]['acc'] == 0.75
    assert isinstance(records[0]['time'], float)
    assert metrics.read_metrics(tmp_path, split='valid') == records[1:]
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines():
        assert isinstance(json.loads(line)['step'], int)


def test_rejects_non_scalars_and_reserved_names(tmp_path):
    with metrics.MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(TypeError):
            writer.write(1, 'train', {'loss': np.zeros(3)})
        with pytest.raises(ValueError):
            writer.write(1, 'train', {'step': 1.0})


def test_resume_drops_later_steps_and_partial_line(tmp_path):
    with metrics.MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 7):
            writer.write(step, 'train', {'loss': float(step)})
    path = tmp_path / 'metrics.jsonl'
    with open(path, 'a') as f:
        f.write('{"step": 7, "split": "tr')  # Killed mid-write.
    with metrics.MetricsWriter(tmp_path, resume_step=4, tensorboard=False) as writer:
        for step in range(5, 9):
            writer.write(step, 'train', {'loss': float(step)})
    records = metrics.read_metrics(tmp_path)
    assert _steps(records) == list(range(1, 9))
    assert [r['loss'] for r in records] == [float(s) for s in range(1, 9)]
    assert path.read_text().endswith('\n')


def test_partial_last_line_without_newline_is_dropped(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1, "split": "t", "time": 0}\n{"step": 2, "split": "t", "time": 0}')
    assert _steps(metrics.read_metrics(tmp_path)) == [1]
    with metrics.MetricsWriter(tmp_path, resume_step=10, tensorboard=False):
        pass
    assert path.read_text() == '{"step": 1, "split": "t", "time": 0}\n'


def test_fresh_start_empties_stale_metrics(tmp_path):
    with metrics.MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, 'train', {'loss': 1.0})
    with metrics.MetricsWriter(tmp_path, resume_step=None, tensorboard=False) as writer:
        writer.write(1, 'train', {'loss': 2.0})
    assert [r['loss'] for r in metrics.read_metrics(tmp_path)] == [2.0]


def test_corrupt_middle_line_raises(tmp_path):
    (tmp_path / 'metrics.jsonl').write_text('garbage\n{"step": 1}\n')
    with pytest.raises(DataError):
        metrics.read_metrics(tmp_path)


def _tfrecords(data: bytes) -> list[bytes]:
    """Splits TFRecord framing: len(u64) crc(u32) payload crc(u32)."""
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack('<Q', data[offset:offset + 8])
        records.append(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
    assert offset == len(data)
    return records


def test_tensorboard_event_file_has_tags(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        writer.write(3, 'train', {'loss': 0.5})
        writer.write(3, 'valid', {'accuracy': 0.9})
    event_files = list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
    assert len(event_files) == 1
    payloads = _tfrecords(event_files[0].read_bytes())
    assert len(payloads) >= 3  # File version + two scalars.
    joined = b''.join(payloads)
    assert b'train/loss' in joined and b'valid/accuracy' in joined
