"""Batch normalization across devices: data-parallel training on one machine.

One module per framework (``torch``, ``mxnet``, ``jax``, ``tensorflow``, parallel in shape, as in
``d2l_bn`` itself) splits every minibatch over ``num_devices`` workers of that framework's own
engine and trains or evaluates ``BNLeNet`` with per-device or synchronized batch statistics. This
module holds what they share, framework-free: the shards each device draws from (class-skewed or
not), the global minibatches built from them, a port check for process groups, and a table that
prints as text and renders as a table in the book.

Device ``k`` always gets rows ``k * per_device`` to ``(k + 1) * per_device`` of a global batch, so
a single device given the whole batch sees exactly what the devices see together.
"""

from __future__ import annotations

import errno
import socket
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from ..data import images_as_batch

NUM_CLASSES = 10
HOST = "127.0.0.1"  # workers talk over the loopback interface only


def class_groups(num_devices: int, num_classes: int = NUM_CLASSES) -> list[np.ndarray]:
    """The classes of each device's skewed shard: contiguous groups, e.g. 0-4 and 5-9 for two."""
    if not 1 <= num_devices <= num_classes:
        raise ValueError(f"num_devices must be between 1 and {num_classes}, got {num_devices}")
    return np.array_split(np.arange(num_classes), num_devices)


def shards(labels: np.ndarray, num_devices: int, *, skewed: bool,
           seed: int = 0) -> list[np.ndarray]:
    """Indices of the examples each device draws from.

    ``skewed=True``: device ``k`` holds every example of the classes in ``class_groups(...)[k]``,
    as when data arrives grouped or unshuffled. ``skewed=False``: a random split into equal
    parts, each with (about) the class mix of the whole set.
    """
    labels = np.asarray(labels)
    if skewed:
        return [np.flatnonzero(np.isin(labels, group)) for group in class_groups(num_devices)]
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.array_split(order, num_devices)


def skewed_batch(images: np.ndarray, labels: np.ndarray, per_device: int, num_devices: int, *,
                 layout: str) -> tuple[np.ndarray, np.ndarray]:
    """One global batch whose device ``k`` slice is the first ``per_device`` examples of skewed
    shard ``k``: float32 images in [0, 1] in ``layout`` ("NCHW" or "NHWC"), int64 labels."""
    index = np.concatenate([shard[:per_device] for shard in shards(labels, num_devices,
                                                                    skewed=True)])
    return images_as_batch(images, index, layout), labels[index].astype(np.int64)


class ShardedBatches:
    """``num_steps`` global batches of ``per_device * num_devices`` examples: at every step each
    device takes its next ``per_device`` examples from its own shard, reshuffled after each pass
    over it. Equal arguments give equal batches, so every worker process can build the same
    sequence and keep its own slice."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, per_device: int,
                 num_devices: int, num_steps: int, skewed: bool, layout: str, seed: int = 0):
        if per_device < 1 or num_steps < 1:
            raise ValueError(f"per_device and num_steps must be positive, got {per_device} and "
                             f"{num_steps}")
        self.images, self.labels, self.layout = images, labels, layout
        self.per_device, self.num_devices, self.num_steps = per_device, num_devices, num_steps
        self.shards = shards(labels, num_devices, skewed=skewed, seed=seed)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        streams = [self._stream(shard, rng) for shard in self.shards]
        for _ in range(self.num_steps):
            index = np.concatenate([next(stream) for stream in streams])
            X = images_as_batch(self.images, index, self.layout)
            yield X, self.labels[index].astype(np.int64)

    def _stream(self, shard: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        while True:
            order = rng.permutation(shard)
            for start in range(0, len(order) - self.per_device + 1, self.per_device):
                yield order[start:start + self.per_device]


class PortInUseError(OSError):
    """The port asked for is taken on 127.0.0.1."""


def free_port(port: Optional[int] = None) -> int:
    """``port`` if it is free on 127.0.0.1 (else :class:`PortInUseError`), or, for ``None``, a
    port the operating system reports free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, 0 if port is None else port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(
                errno.EADDRINUSE,
                f"port {port} on {HOST} is already in use (another training run, or another "
                f"program): pass port=None to let the operating system pick a free one, or stop "
                f"whatever listens there") from None
        return probe.getsockname()[1]


class Table:
    """Rows of numbers with a header: text in a terminal or notebook output (what nbval
    compares), a Markdown table in the book."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence], digits: int = 3):
        self.header, self.digits = list(header), digits
        self.rows = [[self._cell(value) for value in row] for row in rows]

    def _cell(self, value) -> str:
        if isinstance(value, (float, np.floating)):
            return f"{value:.{self.digits}g}" if abs(value) < 1e-3 and value else \
                f"{value:.{self.digits}f}"
        return str(value)

    def __repr__(self) -> str:
        widths = [max(len(cell) for cell in column) for column in zip(self.header, *self.rows)]
        lines = [self.header, ["-" * width for width in widths], *self.rows]
        return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths))
                         for line in lines)

    def _repr_markdown_(self) -> str:
        lines = [self.header, ["---"] * len(self.header), *self.rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)


# --- The page's tables, from the results of data_parallel_step and train_data_parallel ----------

def statistics_table(one: dict, per_device: dict) -> Table:
    """Per channel, the mean of the first BN layer's input over the whole batch (one device) and
    over each device's slice (``per_device``)."""
    num_devices = len(per_device["batch_mean"])
    header = ["channel", "whole batch", *(f"device {k}" for k in range(num_devices))]
    return Table(header, [[str(c), one["batch_mean"][0][c], *per_device["batch_mean"][:, c]]
                          for c in range(len(one["batch_mean"][0]))])


def comparison_table(one: dict, runs: Mapping[str, dict]) -> Table:
    """How far each multi-device step in ``runs`` is from one device on the whole batch: the
    largest difference of the logits, of the first layer's gradient (relative to its largest
    entry) and of the first BN layer's running mean on any device."""
    def largest(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max())

    scale = float(np.abs(one["grad"]).max())
    return Table(["batch statistics", "logits", "gradient (relative)", "running mean"],
                 [[name, largest(run["outputs"], one["outputs"]),
                   largest(run["grad"], one["grad"]) / scale,
                   largest(run["running_mean"], one["running_mean"][0])]
                  for name, run in runs.items()])


def training_table(results: Mapping[tuple[str, str], dict]) -> Table:
    """One row per training run, keyed by (shards, batch statistics)."""
    return Table(["shards", "batch statistics", "validation accuracy", "validation loss",
                  "training loss"],
                 [[shards, stats, r["val_acc"], r["val_loss"], r["train_loss"]]
                  for (shards, stats), r in results.items()])
