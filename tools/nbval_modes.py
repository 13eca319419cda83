"""The book's notebook check: nbval, with the two kinds of output and a kernel that may die.

Loaded as a pytest plugin next to nbval (``make nbval`` runs
``PYTHONPATH=tools pytest -p nbval_modes --nbval ...``):

- **Measured outputs are not compared.** A code cell tagged ``measured`` prints what the
  floating-point path changes (anything after training, round-off-level errors); its claim is
  the ``assert`` in it or in the next cell (`tests/test_notebooks.py` enforces that), so nbval
  runs it, fails on any error, and leaves its text alone. Every other output is *exact* and
  compared as nbval does.
- **``--nbval-portable``** also leaves out what the cells write to stderr: on a GPU host or with
  other framework versions, the frameworks log there (CUDA, XLA and deprecation messages) while
  every exact stdout and result stays the same. It does not ask for the locked versions either:
  it is the check for another machine, another kernel (``NBVAL_KERNEL``) or a GPU.
- **A kernel that dies fails its cell at once**, saying so, instead of leaving nbval waiting
  for a reply until ``--nbval-cell-timeout`` (2000 s by default) runs out.
- **A cell that runs past the timeout fails**, whatever it does when nbval interrupts it. nbval
  counts it as failed only if the interrupt ends it with an error; a cell that the interrupt
  does not stop (MXNet's engine finishes its work first) would pass, and the cells after it be
  marked "expected to fail", so the notebook would pass with a cell that took too long.
"""

from __future__ import annotations

import time
from queue import Empty

from nbval.kernel import RunningKernel
from nbval.plugin import IPyNbCell

MEASURED = "measured"
# How often a cell that is still running checks that its kernel is alive.
POLL_SECONDS = 5.0


class KernelDied(RuntimeError):
    pass


class CellTimedOut(RuntimeError):
    pass


def pytest_addoption(parser):
    parser.getgroup("nbval").addoption(
        "--nbval-portable", action="store_true",
        help="compare exact outputs but not stderr (another machine, GPU or framework versions)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not isinstance(item, IPyNbCell):
            continue
        if MEASURED in item.cell.metadata.get("tags", []):
            item.options["check"] = False
        if config.option.nbval_portable and "stderr" not in item.parent.skip_compare:
            item.parent.skip_compare += ("stderr",)


_await_reply = RunningKernel.await_reply


def await_reply(self, msg_id, timeout=None):
    """nbval's wait for a cell's reply, in slices, checking between them that the kernel lives."""
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while True:
        wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
        if wait <= 0:
            raise Empty  # nbval reports its cell timeout
        try:
            return _await_reply(self, msg_id, timeout=wait)
        except Empty:
            if not self.is_alive():
                raise KernelDied(
                    "the kernel died while running this cell (a crash, or killed: out of memory?); "
                    "the cells after it cannot run. Run this notebook alone to see the kernel's "
                    "last words: make nbval NOTEBOOKS=<path>") from None


RunningKernel.await_reply = await_reply


_runtest = IPyNbCell.runtest


def runtest(self):
    """nbval's run of a cell, failing it if it ran past the cell timeout."""
    timed_out_before = self.parent.timed_out
    _runtest(self)
    if self.parent.timed_out and not timed_out_before:
        raise CellTimedOut(
            f"this cell ran past the cell timeout of {self.config.option.nbval_cell_timeout:g} s "
            f"(NBVAL_CELL_TIMEOUT) and was interrupted: on a slower or busier machine, raise "
            f"NBVAL_CELL_TIMEOUT; otherwise find what made it slow")


IPyNbCell.runtest = runtest
