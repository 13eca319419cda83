"""What one host wait per layer costs MXNet: training steps of the scratch LeNet and of the
exercises' MLP with batch norm, with ``d2l.BatchNorm`` as it is (the training graph's momentum
made by ``np.full``, an operation MXNet queues) against the same layer with the momentum copied
from Python by ``np.array``, which first waits for MXNet's engine (the code before stop 40).

Both variants run in one process, taking turns, two rounds; the figure is steps per second over
staged batches, the best of three timed passes after a warm-up pass. Run with one thread, as in
CI's nbval lanes:

    OMP_NUM_THREADS=1 .venv/mxnet/bin/python benchmarks/mxnet_host_wait.py
"""

import mxnet as mx
from mxnet import autograd

from d2l_bn import mxnet as d2l
from timing import median_seconds

NUM_STEPS = 60
CASES = (("BNLeNetScratch", 128), ("BNLeNetScratch", 16), ("MLP", 128), ("MLP", 16))


class WaitingFull:
    """``mxnet.np`` for d2l_bn.mxnet, except that ``full`` of a scalar is ``np.array``."""

    def __getattr__(self, name):
        return getattr(mx.np, name)

    @staticmethod
    def full(shape, fill_value, ctx=None):
        assert shape == (), "only the momentum's scalar is made with np.full"
        return mx.np.array(fill_value, ctx=ctx)


def steps_per_second(name: str, batch_size: int) -> float:
    data = d2l.FashionMNIST(batch_size=batch_size)
    batches = [batch for _, batch in zip(range(NUM_STEPS), data.train_dataloader())]
    mx.random.seed(0)
    model = d2l.MLP(norm="batch") if name == "MLP" else getattr(d2l, name)()
    optimizer = model.configure_optimizers()

    def one_pass():
        for X, y in batches:
            with autograd.record():
                loss = model.loss(model(X), y)
            loss.backward()
            optimizer.step(1)
        mx.nd.waitall()

    return NUM_STEPS / min(median_seconds(one_pass, warmup=1, repeats=3))


def main() -> None:
    queued_np = d2l.np
    print("steps/s: momentum by np.full (queued) | by np.array (waits for the queue)")
    for round_ in (1, 2):
        for name, batch_size in CASES:
            queued = steps_per_second(name, batch_size)
            d2l.np = WaitingFull()
            try:
                waiting = steps_per_second(name, batch_size)
            finally:
                d2l.np = queued_np
            print(f"round {round_}: {name:<15} batch {batch_size:3d}: {queued:6.1f} | "
                  f"{waiting:6.1f}  ({queued / waiting:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
