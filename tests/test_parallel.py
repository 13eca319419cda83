"""d2l_bn.parallel, framework-free: the shards, the global batches built from them, the port check
and the table."""

import socket

import numpy as np
import pytest

from d2l_bn import parallel

LABELS = np.repeat(np.arange(10), 7)  # 70 examples, 7 per class
IMAGES = np.broadcast_to(np.arange(70, dtype=np.uint8)[:, None, None], (70, 28, 28))  # image i is i


def test_skewed_shards_split_the_classes():
    left, right = parallel.shards(LABELS, 2, skewed=True)
    assert set(LABELS[left]) == {0, 1, 2, 3, 4} and set(LABELS[right]) == {5, 6, 7, 8, 9}


def test_random_shards_cover_everything_once():
    split = parallel.shards(LABELS, 2, skewed=False)
    assert sorted(np.concatenate(split)) == list(range(70))
    assert [len(s) for s in split] == [35, 35]


def test_sharded_batches_are_repeatable_and_keep_each_slice_in_its_shard():
    kwargs = dict(per_device=3, num_devices=2, num_steps=30, skewed=True, layout="NHWC", seed=1)
    first = list(parallel.ShardedBatches(IMAGES, LABELS, **kwargs))
    again = list(parallel.ShardedBatches(IMAGES, LABELS, **kwargs))
    assert len(first) == 30
    for (X, y), (X2, y2) in zip(first, again):
        assert X.shape == (6, 28, 28, 1) and X.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(X, X2)
        assert set(y[:3]) <= {0, 1, 2, 3, 4} and set(y[3:]) <= {5, 6, 7, 8, 9}


def test_sharded_batches_visit_a_whole_shard_before_repeating():
    batches = parallel.ShardedBatches(IMAGES, np.zeros(70, int), per_device=5, num_devices=1,
                                      num_steps=14, skewed=False, layout="NCHW")
    seen = np.concatenate([np.rint(X[:, 0, 0, 0] * 255) for X, _ in batches])
    assert sorted(seen) == list(range(70))  # 14 steps of 5: each of the 70 examples once


def test_skewed_batch_takes_each_devices_slice_from_its_shard():
    X, y = parallel.skewed_batch(IMAGES, LABELS, per_device=4, num_devices=2, layout="NCHW")
    assert X.shape == (8, 1, 28, 28)
    assert set(y[:4]) <= {0, 1, 2, 3, 4} and set(y[4:]) <= {5, 6, 7, 8, 9}


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_devices"):
        parallel.class_groups(11)
    with pytest.raises(ValueError, match="positive"):
        parallel.ShardedBatches(IMAGES, LABELS, per_device=0, num_devices=2, num_steps=1,
                                skewed=True, layout="NCHW")


def test_free_port_refuses_a_taken_port_and_finds_a_free_one():
    with socket.socket() as holder:
        holder.bind((parallel.HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(parallel.PortInUseError, match=f"port {port} on 127.0.0.1"):
            parallel.free_port(port)
        assert parallel.free_port() != port


def test_table_prints_as_text_and_renders_as_markdown():
    table = parallel.Table(["device", "mean"], [["0", 0.12345], ["1", 2.5e-7]])
    assert repr(table).splitlines() == ["device     mean", "------  -------",
                                        "     0    0.123", "     1  2.5e-07"]
    assert table._repr_markdown_().splitlines()[1] == "| --- | --- |"
