"""The framework-free half of a training run: history, epoch loop, divergence check, reporting.

Each framework's ``Trainer.fit`` supplies two callables and lets :func:`run_epochs` do the rest::

    def train_epoch(report) -> float:   # one pass over the training data
        ...                             # per step: update, accumulate the loss ON THE DEVICE,
        report.batch_done()             # and tell the report (cheap, no host sync)
        return mean_loss_as_float       # the one host sync of the epoch

    def evaluate() -> tuple[float, float]:  # (mean validation loss, validation accuracy)
        ...

    history = run_epochs(self.history, max_epochs, train_epoch, evaluate,
                         num_batches=len(train_loader), lr=model.lr)

The loop checks the mean training loss once per epoch and raises :class:`TrainingDiverged` when it
is NaN or infinite; Ctrl-C stops training cleanly and keeps the history. In a Jupyter notebook the
run is reported by one live figure; elsewhere by a progress bar on stderr.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from matplotlib.figure import Figure

from .plotting import plot_history


@dataclass
class History:
    """Per-epoch results of a training run: four lists of equal length, epochs counted from 1."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)

    def append(self, epoch: int, train_loss: float, val_loss: float, val_acc: float) -> None:
        self.epoch.append(epoch)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.val_acc.append(val_acc)

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        # One line, since a notebook cell ending in trainer.fit(...) prints it under the figure.
        if not self.epoch:
            return "History(no epochs)"
        return (f"History({len(self)} epochs; epoch {self.epoch[-1]}: train_loss "
                f"{self.train_loss[-1]:.4f}, val_loss {self.val_loss[-1]:.4f}, val_acc "
                f"{self.val_acc[-1]:.4f})")


class TrainingDiverged(FloatingPointError):
    """An epoch's mean training loss was NaN or infinite; ``history`` holds the epochs before."""

    def __init__(self, epoch: int, loss: float, lr: Optional[float], history: History):
        self.epoch, self.loss, self.lr, self.history = epoch, loss, lr, history
        rate = "" if lr is None else f" at learning rate {lr:g}"
        advice = ("Lower the learning rate" if lr is None
                  else f"Lower the learning rate (e.g. halve it, to {lr / 2:g})")
        super().__init__(
            f"training diverged in epoch {epoch}: its mean training loss is {loss}{rate}. "
            f"{advice} and check the inputs for NaN, infinite or unscaled values. The model's "
            f"weights, and the running statistics of built-in batch-norm layers, may now hold "
            f"NaN: build a fresh model before training again. The history of the "
            f"{len(history)} epoch(s) before is kept in trainer.history.")


# --- Reporting ---------------------------------------------------------------------------------

class Report:
    """Tells the user how training goes. This base class stays silent."""

    def start(self, max_epochs: int, num_batches: Optional[int]) -> None:
        self.max_epochs = max_epochs

    def epoch_start(self, epoch: int) -> None:
        pass

    def batch_done(self) -> None:
        """Called once per training step: must be cheap and must not touch the device."""

    def epoch_done(self, history: History) -> None:
        pass

    def close(self) -> None:
        """Called at the end of training, however it ends; may be called more than once."""


class ProgressBar(Report):
    """A tqdm bar over all training steps, on stderr, with the latest results as postfix."""

    def start(self, max_epochs: int, num_batches: Optional[int]) -> None:
        from tqdm import tqdm  # the plain text bar: tqdm.auto would pick a widget in Jupyter

        super().start(max_epochs, num_batches)
        total = None if num_batches is None else max_epochs * num_batches
        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)

    def epoch_start(self, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch}/{self.max_epochs}", refresh=False)

    def batch_done(self) -> None:
        self.bar.update()

    def epoch_done(self, history: History) -> None:
        self.bar.set_postfix(train_loss=f"{history.train_loss[-1]:.3f}",
                             val_loss=f"{history.val_loss[-1]:.3f}",
                             val_acc=f"{history.val_acc[-1]:.3f}")

    def close(self) -> None:
        self.bar.close()


class LiveFigure(Report):
    """One figure in a notebook output, redrawn in place after every epoch.

    The figure is a bare :class:`~matplotlib.figure.Figure`, never registered with pyplot, so the
    inline backend does not show it a second time at the end of the cell; it is rendered to PNG
    by Agg (no interactive drawing) and sent as an image, so the notebook stores one PNG output
    whatever matplotlib backend or IPython formatters are active.
    """

    def start(self, max_epochs: int, num_batches: Optional[int]) -> None:
        from IPython.display import display

        super().start(max_epochs, num_batches)
        self.figure = Figure(figsize=(5, 3.5), layout="constrained")
        self.ax = self.figure.add_subplot()
        self.handle = display(self._draw(History()), display_id=True)

    def epoch_done(self, history: History) -> None:
        image = self._draw(history)
        if self.handle is None:  # no IPython kernel: display() printed the image's repr instead
            print(image)
        else:
            self.handle.update(image)

    def _draw(self, history: History):
        from IPython.display import Image

        self.ax.clear()
        plot_history(history, self.ax)
        # A fixed x range: the curves grow to the right instead of the axes rescaling every epoch.
        self.ax.set_xlim(0.5, self.max_epochs + 0.5)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=100)
        return Image(data=buffer.getvalue(), format="png")


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (not a terminal IPython or plain Python)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def make_report(kind: "str | Report" = "auto") -> Report:
    """``"figure"`` (live plot), ``"bar"`` (progress bar), ``"none"``; ``"auto"`` picks the figure
    in a notebook and the bar elsewhere. A :class:`Report` instance is used as it is (the
    benchmarks time epochs with one)."""
    if isinstance(kind, Report):
        return kind
    if kind == "auto":
        kind = "figure" if in_notebook() else "bar"
    reports = {"figure": LiveFigure, "bar": ProgressBar, "none": Report}
    if kind not in reports:
        raise ValueError(f"report must be 'auto', 'figure', 'bar' or 'none', got {kind!r}")
    return reports[kind]()


# --- The epoch loop ----------------------------------------------------------------------------

def run_epochs(history: History, max_epochs: int, train_epoch: Callable[[Report], float],
               evaluate: Callable[[], tuple[float, float]], *, num_batches: Optional[int] = None,
               lr: Optional[float] = None, report: "str | Report" = "auto",
               after_epoch: Optional[Callable[[int], None]] = None) -> History:
    """Train for ``max_epochs``, appending each finished epoch to ``history``, and return it.

    ``history`` belongs to the caller (the trainer), so it keeps the epochs done so far however
    training ends. After each epoch the mean training loss, which ``train_epoch`` returns as a
    Python float, is checked; if it is NaN or infinite, :class:`TrainingDiverged` is raised before
    evaluating. A KeyboardInterrupt (Ctrl-C, or "interrupt the kernel") ends training with one line
    of explanation instead of a traceback. ``after_epoch(epoch)``, if given, runs after each epoch
    is evaluated and recorded: e.g. to measure the model in another way between epochs.
    """
    reporter = make_report(report)
    reporter.start(max_epochs, num_batches)
    epoch = 0
    try:
        for epoch in range(1, max_epochs + 1):
            reporter.epoch_start(epoch)
            train_loss = float(train_epoch(reporter))
            if not math.isfinite(train_loss):
                raise TrainingDiverged(epoch, train_loss, lr, history)
            val_loss, val_acc = evaluate()
            history.append(epoch, train_loss, float(val_loss), float(val_acc))
            if after_epoch is not None:
                after_epoch(epoch)
            reporter.epoch_done(history)
    except KeyboardInterrupt:
        reporter.close()  # first, so that the bar does not cut through the message
        print(f"Training interrupted at epoch {epoch} of {max_epochs}; the history of the "
              f"{len(history)} completed epoch(s) is kept.")
    finally:
        reporter.close()
    return history
