"""Scalar metrics of a training run: `metrics.jsonl` and TensorBoard events.

`MetricsWriter` appends one JSON object per line to `workdir/metrics.jsonl`::

    {"step": 100, "split": "train", "time": 1712345678.9, "loss": 0.42}

and mirrors every scalar to TensorBoard event files in `workdir/tensorboard/`
(tensorboardX, no TensorFlow needed) under the tag `<split>/<name>`.

Resuming: a run restarted from a checkpoint at step `s` passes
`resume_step=s`. Lines with `step > s` (written after that checkpoint by the
killed process) are dropped, as is a truncated last line, so the finished run
holds exactly the metrics an uninterrupted run would have. `resume_step=None`
means a fresh start: an existing `metrics.jsonl` is emptied (its lines came
from an attempt that died before its first checkpoint and will be recomputed).
TensorBoard is told to hide the dropped events as well (`purge_step`).

Every line is flushed to the operating system as soon as it is written, so a
killed process never loses lines it already wrote.
"""

from collections.abc import Mapping
import json
import logging
import os
import pathlib
import time
from typing import Any

import numpy as np
import tensorboardX

from core.errors import DataError
from core.run_dir import atomic_write_text

# A diverged evaluation (NaN) is a legitimate value to log; tensorboardX would warn
# about it on every write.
logging.getLogger('tensorboardX.x2num').setLevel(logging.ERROR)

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
_RESERVED = ('step', 'split', 'time')


def _to_float(name: str, value: Any) -> float:
    """Converts a python/numpy/jax scalar (or size-1 array) to float."""
    try:
        array = np.asarray(value)
        if array.size != 1:
            raise ValueError(f'shape {array.shape}')
        return float(array.reshape(()))
    except (TypeError, ValueError) as e:
        raise TypeError(f'Metric {name!r} is not a scalar: {value!r} ({e}).') from e


def _parse_lines(path: pathlib.Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Parses metrics.jsonl, tolerating a truncated last line.

    Returns:
        The parsed records and their raw lines (each ending with a newline).

    Raises:
        DataError: If a line other than the last one is not valid JSON.
    """
    text = path.read_text(encoding='utf-8')
    raw_lines = text.splitlines(keepends=True)
    records, kept = [], []
    for index, line in enumerate(raw_lines):
        is_last = index == len(raw_lines) - 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or 'step' not in record:
                raise ValueError('not a metrics record')
        except ValueError as e:
            if is_last:
                break  # Written by a process killed mid-write.
            raise DataError(f'{path}, line {index + 1} is corrupt ({e}): {line[:200]!r}') from e
        if is_last and not line.endswith('\n'):
            break  # Complete JSON by luck, but the write was cut before '\n'.
        records.append(record)
        kept.append(line)
    return records, kept


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """Reads the metrics of a run.

    Args:
        workdir: The run directory.
        split: If given, only records of this split are returned.

    Returns:
        The records in file order; a truncated last line is ignored. Empty if
        the file does not exist.

    Raises:
        DataError: If the file is corrupt before its last line.
    """
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records, _ = _parse_lines(path)
    if split is not None:
        records = [r for r in records if r.get('split') == split]
    return records


class MetricsWriter:
    """Writes scalar metrics to `metrics.jsonl` and TensorBoard.

    Usage::

        with MetricsWriter(workdir, resume_step=ckpt.latest_step()) as writer:
            writer.write(step, 'train', {'loss': loss, 'accuracy': acc})

    Args:
        workdir: The run directory (created if needed).
        resume_step: The step of the checkpoint the run resumes from; records
            with a larger step are dropped. None for a fresh start, which
            empties an existing metrics file.
        tensorboard: Whether to also write TensorBoard event files.
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None,
                 tensorboard: bool = True):
        self._workdir = pathlib.Path(workdir)
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._path = self._workdir / METRICS_FILE
        self._truncate(resume_step)
        self._file = open(self._path, 'a', encoding='utf-8')
        self._tb = None
        if tensorboard:
            # TensorBoard hides events of earlier files with step >= purge_step.
            purge_step = 0 if resume_step is None else resume_step + 1
            self._tb = tensorboardX.SummaryWriter(
                logdir=str(self._workdir / TENSORBOARD_DIR), purge_step=purge_step,
                flush_secs=30)

    @property
    def path(self) -> pathlib.Path:
        """The `metrics.jsonl` file."""
        return self._path

    def _truncate(self, resume_step: int | None) -> None:
        if not self._path.exists():
            return
        if resume_step is None:
            if self._path.stat().st_size:
                atomic_write_text(self._path, '')
            return
        records, lines = _parse_lines(self._path)
        kept = [line for record, line in zip(records, lines) if record['step'] <= resume_step]
        text = ''.join(kept)
        if text != self._path.read_text(encoding='utf-8'):
            atomic_write_text(self._path, text)

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        """Writes one record of scalars.

        Args:
            step: The training step (python or numpy/jax integer).
            split: E.g. 'train', 'valid', 'test'.
            scalars: Name -> python/numpy/jax scalar. Values are converted to
                float (this waits for pending jax computations).

        Raises:
            TypeError: If a value is not a scalar.
            ValueError: If a name is one of 'step', 'split', 'time', or the
                writer is closed.
        """
        if self._file is None:
            raise ValueError('MetricsWriter is closed.')
        step = int(step)
        values = {}
        for name, value in scalars.items():
            if name in _RESERVED:
                raise ValueError(f'Metric name {name!r} is reserved; use another name.')
            values[str(name)] = _to_float(name, value)
        record = {'step': step, 'split': split, 'time': time.time(), **values}
        line = json.dumps(record, allow_nan=True)
        self._file.write(line + '\n')
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f'{split}/{name}', value, global_step=step,
                                    walltime=record['time'])

    def flush(self) -> None:
        """Makes all written metrics durable (fsync) and flushes TensorBoard."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the files. Safe to call twice."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> 'MetricsWriter':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class NullMetricsWriter(MetricsWriter):
    """The writer of a process that does not write the run directory (multi-process runs).

    It converts every value as `MetricsWriter.write` does, so every process
    waits for the same computations, and writes nothing.
    """

    def __init__(self):  # pylint: disable=super-init-not-called
        self._file = None
        self._tb = None
        self._path = None

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        for name, value in scalars.items():
            _to_float(name, value)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
