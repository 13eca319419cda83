"""Plots of a training run, framework-free (matplotlib's object API only)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

# key -> (legend label, line style); loss and accuracy share one y axis, as in d2l's plots: both
# lie near [0, 1] on Fashion-MNIST, and a single axis needs a single legend.
CURVES = {
    "train_loss": ("train loss", "-"),
    "val_loss": ("val loss", "--"),
    "val_acc": ("val acc", "-."),
}


def plot_history(history: Union[Mapping[str, Any], Any], ax: Optional[Axes] = None) -> Axes:
    """Draw training loss, validation loss and validation accuracy against the epoch.

    ``history`` is a :class:`d2l_bn.training.History` or a mapping with the lists ``epoch``,
    ``train_loss``, ``val_loss`` and ``val_acc``. Without ``ax``, a new pyplot figure is made (so a
    notebook shows it); with one, only that axis is touched. Returns the axis.
    """
    ax = _axes_or_new(ax)
    get = history.__getitem__ if isinstance(history, Mapping) else history.__getattribute__
    epochs = get("epoch")
    for key, (label, style) in CURVES.items():
        ax.plot(epochs, get(key), style, marker="o", markersize=3, label=label)
    ax.set_ylim(bottom=0)
    _finish_epoch_axes(ax, "loss / accuracy")
    return ax


def plot_curves(curves: Mapping[str, Sequence[float]], ylabel: str,
                ax: Optional[Axes] = None) -> Axes:
    """Draw per-epoch curves over each other, one line per entry of ``curves`` (its label), against
    epochs 1, 2, ... Without ``ax``, a new pyplot figure is made; with one, only it is touched."""
    ax = _axes_or_new(ax)
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), list(values), marker="o", markersize=3, label=label)
    _finish_epoch_axes(ax, ylabel)
    return ax


def _axes_or_new(ax: Optional[Axes]) -> Axes:
    if ax is None:
        import matplotlib.pyplot as plt  # only here: the live figure must not involve pyplot

        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def _finish_epoch_axes(ax: Axes, ylabel: str) -> None:
    """What every per-epoch plot shares: whole epochs on x, the y label, a grid, the legend."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()


def plot_shared_statistics(shared: Mapping[str, Any], layout: str = "NCHW") -> None:
    """Draw, for each normalization, which values of a small 4-D batch share one mean and variance.

    ``shared`` maps a name to a boolean array (of any framework, convertible by NumPy) of the
    batch's shape, True where a value pools its statistics with the first value; ``layout`` is the
    order of its axes, "NCHW" or "NHWC". Each panel is a grid of examples (rows) by channels
    (columns); each cell of it holds that channel's H x W values of that example.
    """
    import matplotlib.pyplot as plt  # only here, as in plot_history

    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    fig, axes = plt.subplots(1, len(shared), figsize=(3 * len(shared), 2.4), squeeze=False)
    for ax, (name, mask) in zip(axes[0], shared.items()):
        mask = np.asarray(mask, dtype=bool)
        if layout == "NHWC":
            mask = mask.transpose(0, 3, 1, 2)
        n, c, h, w = mask.shape
        # (N, C, H, W) -> an image of N rows of C patches of H x W pixels
        image = mask.transpose(0, 2, 1, 3).reshape(n * h, c * w)
        ax.imshow(image, cmap="Blues", vmin=-0.3, vmax=1.2, interpolation="nearest")
        ax.set_xticks(np.arange(c) * w + (w - 1) / 2, labels=range(c))
        ax.set_yticks(np.arange(n) * h + (h - 1) / 2, labels=range(n))
        ax.set_xticks(np.arange(1, c) * w - 0.5, minor=True)
        ax.set_yticks(np.arange(1, n) * h - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("channel")
        ax.set_title(f"{name}: {int(mask.sum())} values")
    axes[0][0].set_ylabel("example")
    fig.tight_layout()
