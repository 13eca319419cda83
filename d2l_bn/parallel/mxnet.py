"""MXNet across two CPU contexts: Gluon's own data parallelism, in one process.

Gluon splits a batch over a list of contexts (``mx.cpu(0)``, ``mx.cpu(1)``, or GPUs), keeps a copy
of every parameter on each, and ``gluon.Trainer`` adds the gradients up over the copies through its
key-value store before every update. ``nn.BatchNorm`` normalizes each context's slice with that
slice's statistics; ``gluon.contrib.nn.SyncBatchNorm`` synchronizes them, and its operator has a
CPU implementation, so it runs here too.

Two things to know about it. It is a legacy operator, which refuses the ``mxnet.np`` arrays that
d2l_bn uses, so :class:`SyncBatchNorm` hands it legacy views of them. And it waits inside the
operator for every context to arrive ("a blocking way", as its authors put it), so each context's
forward and backward must run in its own Python thread, as GluonCV's ``DataParallelModel`` does:
called one after the other from one thread, the first backward waits forever for the second.
The networks are not hybridized here (a cached graph is not for concurrent calls).
"""

from .._require import require

require("mxnet")

import threading  # noqa: E402
from typing import Callable  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as onp  # noqa: E402  (the real NumPy; `np` below is MXNet's)
from mxnet import autograd, gluon, np, npx  # noqa: E402
from mxnet.gluon import nn  # noqa: E402
from mxnet.gluon.contrib import nn as contrib_nn  # noqa: E402

from . import ShardedBatches  # noqa: E402
from .. import mxnet as d2l  # noqa: E402

__all__ = ["SyncBatchNorm", "synchronize_batch_norm", "cpu_contexts", "data_parallel_step",
           "train_data_parallel"]


# --- The synchronized layer ----------------------------------------------------------------------

class SyncBatchNorm(contrib_nn.SyncBatchNorm):
    """Gluon's SyncBatchNorm for mxnet.np arrays."""

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        # Its operator accepts only legacy NDArrays, so the arrays go in and come out as
        # views (no copy; gradients flow)
        arrays = (x, gamma, beta, running_mean, running_var)
        legacy = [a.as_nd_ndarray() for a in arrays]
        return super().hybrid_forward(F, *legacy).as_np_ndarray()


def synchronize_batch_norm(model: d2l.Classifier, num_devices: int) -> d2l.Classifier:
    """``model`` with every ``nn.BatchNorm`` of ``model.net`` replaced by a :class:`SyncBatchNorm`
    over ``num_devices`` contexts, with the same settings, parameters and running statistics."""
    net = nn.HybridSequential()  # Gluon keeps an attribute's type; it is not hybridized here
    for layer in model.net:
        if isinstance(layer, nn.BatchNorm):
            channels = layer.gamma.shape[0]
            sync = SyncBatchNorm(in_channels=channels, num_devices=num_devices,
                                 momentum=layer._kwargs["momentum"],
                                 epsilon=layer._kwargs["eps"])
            sync.initialize(ctx=layer.gamma.list_ctx())
            for name in ("gamma", "beta", "running_mean", "running_var"):
                getattr(sync, name).set_data(getattr(layer, name).data())
            layer = sync
        net.add(layer)
    model.net = net
    return model


def cpu_contexts(num_devices: int = 2) -> list:
    """``num_devices`` CPU contexts. They share the memory and cores, but MXNet's engine gives
    each its own worker threads and each parameter a copy per context, as for GPUs."""
    return [mx.cpu(i) for i in range(num_devices)]


# --- Running the contexts side by side -----------------------------------------------------------

def _on_every_context(work: Callable[[int], object], num_devices: int) -> list:
    """``work(k)`` for every context ``k``, each in its own thread; the results by context.
    An error in any thread is raised here, after all have finished."""
    results, errors = [None] * num_devices, []

    def run(k: int) -> None:
        npx.set_np()  # MXNet's numpy mode is set per thread, and a new thread starts without it
        try:
            results[k] = work(k)
        except Exception as error:  # noqa: BLE001 (re-raised below, in the caller's thread)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(num_devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _model(synchronized: bool, num_devices: int, seed: int, lr: float = 0.1) -> d2l.Classifier:
    mx.random.seed(seed)  # every context starts from the same weights
    model = d2l.BNLeNet(lr)
    model.apply_init([np.zeros((2, 1, 28, 28))], d2l.init_cnn)
    model.net.hybridize(active=False)
    model.collect_params().reset_ctx(cpu_contexts(num_devices))
    return synchronize_batch_norm(model, num_devices) if synchronized else model


def _slices(num_devices: int, *arrays: onp.ndarray) -> list[list]:
    per_device = len(arrays[0]) // num_devices
    return [[np.array(a[k * per_device:(k + 1) * per_device], ctx=mx.cpu(k)) for a in arrays]
            for k in range(num_devices)]


def data_parallel_step(X: onp.ndarray, y: onp.ndarray, *, synchronized: bool,
                       num_devices: int = 2, seed: int = 0) -> dict:
    """One training-mode forward and backward pass of a fresh ``BNLeNet`` (seed ``seed``) on the
    global batch ``X, y`` (NCHW) split over ``num_devices`` CPU contexts, context ``k`` taking the
    ``k``-th equal slice.

    Returns numpy arrays: ``outputs``, the logits in the batch's order; ``grad``, the first
    convolution's weight gradient averaged over the contexts (what the trainer applies); and per
    context (first axis), ``batch_mean`` and ``batch_var``, the statistics of the first BN
    layer's input on its slice, and ``running_mean``, that layer's running mean after the step
    (Gluon updates it in the backward pass)."""
    if len(X) % num_devices:
        raise ValueError(f"a batch of {len(X)} does not split evenly over {num_devices} devices")
    model = _model(synchronized, num_devices, seed)
    slices = _slices(num_devices, X, y)

    def step(k: int) -> onp.ndarray:
        X_k, y_k = slices[k]
        with autograd.record():
            Y_hat = model(X_k)
            loss = model.loss(Y_hat, y_k)
        loss.backward()
        return Y_hat.asnumpy()

    outputs = _on_every_context(step, num_devices)
    contexts, conv, first_bn = cpu_contexts(num_devices), model.net[0], model.net[1]
    conv_inputs = [conv(X_k).asnumpy() for X_k, _ in slices]  # the first BN layer's input
    return {"outputs": onp.concatenate(outputs),
            "grad": sum(conv.weight.grad(ctx).asnumpy() for ctx in contexts) / num_devices,
            "batch_mean": onp.stack([c.mean(axis=(0, 2, 3)) for c in conv_inputs]),
            "batch_var": onp.stack([c.var(axis=(0, 2, 3)) for c in conv_inputs]),
            "running_mean": onp.stack([first_bn.running_mean.data(ctx).asnumpy()
                                       for ctx in contexts])}


def train_data_parallel(*, per_device: int, num_steps: int, skewed: bool, synchronized: bool,
                        num_devices: int = 2, seed: int = 0, lr: float = 0.1) -> dict:
    """Train a fresh ``BNLeNet`` for ``num_steps`` SGD steps on Fashion-MNIST, each context taking
    ``per_device`` examples per step from its own shard (class-skewed or a random split), with
    per-context (``synchronized=False``) or global batch statistics. Returns the mean training
    loss, and the validation loss and accuracy with context 0's parameters and running
    statistics, in prediction mode."""
    data = d2l.FashionMNIST(batch_size=256)
    model = _model(synchronized, num_devices, seed, lr)
    # The key-value store adds the contexts' gradients up; step(num_devices) makes it the mean.
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
    batches = ShardedBatches(*data.train, per_device=per_device, num_devices=num_devices,
                             num_steps=num_steps, skewed=skewed, layout="NCHW", seed=seed)

    def step(k: int, X_k: np.ndarray, y_k: np.ndarray) -> np.ndarray:
        with autograd.record():
            loss = model.loss(model(X_k), y_k)
        loss.backward()
        return loss

    total = np.zeros(())
    for X, y in batches:
        slices = _slices(num_devices, X, y)
        losses = _on_every_context(lambda k: step(k, *slices[k]), num_devices)
        trainer.step(num_devices)
        total += sum(loss.as_in_ctx(mx.cpu(0)) for loss in losses)
        # MXNet's engine is asynchronous: without a wait, this loop queues all steps ahead of the
        # computation, and every queued step holds its batches and buffers (gigabytes when the
        # computation is slow, e.g. with one thread).
        total.wait_to_read()
    val_loss, val_acc = d2l.evaluate(model, data.val_dataloader(), mx.cpu(0))
    return {"train_loss": total.item() / (num_steps * num_devices), "val_loss": val_loss,
            "val_acc": val_acc}
