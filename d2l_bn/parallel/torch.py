"""PyTorch across two CPU workers: ``torch.distributed`` (gloo) and ``DistributedDataParallel``.

Every experiment starts its own worker processes, on 127.0.0.1, and stops them before it returns
(:func:`launch`). The workers import this module, so whatever they run lives here rather than in a
notebook, which a spawned process cannot see.

``nn.SyncBatchNorm`` refuses CPU tensors, so this module brings a small synchronized layer of its
own, :class:`SyncBatchNorm`, built on the differentiable ``all_reduce`` of
``torch.distributed.nn``; on CUDA GPUs ``nn.SyncBatchNorm.convert_sync_batchnorm`` is the path.
"""

from .._require import require

require("torch")

import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from datetime import timedelta  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.nn.functional import all_reduce  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from . import HOST, ShardedBatches, free_port  # noqa: E402
from .. import torch as d2l  # noqa: E402

__all__ = ["SyncBatchNorm", "convert_sync_batch_norm", "launch", "data_parallel_step",
           "train_data_parallel"]


# --- The synchronized layer ----------------------------------------------------------------------

def check_sync_input(X: torch.Tensor) -> None:
    """Raise a ValueError unless ``X`` is 2-D (batch, channels) or 4-D (batch, channels,
    height, width), the input of :class:`SyncBatchNorm`."""
    if X.ndim not in (2, 4):
        raise ValueError(f"SyncBatchNorm expects (batch, channels) or (batch, channels, "
                         f"height, width) input, got shape {tuple(X.shape)}")


def checked_count(count: torch.Tensor) -> torch.Tensor:
    """``count``, the values per channel over all workers, if it is at least 2, as the
    statistics of a training-mode :class:`SyncBatchNorm` need; else a ValueError."""
    if count < 2:
        raise ValueError("SyncBatchNorm in training mode needs more than one value per "
                         "channel over all workers; use a larger batch, or call eval()")
    return count


def all_sum(t):
    """t summed over all workers, differentiably; t itself outside a process group."""
    return all_reduce(t) if dist.is_initialized() else t


class SyncBatchNorm(nn.Module):
    """nn.BatchNorm1d/2d whose training statistics are those of the global batch."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, X):
        check_sync_input(X)
        shape = (1, -1) + (1,) * (X.ndim - 2)
        if not self.training:
            mean, var = self.running_mean, self.running_var
        else:
            dims = [0] + list(range(2, X.ndim))
            count = torch.tensor([float(X.numel() // X.shape[1])])
            total = all_sum(torch.cat([X.sum(dims), count]))  # one all-reduce for both
            mean, count = total[:-1] / total[-1], checked_count(total[-1])
            # a second all-reduce, of the squared deviations from the global mean:
            # E[x²] − E[x]² loses precision in float32 when a mean is far from 0
            var = all_sum(((X - mean.reshape(shape)) ** 2).sum(dims)) / count
            # the running variance unbiased, as PyTorch's layers keep it
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_((var * count / (count - 1)).detach(), self.momentum)
        X_hat = (X - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return self.weight.reshape(shape) * X_hat + self.bias.reshape(shape)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def convert_sync_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm1d``/``2d`` replaced by a :class:`SyncBatchNorm`
    holding the same parameters and running statistics (as ``nn.SyncBatchNorm``'s
    ``convert_sync_batchnorm`` does for GPUs)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum)
        with torch.no_grad():
            sync.weight.copy_(module.weight)
            sync.bias.copy_(module.bias)
            sync.running_mean.copy_(module.running_mean)
            sync.running_var.copy_(module.running_var)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batch_norm(child))
    return module


# --- Starting and stopping the workers -----------------------------------------------------------

def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex()]
    return next((name for name in ("lo", "lo0") if name in names), names[0])


def _worker(rank: int, num_workers: int, port: int, task: Callable, args: tuple,
            results: mp.SimpleQueue) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = _loopback_interface()  # gloo would pick the hostname's
    torch.set_num_threads(1)  # one core per worker
    # torch 2.13 deprecates this all_reduce for a private module's; it is the public
    # differentiable one, and its warning would print in every worker.
    warnings.filterwarnings("ignore", message=".*nn.functional.all_reduce is deprecated")
    dist.init_process_group("gloo", init_method=f"tcp://{HOST}:{port}", rank=rank,
                            world_size=num_workers, timeout=timedelta(seconds=60))
    try:
        results.put((rank, task(rank, num_workers, *args)))
    finally:
        dist.destroy_process_group()


def launch(task: Callable, args: tuple = (), *, num_workers: int = 2, port: Optional[int] = None,
           timeout: float = 600) -> list:
    """Run ``task(rank, num_workers, *args)`` in ``num_workers`` new processes joined in a gloo
    process group on 127.0.0.1:``port`` (``None``: a free port); return their results by rank.

    ``task`` must be importable (defined in a module, not a notebook). Every worker has exited
    when this returns or raises: if one fails, the others are stopped and its error is raised
    here; after ``timeout`` seconds all are stopped and TimeoutError is raised."""
    port = free_port(port)
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    workers = mp.start_processes(_worker, args=(num_workers, port, task, args, results),
                                 nprocs=num_workers, join=False, start_method="spawn")
    deadline, by_rank = time.monotonic() + timeout, {}

    def drain() -> None:  # while the workers run too, so that none blocks on a full pipe
        while not results.empty():
            rank, result = results.get()
            by_rank[rank] = result

    try:
        while not workers.join(timeout=0.05):
            drain()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {num_workers} workers did not finish in {timeout} s")
    finally:
        for process in workers.processes:
            if process.is_alive():
                process.terminate()
            process.join()
    drain()
    return [by_rank[rank] for rank in range(num_workers)]


# --- What the workers do -------------------------------------------------------------------------

def _model(synchronized: bool, seed: int, lr: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)  # every worker starts from the same weights
    model = d2l.BNLeNet(lr)
    model.apply_init([torch.zeros(2, 1, 28, 28)], d2l.init_cnn)
    return convert_sync_batch_norm(model) if synchronized else model


def _my_slice(rank: int, num_workers: int, *arrays: np.ndarray) -> list[torch.Tensor]:
    per_worker = len(arrays[0]) // num_workers
    return [torch.from_numpy(np.ascontiguousarray(a[rank * per_worker:(rank + 1) * per_worker]))
            for a in arrays]


def _step_task(rank: int, num_workers: int, X: np.ndarray, y: np.ndarray, synchronized: bool,
               seed: int) -> dict:
    model = _model(synchronized, seed)
    ddp = DistributedDataParallel(model)
    X_mine, y_mine = _my_slice(rank, num_workers, X, y)
    first_bn = model.net[1]
    seen = {}
    first_bn.register_forward_hook(lambda m, inputs, out: seen.update(X=inputs[0].detach()))
    Y_hat = ddp(X_mine)
    model.loss(Y_hat, y_mine).backward()  # DDP averages the gradients over the workers
    conv_input = seen["X"]
    return {"outputs": Y_hat.detach().numpy(),
            "batch_mean": conv_input.mean(dim=(0, 2, 3)).numpy(),
            "batch_var": conv_input.var(dim=(0, 2, 3), unbiased=False).numpy(),
            "grad": model.net[0].weight.grad.numpy().copy(),
            "running_mean": first_bn.running_mean.numpy().copy()}


def data_parallel_step(X: np.ndarray, y: np.ndarray, *, synchronized: bool, num_devices: int = 2,
                       seed: int = 0, port: Optional[int] = None) -> dict:
    """One training-mode forward and backward pass of a fresh ``BNLeNet`` (seed ``seed``) on the
    global batch ``X, y`` (NCHW) split over ``num_devices`` workers, device ``k`` taking the
    ``k``-th equal slice.

    Returns numpy arrays: ``outputs``, the logits in the batch's order; ``grad``, the first
    convolution's weight gradient after DDP averaged it; and per device (first axis),
    ``batch_mean`` and ``batch_var``, the statistics of the first BN layer's input on its slice,
    and ``running_mean``, that layer's running mean after the step."""
    if len(X) % num_devices:
        raise ValueError(f"a batch of {len(X)} does not split evenly over {num_devices} devices")
    results = launch(_step_task, (X, y, synchronized, seed), num_workers=num_devices, port=port)
    return {"outputs": np.concatenate([r["outputs"] for r in results]),
            "grad": results[0]["grad"],
            **{key: np.stack([r[key] for r in results])
               for key in ("batch_mean", "batch_var", "running_mean")}}


def _train_task(rank: int, num_workers: int, per_device: int, num_steps: int, skewed: bool,
                synchronized: bool, seed: int, lr: float) -> Optional[dict]:
    data = d2l.FashionMNIST(batch_size=256)
    model = _model(synchronized, seed, lr)
    ddp = DistributedDataParallel(model)  # broadcasts rank 0's buffers before every forward
    optimizer = torch.optim.SGD(ddp.parameters(), lr=lr)
    batches = ShardedBatches(*data.train, per_device=per_device, num_devices=num_workers,
                             num_steps=num_steps, skewed=skewed, layout="NCHW", seed=seed)
    model.train()
    total = torch.zeros(())
    for X, y in batches:
        X_mine, y_mine = _my_slice(rank, num_workers, X, y)
        loss = model.loss(ddp(X_mine), y_mine)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    dist.all_reduce(total)  # the mean over all devices, not only this one's classes
    if rank != 0:
        return None
    # Evaluated on one device with the running statistics it holds, as a saved model would be.
    val_loss, val_acc = d2l.evaluate(model, data.val_dataloader(), torch.device("cpu"))
    return {"train_loss": total.item() / (num_steps * num_workers), "val_loss": val_loss, "val_acc": val_acc}


def train_data_parallel(*, per_device: int, num_steps: int, skewed: bool, synchronized: bool,
                        num_devices: int = 2, seed: int = 0, lr: float = 0.1,
                        port: Optional[int] = None) -> dict:
    """Train a fresh ``BNLeNet`` for ``num_steps`` SGD steps on Fashion-MNIST, each device taking
    ``per_device`` examples per step from its own shard (class-skewed or a random split), with
    per-device (``synchronized=False``) or global batch statistics. Returns the mean training
    loss, and the validation loss and accuracy of device 0's model in eval mode."""
    return launch(_train_task, (per_device, num_steps, skewed, synchronized, seed, lr),
                  num_workers=num_devices, port=port)[0]
