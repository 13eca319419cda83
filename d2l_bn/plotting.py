"""Plots of a training run, framework-free (matplotlib's object API only)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

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
    if ax is None:
        import matplotlib.pyplot as plt  # only here: the live figure must not involve pyplot

        _, ax = plt.subplots(figsize=(5, 3.5))
    get = history.__getitem__ if isinstance(history, Mapping) else history.__getattribute__
    epochs = get("epoch")
    for key, (label, style) in CURVES.items():
        ax.plot(epochs, get(key), style, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
    ax.set_ylim(bottom=0)
    ax.set_ylabel("loss / accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def plot_curves(curves: Mapping[str, Sequence[float]], ylabel: str,
                ax: Optional[Axes] = None) -> Axes:
    """Draw per-epoch curves over each other, one line per entry of ``curves`` (its label), against
    epochs 1, 2, ... Without ``ax``, a new pyplot figure is made; with one, only it is touched."""
    if ax is None:
        import matplotlib.pyplot as plt  # only here, as in plot_history

        _, ax = plt.subplots(figsize=(5, 3.5))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), list(values), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax
