"""A progress display for training loops that costs nothing per step.

`ProgressBar` shows steps/s, ETA and a few scalars (loss, accuracy, ...)::

    with ProgressBar(total_steps, start_step=start) as bar:
        for step in range(start, total_steps):
            state, loss = train_step(state, batch)
            bar.update(step, loss=loss)

`update` only compares a clock most of the time: the display is refreshed at
most every `refresh_secs` (0.5 s), and only then are the scalars converted to
python floats. Passing jax arrays is therefore fine: the loop is not
synchronized with the device on every step.

Output depends on the stream:

* a terminal (TTY): a tqdm bar redrawn in place;
* anything else (a log file, a pipe, CI): one plain line every `log_secs`
  (30 s) plus a final line, e.g.
  `train: step 1200/10000 (12.0%) 431.2 steps/s ETA 00:20 loss=0.4213`, so
  log files do not fill with carriage-return updates.
"""

from collections.abc import Mapping
import sys
import time
from typing import Any, TextIO

import numpy as np
import tqdm


def format_scalars(scalars: Mapping[str, Any]) -> str:
    """Formats scalars compactly: 'loss=0.4213 acc=0.9'."""
    parts = []
    for name, value in scalars.items():
        try:
            parts.append(f'{name}={float(np.asarray(value)):.4g}')
        except (TypeError, ValueError):
            parts.append(f'{name}={value}')
    return ' '.join(parts)


class ProgressBar:
    """Progress over the steps [start_step, total_steps).

    Args:
        total_steps: The step count at which training ends.
        start_step: The first step of this process (> 0 when resumed).
        desc: A short label shown before the bar.
        file: The output stream; sys.stderr by default.
        tty: Force the terminal (True) or plain-line (False) display; by
            default `file.isatty()` decides.
        refresh_secs: Minimum time between display refreshes on a terminal.
        log_secs: Time between lines in the plain-line display.
        disable: Show nothing at all.
    """

    def __init__(self, total_steps: int, start_step: int = 0, desc: str = 'train',
                 file: TextIO | None = None, tty: bool | None = None,
                 refresh_secs: float = 0.5, log_secs: float = 30.0,
                 disable: bool = False):
        self._file = file if file is not None else sys.stderr
        if tty is None:
            isatty = getattr(self._file, 'isatty', None)
            tty = bool(isatty and isatty())
        self._tty = tty
        self._total = int(total_steps)
        self._start = int(start_step)
        self._desc = desc
        self._refresh_secs = refresh_secs if tty else log_secs
        self._disable = disable
        self._position = self._start
        self._scalars: Mapping[str, Any] = {}
        self._start_time = time.monotonic()
        self._last_refresh = self._start_time
        self._closed = False
        self._bar = None
        if tty and not disable:
            self._bar = tqdm.tqdm(
                total=self._total, initial=self._start, desc=desc, file=self._file,
                mininterval=refresh_secs, dynamic_ncols=True, unit='step', smoothing=0.3)

    @property
    def position(self) -> int:
        """The number of steps completed so far (including resumed ones)."""
        return self._position

    def update(self, step: int, **scalars: Any) -> None:
        """Records that `step` (0-based) is done; the bar shows step + 1.

        Args:
            step: The step just completed.
            **scalars: Values to display, e.g. loss=loss. Only converted to
                float when the display is refreshed.
        """
        self._position = int(step) + 1
        if scalars:
            self._scalars = scalars
        if self._disable or self._closed:
            return
        now = time.monotonic()
        if now - self._last_refresh < self._refresh_secs:
            return
        self._last_refresh = now
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            if self._scalars:
                self._bar.set_postfix_str(format_scalars(self._scalars), refresh=False)
            self._bar.update(self._position - self._bar.n)
        else:
            self._file.write(self.status_line() + '\n')
            self._file.flush()

    def status_line(self) -> str:
        """Returns the plain-text status: step, percent, steps/s, ETA, scalars."""
        elapsed = max(time.monotonic() - self._start_time, 1e-9)
        done = self._position - self._start
        rate = done / elapsed
        percent = 100.0 * self._position / max(self._total, 1)
        line = f'{self._desc}: step {self._position}/{self._total} ({percent:.1f}%)'
        line += f' {rate:.1f} steps/s'
        if rate > 0 and self._position < self._total:
            line += f' ETA {tqdm.tqdm.format_interval((self._total - self._position) / rate)}'
        elif self._position >= self._total:
            line += f' done in {tqdm.tqdm.format_interval(elapsed)}'
        if self._scalars:
            line += ' ' + format_scalars(self._scalars)
        return line

    def close(self) -> None:
        """Shows the final state and closes the display. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._disable:
            return
        self._refresh()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> 'ProgressBar':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
