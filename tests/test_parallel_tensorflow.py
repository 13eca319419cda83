"""d2l_bn.parallel.tensorflow: MirroredStrategy over two logical CPUs, per-device BatchNorm against
Keras' synchronized one, on a class-skewed batch; the devices' setup.

Logical devices must be set before TensorFlow starts, and in pytest's process it may have started
already, so every experiment runs in a fresh Python process of its own."""

import numpy as np
import pytest

from parallel_checks import (check_per_device_differs_on_skewed_shards,
                             check_synchronized_equals_one_device, run_fresh,
                             steps_in_a_fresh_process)
from d2l_bn.parallel import tensorflow as dp


@pytest.fixture(scope="module")
def steps(fashion_mnist_root, tmp_path_factory) -> dict:
    return steps_in_a_fresh_process("tensorflow", "dp.cpu_strategy(2)", "NHWC",
                                    fashion_mnist_root,
                                    tmp_path_factory.mktemp("parallel_tensorflow"))


def test_synchronized_step_equals_one_device_on_the_full_batch(steps):
    check_synchronized_equals_one_device(steps["synced"], steps["one"])


def test_per_device_step_differs_from_one_device_on_skewed_shards(steps):
    check_per_device_differs_on_skewed_shards(steps["per_device"], steps["one"])


def test_per_device_moving_statistics_are_each_devices_own(steps):
    # Aggregation NONE: each device's copy takes its own update (momentum 0.9, from zero), and the
    # copies part; with synchronized statistics they stay equal.
    per_device, synced = steps["per_device"], steps["synced"]
    np.testing.assert_allclose(per_device["running_mean"], 0.1 * per_device["batch_mean"],
                               rtol=1e-5, atol=1e-7)
    assert np.abs(per_device["running_mean"][0] - per_device["running_mean"][1]).max() > 1e-3
    np.testing.assert_array_equal(synced["running_mean"][0], synced["running_mean"][1])


def test_more_devices_than_tensorflow_started_with_is_a_clear_error():
    child = run_fresh("""
        import tensorflow as tf
        from d2l_bn.parallel import tensorflow as dp

        tf.constant(1.0) + 1  # TensorFlow starts, with one logical CPU
        try:
            dp.cpu_strategy(2)
        except RuntimeError as error:
            print(error)
        else:
            raise SystemExit("cpu_strategy(2) did not raise")
    """)
    message = child.stdout
    assert "already started with 1 logical CPU" in message, message
    assert "restart the kernel" in message and "cpu_strategy(2) first" in message, message


def test_a_batch_that_does_not_split_evenly_is_refused():
    X, y = np.zeros((5, 28, 28, 1), np.float32), np.zeros(5, np.int64)
    with pytest.raises(ValueError, match="does not split evenly"):
        dp.data_parallel_step(X, y, synchronized=True)
