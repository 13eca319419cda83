"""d2l_bn.parallel.mxnet: two CPU contexts, per-context BatchNorm against Gluon's SyncBatchNorm
(one thread per context), on a class-skewed batch.

Run in a fresh process, as for the other frameworks: SyncBatchNorm's operator keeps process-wide
state keyed by layer name, and its waits must not meet another test's layers."""

import mxnet as mx
import numpy as np
import pytest

from parallel_checks import (check_per_device_differs_on_skewed_shards,
                             check_synchronized_equals_one_device, steps_in_a_fresh_process)
from d2l_bn.parallel import mxnet as dp


@pytest.fixture(scope="module")
def steps(fashion_mnist_root, tmp_path_factory) -> dict:
    return steps_in_a_fresh_process("mxnet", "dp.cpu_contexts(2)", "NCHW", fashion_mnist_root,
                                    tmp_path_factory.mktemp("parallel_mxnet"))


def test_synchronized_step_equals_one_device_on_the_full_batch(steps):
    check_synchronized_equals_one_device(steps["synced"], steps["one"])


def test_per_device_step_differs_from_one_device_on_skewed_shards(steps):
    check_per_device_differs_on_skewed_shards(steps["per_device"], steps["one"])


def test_per_context_running_statistics_are_each_contexts_own(steps):
    per_device, synced = steps["per_device"], steps["synced"]
    np.testing.assert_allclose(per_device["running_mean"], 0.1 * per_device["batch_mean"],
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(synced["running_mean"][0], synced["running_mean"][1])


def test_synchronize_keeps_settings_and_parameters():
    model = dp._model(synchronized=False, num_devices=1, seed=0)
    model.net[1].gamma.set_data(mx.np.full((6,), 2.0))
    synced = dp.synchronize_batch_norm(model, num_devices=1)
    assert isinstance(synced.net[1], dp.SyncBatchNorm)
    assert synced.net[1].gamma.data().tolist() == [2.0] * 6
    assert synced.net[1]._kwargs["momentum"] == 0.9 and synced.net[1]._kwargs["eps"] == 1e-5


def test_an_error_in_a_contexts_thread_is_raised_in_the_caller():
    X, y = np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int64)
    with pytest.raises(mx.MXNetError):
        dp.data_parallel_step(X[:, :, :5], y, synchronized=False)  # 5x28 images: too small


def test_a_batch_that_does_not_split_evenly_is_refused():
    X, y = np.zeros((5, 1, 28, 28), np.float32), np.zeros(5, np.int64)
    with pytest.raises(ValueError, match="does not split evenly"):
        dp.data_parallel_step(X, y, synchronized=True)
