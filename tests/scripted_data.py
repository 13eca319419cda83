"""Synthetic data for the Trainer tests of every framework, written once (numpy only).

Its training loader can poison one batch of an epoch with a NaN or raise KeyboardInterrupt at one
batch, and it counts the batches it served, so the tests can see where a run stopped.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np


class ScriptedData:
    """``num_batches`` seeded batches of ``shape`` (images) with labels in 0..9, served through
    ``to_tensors(X, y)`` (the framework's conversion from numpy)."""

    def __init__(self, shape: tuple, to_tensors: Callable, num_batches: int = 4,
                 nan_epoch: Optional[int] = None, interrupt: Optional[tuple] = None,
                 label_dtype=np.int64):
        rng = np.random.default_rng(0)
        self.batches = [(rng.random(shape, dtype=np.float32),
                         rng.integers(0, 10, shape[0]).astype(label_dtype))
                        for _ in range(num_batches)]
        self.to_tensors = to_tensors
        self.nan_epoch, self.interrupt = nan_epoch, interrupt  # interrupt: (epoch, batch)
        self.epoch, self.served = 0, []  # batches served per training epoch

    def train_dataloader(self):
        return self

    def val_dataloader(self):
        return [self.to_tensors(X, y) for X, y in self.batches]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.epoch += 1
        self.served.append(0)
        for i, (X, y) in enumerate(self.batches):
            if self.interrupt == (self.epoch, i):
                raise KeyboardInterrupt
            if self.epoch == self.nan_epoch and i == 1:
                X = X.copy()
                X.flat[0] = np.nan
            self.served[-1] += 1
            yield self.to_tensors(X, y)
