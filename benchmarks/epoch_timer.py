"""The live figure of the notebooks, timing each epoch: how the benchmarks time a Trainer."""

import time

from d2l_bn.training import LiveFigure


class EpochTimer(LiveFigure):
    """The notebook's live figure, redrawn after every epoch as in the chapter, with the time of
    each whole epoch (training, validation, drawing) recorded.

    Outside a notebook IPython's ``display`` prints a one-line repr instead of an image; the
    figure is still rendered to PNG every epoch, so its cost is counted.
    """

    def start(self, max_epochs, num_batches):
        self.epoch_seconds: list[float] = []
        super().start(max_epochs, num_batches)

    def epoch_start(self, epoch):
        self._started = time.perf_counter()

    def epoch_done(self, history):
        super().epoch_done(history)
        self.epoch_seconds.append(time.perf_counter() - self._started)
