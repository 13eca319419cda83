"""d2l_bn.parallel.torch: two gloo workers with DistributedDataParallel, per-device BatchNorm
against our SyncBatchNorm, on a class-skewed batch; the workers' start and stop."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from parallel_checks import (check_per_device_differs_on_skewed_shards,
                             check_synchronized_equals_one_device)
from d2l_bn import parallel
from d2l_bn.data import load_fashion_mnist
from d2l_bn.parallel import torch as dp


@pytest.fixture(scope="module")
def batch(fashion_mnist_root):
    arrays = load_fashion_mnist(fashion_mnist_root)
    return parallel.skewed_batch(arrays["train_images"], arrays["train_labels"], per_device=16,
                                 num_devices=2, layout="NCHW")


@pytest.fixture(scope="module")
def one_device(batch):
    return dp.data_parallel_step(*batch, synchronized=False, num_devices=1)


def test_synchronized_step_equals_one_device_on_the_full_batch(batch, one_device):
    synced = dp.data_parallel_step(*batch, synchronized=True)
    check_synchronized_equals_one_device(synced, one_device)
    assert not mp.active_children()


def test_per_device_step_differs_from_one_device_on_skewed_shards(batch, one_device):
    per_device = dp.data_parallel_step(*batch, synchronized=False)
    check_per_device_differs_on_skewed_shards(per_device, one_device)


def test_sync_batch_norm_without_a_process_group_is_pytorch_batch_norm():
    torch.manual_seed(0)
    X = torch.randn(8, 3, 5, 5) * 2 + 3
    ours, theirs = dp.SyncBatchNorm(3), nn.BatchNorm2d(3)
    torch.testing.assert_close(ours(X), theirs(X))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)  # both unbiased
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(X), theirs(X))


def test_sync_batch_norm_rejects_bad_input():
    with pytest.raises(ValueError, match="batch, channels"):
        dp.SyncBatchNorm(3)(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        dp.SyncBatchNorm(3)(torch.zeros(1, 3))


def test_convert_keeps_parameters_and_statistics():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[1].running_mean.fill_(0.5)
    converted = dp.convert_sync_batch_norm(model)
    assert isinstance(converted[1], dp.SyncBatchNorm)
    assert converted[1].weight.tolist() == [2.0] * 3
    assert converted[1].running_mean.tolist() == [0.5] * 3


def test_a_taken_port_is_refused_with_a_clear_error(batch):
    with socket.socket() as holder:
        holder.bind((parallel.HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(parallel.PortInUseError, match=f"port {port} .* already in use"):
            dp.data_parallel_step(*batch, synchronized=True, port=port)
    assert not mp.active_children()


def test_a_failing_worker_stops_all_and_raises(batch):
    X, y = batch
    # One example per device: the built-in BatchNorm1d refuses to train on it.
    with pytest.raises(Exception, match="Expected more than 1 value per channel"):
        dp.data_parallel_step(X[15:17], y[15:17], synchronized=False)
    assert not mp.active_children()
    # With synchronized statistics the two examples together are enough.
    dp.data_parallel_step(X[15:17], y[15:17], synchronized=True)


def test_a_batch_that_does_not_split_evenly_is_refused(batch):
    with pytest.raises(ValueError, match="does not split evenly"):
        dp.data_parallel_step(batch[0][:5], batch[1][:5], synchronized=True)
