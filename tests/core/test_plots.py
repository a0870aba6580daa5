"""Tests for core.plots."""

import numpy as np
import pytest

from core import plots

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_plot_curve_writes_png(tmp_path):
    path = tmp_path / 'sub' / 'acc.png'
    xs = np.arange(10)
    plots.plot_curve(path, xs, xs / 10, yerr=np.full(10, 0.05), xlabel='step',
                     ylabel='accuracy', title='test')
    assert path.read_bytes()[:8] == _PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ['acc.png']


def test_plot_series_writes_png(tmp_path):
    path = tmp_path / 'loss.png'
    plots.plot_series(path, {'train': ([1, 2, 3], [3.0, 2.0, 1.0]),
                             'valid': ([1, 3], [3.5, 1.5], [0.1, 0.2])}, logy=True)
    assert path.read_bytes()[:8] == _PNG_MAGIC


def test_mismatched_lengths_raise(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_curve(tmp_path / 'x.png', [1, 2], [1.0])
    with pytest.raises(ValueError):
        plots.plot_series(tmp_path / 'x.png', {})
