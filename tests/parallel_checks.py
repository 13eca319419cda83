"""What every framework's data-parallel step must show (tests/test_parallel_<framework>.py), and a
runner that takes the steps in a fresh process.

Each takes the result dicts of ``d2l_bn.parallel.<framework>.data_parallel_step``: ``one``, the
whole batch on one device; ``synced`` and ``per_device``, the batch split over two devices with
and without synchronized statistics. The batch is class-skewed (``skewed_batch``)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

# float32 sums of a few thousand terms taken in another order: a few 1e-7 relative, with room.
RTOL, ATOL = 1e-4, 1e-5
# A float32 gradient through four BN layers is itself only good to a few 1e-5 of its largest
# entry: measured against float64, 2.5e-5 in TensorFlow on one device (8.5e-6 synchronized), about
# 2e-5 in JAX, where Flax's one-pass variance E[x²]−E[x]² loses precision on fc1's outputs.
GRAD_ATOL = 1e-4


def _scale(a: np.ndarray) -> float:
    return float(np.abs(a).max())


def check_synchronized_equals_one_device(synced: dict, one: dict) -> None:
    np.testing.assert_allclose(synced["outputs"], one["outputs"], rtol=RTOL,
                               atol=ATOL * _scale(one["outputs"]))
    np.testing.assert_allclose(synced["grad"], one["grad"], rtol=RTOL,
                               atol=GRAD_ATOL * _scale(one["grad"]))
    # Every device keeps the running mean that one device computes on the whole batch.
    for running_mean in synced["running_mean"]:
        np.testing.assert_allclose(running_mean, one["running_mean"][0], rtol=RTOL,
                                   atol=ATOL * _scale(one["running_mean"]))


def check_per_device_differs_on_skewed_shards(per_device: dict, one: dict) -> None:
    # Each device's statistics are its own slice's, not the batch's ...
    full_mean, full_var = one["batch_mean"][0], one["batch_var"][0]
    for mean, var in zip(per_device["batch_mean"], per_device["batch_var"]):
        assert np.abs(mean - full_mean).max() > 1e-2, (mean, full_mean)
        assert np.abs(var - full_var).max() > 1e-3, (var, full_var)
    # ... the two halves average to the batch's mean (equal halves) ...
    np.testing.assert_allclose(per_device["batch_mean"].mean(axis=0), full_mean, rtol=1e-4,
                               atol=1e-6)
    # ... and so the outputs and the gradient are not those of the whole batch.
    assert np.abs(per_device["outputs"] - one["outputs"]).max() > 0.05 * _scale(one["outputs"])
    assert np.abs(per_device["grad"] - one["grad"]).max() > 0.05 * _scale(one["grad"])


# --- Running the steps in a fresh process --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
# TensorFlow's C++ log lines (but oneDNN's one on loading) stay out of the child's stderr, and its
# numerics are the kernel's.
CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}
KEYS = ("outputs", "grad", "batch_mean", "batch_var", "running_mean")

STEPS = """
import numpy as np
from d2l_bn.parallel import {framework} as dp
{setup}  # first, before anything starts the framework's runtime
from d2l_bn import parallel
from d2l_bn.data import load_fashion_mnist

arrays = load_fashion_mnist({root!r})
X, y = parallel.skewed_batch(arrays["train_images"], arrays["train_labels"], per_device=16,
                             num_devices=2, layout={layout!r})
results = {{"one": dp.data_parallel_step(X, y, synchronized=False, num_devices=1),
           "synced": dp.data_parallel_step(X, y, synchronized=True),
           "per_device": dp.data_parallel_step(X, y, synchronized=False)}}
np.savez({path!r}, **{{f"{{name}}/{{key}}": value for name, result in results.items()
                       for key, value in result.items()}})
"""


def run_fresh(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``script`` in a new Python process (this one's interpreter, in the repository's root);
    its stderr in the assertion message if it fails."""
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                           env=CHILD_ENV, capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0, f"the child Python exited with {child.returncode}:\n{child.stderr}"
    return child


def steps_in_a_fresh_process(framework: str, setup: str, layout: str, root: Path,
                             folder: Path) -> dict:
    """The three steps (``one``, ``synced``, ``per_device``) on the skewed batch of 2 x 16, run in
    a new process whose first statement is ``setup`` (the devices' configuration)."""
    path = folder / "steps.npz"
    run_fresh(STEPS.format(framework=framework, setup=setup, layout=layout, root=str(root),
                           path=str(path)))
    with np.load(path) as saved:
        return {name: {key: saved[f"{name}/{key}"] for key in KEYS}
                for name in ("one", "synced", "per_device")}
