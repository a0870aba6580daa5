"""PNG plots of training curves (e.g. accuracy vs. steps).

The figures are drawn with matplotlib's Agg canvas directly (no `pyplot`),
so this works without a display, does not change matplotlib's global
backend and is safe to call from scripts that also use pyplot.
"""

from collections.abc import Mapping, Sequence
import os
import pathlib
import tempfile

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

_Series = tuple[Sequence[float], Sequence[float]] | tuple[
    Sequence[float], Sequence[float], Sequence[float] | None]


def _check_xy(name: str, xs, ys, yerr=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xs = np.asarray(xs, dtype=float).reshape(-1)
    ys = np.asarray(ys, dtype=float).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f'{name}: xs has {xs.size} points but ys has {ys.size}.')
    if yerr is not None:
        yerr = np.asarray(yerr, dtype=float).reshape(-1)
        if yerr.shape != ys.shape:
            raise ValueError(f'{name}: yerr has {yerr.size} points but ys has {ys.size}.')
    return xs, ys, yerr


def _save(figure: Figure, path_png: str | os.PathLike, dpi: int) -> None:
    """Renders `figure` to `path_png` atomically."""
    path = pathlib.Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.png')
    try:
        with os.fdopen(fd, 'wb') as f:
            figure.savefig(f, format='png', dpi=dpi, bbox_inches='tight')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_series(path_png: str | os.PathLike, series: Mapping[str, _Series], *,
                xlabel: str = '', ylabel: str = '', title: str = '',
                logy: bool = False, dpi: int = 100) -> None:
    """Plots several named curves on one axis and saves them as a PNG.

    Args:
        path_png: The output file (parent directories are created).
        series: Name -> (xs, ys) or (xs, ys, yerr); `yerr` (e.g. a 95%
            confidence half-width) is drawn as a shaded band.
        xlabel: The x axis label.
        ylabel: The y axis label.
        title: The figure title.
        logy: Use a logarithmic y axis (e.g. for losses).
        dpi: The resolution.

    Raises:
        ValueError: If `series` is empty or a series' arrays differ in length.
    """
    if not series:
        raise ValueError('plot_series needs at least one series.')
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    for name, values in series.items():
        xs, ys, yerr = _check_xy(name, *values)
        (line,) = axes.plot(xs, ys, label=name, marker='o' if xs.size <= 20 else None,
                            markersize=3)
        if yerr is not None:
            axes.fill_between(xs, ys - yerr, ys + yerr, color=line.get_color(), alpha=0.2,
                              linewidth=0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if logy:
        axes.set_yscale('log')
    axes.grid(True, alpha=0.3)
    if len(series) > 1 or next(iter(series)):
        axes.legend(loc='best', fontsize='small')
    _save(figure, path_png, dpi)


def plot_curve(path_png: str | os.PathLike, xs: Sequence[float], ys: Sequence[float],
               yerr: Sequence[float] | None = None, *, xlabel: str = '', ylabel: str = '',
               title: str = '', logy: bool = False, dpi: int = 100) -> None:
    """Plots one curve (optionally with an error band) and saves it as a PNG.

    Args:
        path_png: The output file (parent directories are created).
        xs: The x values, e.g. training steps.
        ys: The y values, e.g. accuracies.
        yerr: Optional half-widths of an error band around `ys`.
        xlabel: The x axis label.
        ylabel: The y axis label.
        title: The figure title.
        logy: Use a logarithmic y axis.
        dpi: The resolution.

    Raises:
        ValueError: If the arrays differ in length.
    """
    plot_series(path_png, {'': (xs, ys, yerr)}, xlabel=xlabel, ylabel=ylabel, title=title,
                logy=logy, dpi=dpi)
