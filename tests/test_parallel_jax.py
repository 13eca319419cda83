"""d2l_bn.parallel.jax: two CPU devices in one mesh with shard_map, per-device BatchNorm against
Flax's synchronized one (axis_name), on a class-skewed batch; the devices' configuration.

JAX fixes its number of CPU devices when its backend starts, and pytest's process may have
started it already (another test module), so every experiment runs in a fresh Python process."""

import numpy as np
import pytest

from parallel_checks import (check_per_device_differs_on_skewed_shards,
                             check_synchronized_equals_one_device, run_fresh,
                             steps_in_a_fresh_process)
from d2l_bn.parallel import jax as dp


@pytest.fixture(scope="module")
def steps(fashion_mnist_root, tmp_path_factory) -> dict:
    return steps_in_a_fresh_process("jax", "dp.cpu_devices(2)", "NHWC", fashion_mnist_root,
                                    tmp_path_factory.mktemp("parallel_jax"))


def test_synchronized_step_equals_one_device_on_the_full_batch(steps):
    check_synchronized_equals_one_device(steps["synced"], steps["one"])


def test_per_device_step_differs_from_one_device_on_skewed_shards(steps):
    check_per_device_differs_on_skewed_shards(steps["per_device"], steps["one"])


def test_training_runs_to_its_end_without_aborting(fashion_mnist_root):
    # Dispatching step after step without waiting aborted the process in XLA's all-reduce
    # ("Termination timeout for `all reduce` ... of 40 seconds exceeded") in about two of three
    # such runs on a 2-core machine, and killed the notebook's kernel.
    process = run_fresh(f"""
        import math, os
        os.environ["D2L_BN_DATA"] = {str(fashion_mnist_root)!r}
        from d2l_bn.parallel import jax as dp
        dp.cpu_devices(2)
        for synchronized in (False, True):
            run = dp.train_data_parallel(per_device=8, num_steps=500, skewed=False,
                                         synchronized=synchronized)
            assert math.isfinite(run["train_loss"]) and 0 <= run["val_acc"] <= 1, run
        print("trained")
    """, timeout=300)
    assert "trained" in process.stdout


def test_asking_for_devices_after_the_backend_started_is_a_clear_error():
    process = run_fresh("""
        import jax
        jax.config.update("jax_num_cpu_devices", 1)
        jax.numpy.ones(1).block_until_ready()  # the backend starts, with one CPU device
        from d2l_bn.parallel import jax as dp
        try:
            dp.cpu_devices(2)
        except RuntimeError as error:
            print(error)
        else:
            raise SystemExit("cpu_devices(2) did not raise")
    """)
    assert "started its CPU backend with 1 device(s)" in process.stdout
    assert "Restart the kernel" in process.stdout
    assert "call cpu_devices(2) right after the imports" in process.stdout


def test_a_batch_that_does_not_split_evenly_is_refused():
    X, y = np.zeros((5, 28, 28, 1), np.float32), np.zeros(5, np.int64)
    with pytest.raises(ValueError, match="does not split evenly"):
        dp.data_parallel_step(X, y, synchronized=True)
