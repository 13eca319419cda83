"""MXNet (Gluon) code for the Batch Normalization chapter: the layer from scratch, LeNet, training.

Import it as the book does, ``from d2l_bn import mxnet as d2l``; never run this file as a script
(a file named ``mxnet.py`` first on the path would hide the real ``mxnet``).

MXNet 1.9.1 is the last release of MXNet, which is retired; it needs numpy < 1.24 and hence
Python <= 3.11. The code uses MXNet's NumPy interface (``mxnet.np``, ``mxnet.npx``), as Dive into
Deep Learning does.
"""

from ._require import require

require("mxnet")

from functools import partial  # noqa: E402
from typing import Callable, Iterable, Optional  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as onp  # noqa: E402  (the real NumPy; `np` below is MXNet's)
from mxnet import autograd, gluon, init, np, npx  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from . import data as _data  # noqa: E402
from .plotting import plot_curves, plot_shared_statistics  # noqa: E402,F401 (the chapter)
from .training import History, Report, TrainingDiverged, run_epochs  # noqa: E402

# NumPy semantics for mxnet.np arrays and Gluon blocks. This switch is global state of the MXNet
# runtime, for the whole process: it is flipped once, here, when the module is imported.
npx.set_np()

__all__ = ["batch_statistics", "batch_norm", "BatchNorm", "layer_norm", "Classifier",
           "BNLeNetScratch", "BNLeNet",
           "init_cnn", "FashionMNIST", "Trainer", "History", "TrainingDiverged",
           "recompute_statistics", "recomputed_val_accuracy",
           # for the exercises
           "batch_norm_variant", "BatchNormVariant", "LayerNorm", "group_norm", "GroupNorm",
           "NormLeNet", "MLP"]


# --- Batch normalization from scratch ------------------------------------------------------------
# The chapter shows batch_norm, BatchNorm and layer_norm as plain teaching code; these are the
# same mathematics hardened, with checks of the input, half precision and a guard against
# non-finite batches in the helpers below. tests/page_equivalence.py holds the two equal.

def checked_input(X: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                  running_var: np.ndarray, training: bool) -> tuple[np.ndarray, onp.dtype]:
    """Check the arguments of :func:`batch_norm`; return X to compute with, and Y's dtype.

    Raises a TypeError or ValueError that says what to do for an input that is not an
    ``mxnet.np.ndarray``, not floating point, not 2-D (batch, features) or 4-D (batch, channels,
    height, width), whose axis 1 does not match gamma, or, in training, with fewer than 2 values
    per channel; and for beta or running statistics whose shape is not gamma's, (C,).
    Shapes only: looking at values would make the host wait for the device at every step.

    A float16 input is normalized in float32 and the output cast back to float16, as Gluon's
    layer does; gamma, beta and the running statistics stay float32. So X comes back in float32
    when it is float16, and the dtype to return Y in is the input's.
    """
    if not isinstance(X, np.ndarray):
        raise TypeError(f"batch_norm expects an mxnet.np.ndarray, got {type(X).__name__}; "
                        f"convert it with mxnet.np.array(X, dtype='float32')")
    if not onp.issubdtype(X.dtype, onp.floating):
        raise TypeError(f"batch_norm expects a floating-point array, got {onp.dtype(X.dtype)}; "
                        f"convert it with X.astype('float32')")
    if X.ndim not in (2, 4):
        raise ValueError(
            f"batch_norm expects a 2-D input (batch, features), as after a fully connected layer, "
            f"or a 4-D input (batch, channels, height, width), as after a convolution; got shape "
            f"{tuple(X.shape)}. Flatten the input first (e.g. nn.Flatten()) or add the missing "
            f"axes.")
    num_channels = gamma.shape[0] if gamma.ndim == 1 else None
    if num_channels != X.shape[1]:
        raise ValueError(
            f"the input has {X.shape[1]} features/channels on axis 1 but gamma has shape "
            f"{tuple(gamma.shape)}: gamma, beta and the running statistics must have shape "
            f"({X.shape[1]},); build the layer with num_features={X.shape[1]}.")
    if training and X.size // X.shape[1] < 2:
        raise ValueError(
            f"batch statistics are undefined with {X.size // X.shape[1]} value per channel "
            f"(input shape {tuple(X.shape)}, e.g. a batch of one after a fully connected layer): "
            f"train with batches of at least 2, or switch to prediction mode (call the model "
            f"outside autograd.record(), training=False) to normalize with the running "
            f"statistics.")
    for name, t in (("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if t.shape != gamma.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, gamma {tuple(gamma.shape)}: "
                             f"all four must have shape ({X.shape[1]},)")
    dtype = X.dtype
    if dtype == np.float16:
        X = X.astype("float32")  # statistics in float16 would lose the mean's digits
    return X, dtype


def finite_or_old(F, new: tuple, old: tuple) -> tuple:
    """``new`` if every value of the new statistics is finite, else ``old``; ``F`` is MXNet's
    operator module, ``mxnet.ndarray`` or, in a compiled graph, ``mxnet.symbol``.

    A batch with a NaN or an infinity gives a non-finite output, as it must, but leaves the
    running statistics as they were instead of poisoning every later prediction (the built-in
    layer lets it in); the Trainer reports the non-finite loss at the end of the epoch. Decided on
    the device, with ``np.where``, without making the host wait for it.
    """
    finite = F.np.all(F.np.isfinite(new[0]))
    for t in new[1:]:
        finite = finite * F.np.all(F.np.isfinite(t))
    return tuple(F.np.where(finite, n, o) for n, o in zip(new, old))


def checked_num_dims(num_dims: int) -> int:
    """``num_dims`` of a :class:`BatchNorm`, which must be 2 or 4."""
    if num_dims not in (2, 4):
        raise ValueError(f"num_dims must be 2 (after a fully connected layer) or 4 (after a "
                         f"convolution), got {num_dims!r}")
    return num_dims


def checked_context(X: np.ndarray, num_dims: int) -> Optional[mx.Context]:
    """The context (device) of a :class:`BatchNorm`'s input ``X``, whose rank must be the layer's
    ``num_dims``; None for what is not an ``mxnet.np.ndarray`` (:func:`checked_input` rejects
    it)."""
    if isinstance(X, np.ndarray) and X.ndim != num_dims:
        raise ValueError(f"this BatchNorm was built with num_dims={num_dims} but got a "
                         f"{X.ndim}-D input of shape {tuple(X.shape)}: use num_dims=2 after a "
                         f"fully connected layer, 4 after a convolution.")
    return getattr(X, "ctx", None)


def _outer(F, column, row):
    """The outer product of two 1-D arrays: a row per value of ``column``."""
    return F.np.dot(column.reshape(-1, 1), row.reshape(1, -1))


def _ones(F, X3):
    """Vectors of ones along axes 0 and 2 of an (N, C, R) array: (N,) and (R,)."""
    # Sliced from X3, as a graph has no shape to read (and never X3[:, 0, 0]: on a
    # recorded input, MXNet 1.9.1 dies of a floating-point exception on that index)
    return F.np.ones_like(X3[:, 0][:, 0]), F.np.ones_like(X3[0, 0])


def _channel_mean(F, X3):
    """The mean of an (N, C, R) array over axes 0 and 2: a (C,) array."""
    # As matrix-vector products: on the CPU, MXNet's reductions over several axes, and
    # their gradients, are many times slower than its matrix products.
    ones_examples, ones_rest = _ones(F, X3)
    per_example = F.np.dot(X3, ones_rest / ones_rest.sum())  # (N, C)
    return F.np.dot(ones_examples / ones_examples.sum(), per_example)


def _per_channel(F, t, X3):
    """A (C,) array repeated along axes 0 and 2 of an (N, C, R) array, to its shape."""
    # As outer products with ones, not by broadcasting: on the CPU, MXNet's gradient of
    # a broadcast is a slow reduction, that of a matrix product a fast one.
    ones_examples, ones_rest = _ones(F, X3)
    per_example = _outer(F, ones_examples, t)  # (N, C)
    return F.np.dot(F.npx.reshape(per_example, (-2, -2, 1)), ones_rest.reshape(1, -1))


def batch_statistics(F, X, running_mean, running_var, *, training, momentum=0.1,
                     unbiased_running_var=False):
    """The mean and variance to normalize X with, and the new running statistics."""
    if not training:
        return running_mean, running_var, running_mean, running_var
    X3 = F.npx.reshape(X, (-2, -2, -1))  # (N, C, values per channel and example)
    mean = _channel_mean(F, X3)
    var = _channel_mean(F, F.np.square(X3 - _per_channel(F, mean, X3)))
    n = F.np.ones_like(X3[:, 0]).sum()  # values per channel, N * R
    var_for_running = var * (n / (n - 1)) if unbiased_running_var else var
    # Without .detach(), which a graph's symbols lack: no loss uses the new
    # statistics, so no gradient flows through them
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * var_for_running
    new_mean, new_var = finite_or_old(
        F, (new_mean, new_var), (running_mean, running_var))
    return mean, var, new_mean, new_var


def batch_norm(F, X, gamma, beta, running_mean, running_var, *, training,
               momentum=0.1, eps=1e-5, unbiased_running_var=False):
    """Batch-normalize X; return Y and the new running mean and variance."""
    mean, var, new_mean, new_var = batch_statistics(
        F, X, running_mean, running_var, training=training, momentum=momentum,
        unbiased_running_var=unbiased_running_var)
    X3 = F.npx.reshape(X, (-2, -2, -1))  # (N, C, values per channel and example)
    # gamma / sqrt(var + eps) per channel first: fewer operations on full-size arrays
    scale = gamma / F.np.sqrt(var + eps)
    Y = ((X3 - _per_channel(F, mean, X3)) * _per_channel(F, scale, X3)
         + _per_channel(F, beta, X3))
    return F.npx.reshape_like(Y, X), new_mean, new_var


class Hybridized(nn.HybridBlock):
    """A function like batch_norm, in one mode, compiled into a graph (hybridized)."""

    def __init__(self, function, training, **options):
        super().__init__()
        self.function, self.training, self.options = function, training, options
        # One graph per input shape, its memory planned once (static_alloc)
        self.hybridize(static_alloc=True, static_shape=True)

    def hybrid_forward(self, F, X, gamma, beta, running_mean, running_var, *momentum):
        # In training, momentum is an input of the graph, not a constant in it: the
        # chapter's recompute_statistics changes it between calls
        options = dict(self.options, momentum=momentum[0]) if momentum else self.options
        return self.function(F, X, gamma, beta, running_mean, running_var,
                             training=self.training, **options)

    def __repr__(self):
        options = "".join(f", {name}={value}" for name, value in self.options.items())
        function = self.function.__name__
        return f"{type(self).__name__}({function}, {self.training}{options})"


class BatchNorm(nn.Block):
    """Batch normalization layer from scratch, built on batch_norm, compiled."""

    def __init__(self, num_features, num_dims, *, momentum=0.1, eps=1e-5,
                 function=batch_norm, **options):  # options: e.g. unbiased_running_var
        super().__init__()
        self.num_features, self.num_dims = num_features, checked_num_dims(num_dims)
        self.momentum, self.eps = momentum, eps
        self.gamma = self.params.get("gamma", shape=(num_features,), init=init.One())
        self.beta = self.params.get("beta", shape=(num_features,), init=init.Zero())
        # Parameters that are not trained, as in Gluon's layer: initialize(),
        # reset_ctx() and save_parameters() handle them with gamma and beta
        fixed = dict(shape=(num_features,), grad_req="null", differentiable=False)
        self.running_mean = self.params.get("running_mean", init=init.Zero(), **fixed)
        self.running_var = self.params.get("running_var", init=init.One(), **fixed)
        self.train_graph = Hybridized(function, training=True, eps=eps, **options)
        self.predict_graph = Hybridized(function, training=False, eps=eps, **options)

    def forward(self, X):
        ctx, training = checked_context(X, self.num_dims), autograd.is_training()
        # gamma, beta, running_mean, running_var; those not trained detached, going
        # in and coming out: autograd must not hold what set_data overwrites in place
        state = [p.data(ctx) if p.grad_req != "null" else p.data(ctx).detach()
                 for p in self.params.values()]
        X, dtype = checked_input(X, *state, training)
        if not training:
            return self.predict_graph(X, *state)[0].astype(dtype, copy=False)
        # np.full, not np.array, which copies from Python and waits for the queue
        momentum = np.full((), self.momentum, ctx=ctx)
        Y, mean, var = self.train_graph(X, *state, momentum)
        self.running_mean.set_data(mean.detach())
        self.running_var.set_data(var.detach())
        return Y.astype(dtype, copy=False)


def _standardize_rows(rows, eps):
    """Each row of a 2-D array minus its mean, over sqrt(its variance + eps)."""
    # Means as matrix-vector products, and per-row values spread by outer products,
    # not by broadcasting, for the reasons _channel_mean and _per_channel give.
    ones = np.ones(rows.shape[1], dtype=rows.dtype)
    centered = rows - _outer(mx.nd, np.dot(rows, ones / rows.shape[1]), ones)
    var = np.dot(np.square(centered), ones / rows.shape[1])
    return centered * _outer(mx.nd, 1 / np.sqrt(var + eps), ones)


def layer_norm(X, gamma, beta, eps=1e-5):
    """Layer normalization (Ba et al., 2016) from scratch."""
    if X.ndim < 2:
        raise ValueError(f"layer_norm expects a batch of examples, at least 2-D, "
                         f"got shape {tuple(X.shape)}; add a batch axis with "
                         f"np.expand_dims(X, 0).")
    if gamma.shape != X.shape[1:] or beta.shape != X.shape[1:]:
        raise ValueError(f"gamma and beta must have the shape of one example, "
                         f"{tuple(X.shape[1:])}; got {tuple(gamma.shape)} and "
                         f"{tuple(beta.shape)}.")
    X_hat = _standardize_rows(X.reshape(X.shape[0], -1), eps)  # a row: one example
    ones_N = np.ones(X.shape[0], dtype=X.dtype)
    Y = X_hat * _outer(mx.nd, ones_N, gamma) + _outer(mx.nd, ones_N, beta)
    return Y.reshape(X.shape)


def group_norm(X, gamma, beta, num_groups, eps=1e-5):
    """Group normalization (Wu & He, 2018): each example's channels (axis 1) standardized in
    ``num_groups`` groups of consecutive channels, over a group's channels and locations."""
    if X.ndim < 2 or X.shape[1] % num_groups != 0:
        raise ValueError(f"group_norm needs a batch whose channels (axis 1) split into "
                         f"{num_groups} equal groups; got shape {tuple(X.shape)}. Choose "
                         f"num_groups dividing the number of channels.")
    rows = X.reshape(X.shape[0] * num_groups, -1)  # a row: one group of one example
    X3 = X.reshape(X.shape[0], X.shape[1], -1)  # (N, C, values per channel)
    X_hat = _standardize_rows(rows, eps).reshape(X3.shape)
    Y = X_hat * _per_channel(mx.nd, gamma, X3) + _per_channel(mx.nd, beta, X3)
    return Y.reshape(X.shape)


# --- Models --------------------------------------------------------------------------------------

class Classifier(nn.Block):
    """Base class of the chapter's classifiers: a network ``self.net``, its loss and optimizer."""

    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr

    def forward(self, X: np.ndarray) -> np.ndarray:
        return self.net(X)

    def loss(self, Y_hat: np.ndarray, Y: np.ndarray, averaged: bool = True) -> np.ndarray:
        """Cross-entropy of the logits ``Y_hat`` against the labels ``Y``."""
        losses = -npx.pick(npx.log_softmax(Y_hat, axis=1), Y, axis=1)
        return losses.mean() if averaged else losses

    def accuracy(self, Y_hat: np.ndarray, Y: np.ndarray, averaged: bool = True) -> np.ndarray:
        """Fraction (or, not averaged, indicator) of examples whose top logit is the label."""
        correct = (Y_hat.argmax(axis=1) == Y).astype("float32")
        return correct.mean() if averaged else correct

    def configure_optimizers(self) -> gluon.Trainer:
        return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr})

    def apply_init(self, inputs: Iterable[np.ndarray],
                   init: Optional[Callable[[nn.Block], None]] = None) -> None:
        """Run one forward pass on ``inputs`` (which checks that they fit the network), then
        apply ``init`` to every child block of ``self.net``.

        The pass runs outside ``autograd.record()``, that is in prediction mode, so the running
        statistics of the batch-normalization layers are left at their initial values.
        """
        self(*inputs)
        if init is not None:
            self.net.apply(init)


def init_cnn(block: nn.Block) -> None:
    """Xavier-uniform weights for convolutions and dense layers; their biases are kept."""
    if isinstance(block, (nn.Conv2D, nn.Dense)):
        block.weight.initialize(init.Xavier(), ctx=block.weight.list_ctx(), force_reinit=True)


# LeNet on 28x28x1 images: 5x5 convolutions without padding and 2x2 pooling give
# 6@24x24 -> 6@12x12 -> 16@8x8 -> 16@4x4, hence 16 * 4 * 4 = 256 inputs to the first
# dense layer. Gluon could infer the input sizes at the first call; written out, the
# parameters exist as soon as the model does.
_FLAT = 16 * 4 * 4


class BNLeNetScratch(Classifier):
    """LeNet with our BatchNorm after every convolution and dense layer but the last."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(lr)
        self.num_classes = num_classes
        # Not hybridized as a whole: our BatchNorm compiles its mathematics, and
        # changes its running statistics from Python
        self.net = nn.Sequential()
        self.net.add(
            nn.Conv2D(6, kernel_size=5, in_channels=1), BatchNorm(6, num_dims=4),
            nn.Activation("sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
            nn.Conv2D(16, kernel_size=5, in_channels=6), BatchNorm(16, num_dims=4),
            nn.Activation("sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
            nn.Flatten(), nn.Dense(120, in_units=_FLAT), BatchNorm(120, num_dims=2),
            nn.Activation("sigmoid"),
            nn.Dense(84, in_units=120), BatchNorm(84, num_dims=2),
            nn.Activation("sigmoid"), nn.Dense(num_classes, in_units=84))
        self.initialize()


class BNLeNet(Classifier):
    """The same LeNet with Gluon's own nn.BatchNorm, hybridized into one graph."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(lr)
        self.num_classes = num_classes
        self.net = nn.HybridSequential()
        # Gluon's defaults are ours: momentum 0.9 (of the old average), epsilon 1e-5
        self.net.add(
            nn.Conv2D(6, kernel_size=5, in_channels=1), nn.BatchNorm(in_channels=6),
            nn.Activation("sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
            nn.Conv2D(16, kernel_size=5, in_channels=6), nn.BatchNorm(in_channels=16),
            nn.Activation("sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
            nn.Flatten(), nn.Dense(120, in_units=_FLAT), nn.BatchNorm(in_channels=120),
            nn.Activation("sigmoid"),
            nn.Dense(84, in_units=120), nn.BatchNorm(in_channels=84),
            nn.Activation("sigmoid"), nn.Dense(num_classes, in_units=84))
        self.initialize()
        self.net.hybridize()


# --- Data ----------------------------------------------------------------------------------------

class FashionMNIST(_data.FashionMNIST):
    """Fashion-MNIST minibatches as mxnet.np arrays: X float32 (b, 1, 28, 28), y int64 (b,)."""

    layout = "NCHW"

    def to_tensors(self, X: onp.ndarray, y: onp.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A copy into MXNet's memory (on the CPU), keeping the dtypes.
        return np.array(X, dtype=X.dtype), np.array(y, dtype=y.dtype)


# --- Training ------------------------------------------------------------------------------------

def train_epoch(model: Classifier, optimizer: gluon.Trainer, loader: Iterable, ctx: mx.Context,
                report: Report) -> float:
    """One pass over ``loader`` in training mode; returns the mean training loss per example.

    Each step runs the forward pass under ``autograd.record()``, which is what puts the
    batch-normalization layers in training mode. The loss is summed on the device and read back
    once, at the end: a ``loss.item()`` per step would make the host wait for the device at every
    step (MXNet runs operations asynchronously).
    """
    total, count = np.zeros((), ctx=ctx), 0
    for X, y in loader:
        X, y = X.as_in_ctx(ctx), y.as_in_ctx(ctx)
        with autograd.record():
            loss = model.loss(model(X), y)
        loss.backward()
        optimizer.step(batch_size=1)  # the loss is already the mean over the batch
        total += loss * len(y)  # outside record(): no graph
        count += len(y)
        report.batch_done()
    return total.item() / max(count, 1)


def evaluate(model: Classifier, loader: Iterable, ctx: mx.Context) -> tuple[float, float]:
    """Mean loss and accuracy over the whole of ``loader``, outside ``autograd.record()``: in
    prediction mode, without a graph."""
    loss_sum, correct, count = np.zeros((), ctx=ctx), np.zeros((), ctx=ctx), 0
    for X, y in loader:
        X, y = X.as_in_ctx(ctx), y.as_in_ctx(ctx)
        Y_hat = model(X)
        loss_sum += model.loss(Y_hat, y, averaged=False).sum()
        correct += model.accuracy(Y_hat, y, averaged=False).sum()
        count += len(y)
    loss_sum, correct = np.stack([loss_sum, correct]).tolist()  # one host sync
    return loss_sum / max(count, 1), correct / max(count, 1)


class Trainer:
    """Trains a :class:`Classifier` with minibatch SGD and returns its per-epoch history.

    Args:
        max_epochs: passes over the training data.
        num_gpus: 0 trains on the CPU; 1 or more trains on one GPU when this MXNet build sees
            one, and on the CPU otherwise (so ``Trainer(max_epochs=10, num_gpus=1)`` runs
            everywhere; see ``trainer.ctx``). More than one GPU is not used. MXNet's CUDA builds
            (pip's ``mxnet-cu117`` and older) need an old CUDA and are not tested here: the CPU is
            d2l_bn's tested path for MXNet.
        seed: if given, ``mx.random.seed(seed)`` and ``numpy.random.seed(seed)`` at the start of
            :meth:`fit`, for randomness during training. The initial weights come from the
            model's construction and ``apply_init``, so for a reproducible run also call
            ``mx.random.seed`` before building the model and fix the data's ``seed`` (its
            shuffling); then CPU runs repeat exactly.
        report: ``"auto"`` (a live figure in Jupyter, a progress bar elsewhere), ``"figure"``,
            ``"bar"``, ``"none"``, or a ``d2l_bn.training.Report`` instance.

    ``fit`` keeps the history in ``trainer.history`` however training ends: if the loss diverges
    (:class:`TrainingDiverged`) or on Ctrl-C, it holds the epochs completed before.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, *, seed: Optional[int] = None,
                 report: "str | Report" = "auto"):
        self.max_epochs, self.num_gpus, self.seed, self.report = max_epochs, num_gpus, seed, report
        use_gpu = num_gpus > 0 and mx.context.num_gpus() > 0
        self.ctx = mx.gpu(0) if use_gpu else mx.cpu()
        self.history = History()

    def fit(self, model: Classifier, data, *,
            after_epoch: Optional[Callable[[int], None]] = None) -> History:
        """Train ``model`` on ``data.train_dataloader()``, evaluating on ``data.val_dataloader()``
        after every epoch. Returns the history (also ``self.history``)."""
        if self.seed is not None:
            mx.random.seed(self.seed)
            onp.random.seed(self.seed)
        model.collect_params().reset_ctx(self.ctx)
        optimizer = model.configure_optimizers()
        train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
        self.history = History()
        return run_epochs(
            self.history, self.max_epochs,
            partial(train_epoch, model, optimizer, train_loader, self.ctx),
            partial(evaluate, model, val_loader, self.ctx),
            num_batches=len(train_loader) if hasattr(train_loader, "__len__") else None,
            lr=getattr(model, "lr", None), report=self.report,
            after_epoch=after_epoch)

    def evaluate(self, model: Classifier, loader: Iterable) -> tuple[float, float]:
        """Mean loss and accuracy of ``model`` over ``loader``, in prediction mode: e.g. on the
        training data, ``trainer.evaluate(model, data.get_dataloader(train=True))``."""
        return evaluate(model, loader, self.ctx)


# --- Recomputed statistics (the chapter's "Moving Averages or Recomputed Statistics") ----------
# Our BatchNorm layers are found by their `momentum` (the new batch's weight), not by class: a
# notebook defines its own BatchNorm class, which d2l_bn's isinstance could not see. Gluon's
# nn.BatchNorm has no such attribute, so it is never taken for one of ours.

def recompute_statistics(model, data, num_batches=100):
    """Set our BatchNorms' running statistics to averages over training minibatches."""
    layers = [block for block in model.net if hasattr(block, "momentum")]
    momenta = [layer.momentum for layer in layers]
    ctx = layers[0].gamma.list_ctx()[0]  # where the model's parameters live
    batches = data.get_dataloader(train=True, shuffle=False)
    for k, (X, _) in zip(range(1, num_batches + 1), batches):
        for layer in layers:
            layer.momentum = 1 / k  # the running values: the mean of the k batches
        with autograd.train_mode():  # batch statistics, without a graph or an update
            model(X.as_in_ctx(ctx))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def recomputed_val_accuracy(trainer: Trainer, model: Classifier, data,
                            num_batches: int = 100) -> float:
    """Validation accuracy of ``model`` with its batch-normalization statistics recomputed by
    :func:`recompute_statistics` from ``num_batches`` training minibatches (in stored order).

    The model is left exactly as it was: its running statistics (and the layers' momentum) are
    saved before and written back after, bit for bit, and nothing else of it changes (no
    gradient, no update, no draw from a random generator for a model without dropout). The
    training data is served by ``data.get_dataloader(train=True, shuffle=False)``, which draws
    nothing from the data's generator, so this may run between epochs of ``trainer.fit`` (as
    its ``after_epoch``) without changing the training run. For a model whose normalization
    layers are our :class:`BatchNorm` (or another layer with its ``momentum``) in ``model.net``.
    """
    layers = [block for block in model.net if hasattr(block, "momentum")]
    if not layers:
        if any(isinstance(block, nn.BatchNorm) for block in model.net):
            raise ValueError(f"{type(model).__name__} has no batch-normalization layer with "
                             f"running statistics that can be recomputed: Gluon's nn.BatchNorm "
                             f"fixes its momentum when it is built; build the model with our "
                             f"BatchNorm (as BNLeNetScratch does) to recompute them")
        raise ValueError(f"{type(model).__name__} has no batch-normalization layer with running "
                         f"statistics: nothing to recompute")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    saved = [(layer, layer.momentum, layer.running_mean.data().copy(),
              layer.running_var.data().copy()) for layer in layers]
    try:
        recompute_statistics(model, data, num_batches)
        _, accuracy = trainer.evaluate(model, data.val_dataloader())
    finally:
        for layer, momentum, mean, var in saved:
            layer.momentum = momentum
            layer.running_mean.set_data(mean)
            layer.running_var.set_data(var)
    return float(accuracy)


# --- Variants for the exercises (chapters/exercises.md) ------------------------------------------

def batch_norm_variant(F, X, gamma, beta, running_mean, running_var, *, training,
                       momentum=0.1, eps=1e-5, subtract_mean=True, divide_std=True):
    """batch_norm with either half of the standardization switched off."""
    mean, var, new_mean, new_var = batch_statistics(
        F, X, running_mean, running_var, training=training, momentum=momentum)
    X3 = F.npx.reshape(X, (-2, -2, -1))
    X_hat = X3 - _per_channel(F, mean, X3) if subtract_mean else X3
    if divide_std:
        X_hat = X_hat * _per_channel(F, 1 / F.np.sqrt(var + eps), X3)
    Y = X_hat * _per_channel(F, gamma, X3) + _per_channel(F, beta, X3)
    return F.npx.reshape_like(Y, X), new_mean, new_var


class BatchNormVariant(BatchNorm):
    """:class:`BatchNorm` built on :func:`batch_norm_variant`, with its two options, and
    ``learn_affine=False`` to keep gamma at 1 and beta at 0 (``grad_req='null'``)."""

    def __init__(self, num_features: int, num_dims: int, *, momentum: float = 0.1,
                 eps: float = 1e-5, subtract_mean: bool = True, divide_std: bool = True,
                 learn_affine: bool = True):
        super().__init__(num_features, num_dims, momentum=momentum, eps=eps,
                         function=batch_norm_variant, subtract_mean=subtract_mean,
                         divide_std=divide_std)
        if not learn_affine:
            self.gamma.grad_req = self.beta.grad_req = "null"


class LayerNorm(nn.Block):
    """Layer normalization from scratch, built on :func:`layer_norm`: gamma and beta have the
    shape of one example, ``shape`` (e.g. (channels, height, width) after a convolution)."""

    def __init__(self, shape: tuple, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = self.params.get("gamma", shape=shape, init=init.One())
        self.beta = self.params.get("beta", shape=shape, init=init.Zero())

    def forward(self, X: np.ndarray) -> np.ndarray:
        ctx = getattr(X, "ctx", None)
        return layer_norm(X, self.gamma.data(ctx), self.beta.data(ctx), self.eps)


class GroupNorm(nn.Block):
    """Group normalization from scratch, built on :func:`group_norm`: gamma and beta per
    channel."""

    def __init__(self, num_features: int, num_groups: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.gamma = self.params.get("gamma", shape=(num_features,), init=init.One())
        self.beta = self.params.get("beta", shape=(num_features,), init=init.Zero())

    def forward(self, X: np.ndarray) -> np.ndarray:
        ctx = getattr(X, "ctx", None)
        return group_norm(X, self.gamma.data(ctx), self.beta.data(ctx), self.num_groups, self.eps)


def _norm(kind: Optional[str], num_features: int, num_dims: int, shape: tuple,
          **options) -> list:
    """The normalization layer of a kind, in a list (empty for None: Gluon has no Identity)."""
    if kind == "batch":
        return [BatchNormVariant(num_features, num_dims, **options)]
    if kind == "layer":
        return [LayerNorm(shape)]
    if kind is None:
        return []
    raise ValueError(f"a normalization is 'batch', 'layer' or None, got {kind!r}")


def _mlp_norm(kind: Optional[str], num_features: int, num_groups: int) -> list:
    """The normalization layer of an MLP's hidden layer of a kind, in a list (empty for None)."""
    if kind == "batch":
        return [BatchNorm(num_features, num_dims=2)]
    if kind == "layer":
        return [LayerNorm((num_features,))]
    if kind == "group":
        return [GroupNorm(num_features, num_groups)]
    if kind is None:
        return []
    raise ValueError(f"an MLP's norm is 'batch', 'layer', 'group' or None, got {kind!r}")


class NormLeNet(Classifier):
    """LeNet with a normalization of choice after each of its four hidden layers (conv1, conv2,
    fc1, fc2), before the sigmoid.

    Args:
        norms: one entry per hidden layer: ``'batch'`` (:class:`BatchNormVariant`), ``'layer'``
            (:class:`LayerNorm`) or ``None``. The default, all ``'batch'``, is
            :class:`BNLeNetScratch`.
        bias: whether a convolution or dense layer followed by a normalization has a bias
            (a layer without normalization after it always has one).
        **options: ``subtract_mean``, ``divide_std``, ``learn_affine`` of
            :class:`BatchNormVariant`.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, *,
                 norms: tuple = ("batch",) * 4, bias: bool = True, **options):
        super().__init__(lr)
        self.num_classes = num_classes
        if len(norms) != 4:
            raise ValueError(f"norms needs one entry per hidden layer, 4, got {norms!r}")
        has_bias = [bias or kind is None for kind in norms]
        self.net = nn.Sequential()
        self.net.add(
            nn.Conv2D(6, kernel_size=5, in_channels=1, use_bias=has_bias[0]),
            *_norm(norms[0], 6, 4, (6, 24, 24), **options),
            nn.Activation("sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
            nn.Conv2D(16, kernel_size=5, in_channels=6, use_bias=has_bias[1]),
            *_norm(norms[1], 16, 4, (16, 8, 8), **options),
            nn.Activation("sigmoid"), nn.AvgPool2D(pool_size=2, strides=2),
            nn.Flatten(), nn.Dense(120, in_units=_FLAT, use_bias=has_bias[2]),
            *_norm(norms[2], 120, 2, (120,), **options), nn.Activation("sigmoid"),
            nn.Dense(84, in_units=120, use_bias=has_bias[3]),
            *_norm(norms[3], 84, 2, (84,), **options), nn.Activation("sigmoid"),
            nn.Dense(num_classes, in_units=84))
        self.initialize()


class MLP(Classifier):
    """A multilayer perceptron on flattened images: each hidden layer is a dense layer, then
    a normalization if ``norm`` is given (``'batch'``: our :class:`BatchNorm`; ``'layer'``:
    :class:`LayerNorm`; ``'group'``: :class:`GroupNorm` with ``num_groups`` groups), a ReLU,
    then dropout with probability ``dropout`` (none at 0)."""

    def __init__(self, lr: float = 0.1, num_classes: int = 10, *,
                 num_hiddens: tuple = (128, 128), dropout: float = 0.0,
                 norm: Optional[str] = None, num_groups: int = 16):
        super().__init__(lr)
        self.num_classes = num_classes
        self.net = nn.Sequential()
        self.net.add(nn.Flatten())
        inputs = 28 * 28
        for outputs in num_hiddens:
            self.net.add(nn.Dense(outputs, in_units=inputs))
            self.net.add(*_mlp_norm(norm, outputs, num_groups))
            self.net.add(nn.Activation("relu"))
            if dropout > 0:
                self.net.add(nn.Dropout(dropout))
            inputs = outputs
        self.net.add(nn.Dense(num_classes, in_units=inputs))
        self.initialize()
