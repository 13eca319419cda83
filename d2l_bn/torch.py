"""PyTorch code for the Batch Normalization chapter: the layer from scratch, LeNet, training.

Import it as the book does, ``from d2l_bn import torch as d2l``; never run this file as a script
(a file named ``torch.py`` first on the path would hide the real ``torch``).
"""

from ._require import require

require("torch")

from functools import partial  # noqa: E402
from typing import Callable, Iterable, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from . import data as _data  # noqa: E402
from .plotting import plot_curves, plot_shared_statistics  # noqa: E402,F401 (the chapter)
from .training import History, Report, TrainingDiverged, run_epochs  # noqa: E402

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

def checked_input(X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                  running_mean: torch.Tensor, running_var: torch.Tensor,
                  training: bool) -> tuple[torch.Tensor, torch.dtype]:
    """Check the arguments of :func:`batch_norm`; return X to compute with, and Y's dtype.

    Raises a TypeError or ValueError that says what to do for an input that is not a
    ``torch.Tensor``, not floating point, not 2-D (batch, features) or 4-D (batch, channels,
    height, width), whose axis 1 does not match gamma, or, in training, with fewer than 2 values
    per channel; and for beta or running statistics whose shape is not gamma's, (C,).
    Shapes only: looking at values would make the host wait for the device at every step.

    A float16 or bfloat16 input is normalized in float32 and the output cast back to its dtype,
    as ``nn.BatchNorm*d`` does; gamma, beta and the running statistics stay float32. So X comes
    back in float32 when it is half precision, and the dtype to return Y in is the input's.
    """
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor, got {type(X).__name__}; convert "
                        f"it with torch.as_tensor(X, dtype=torch.float32)")
    if not X.is_floating_point():
        raise TypeError(f"batch_norm expects a floating-point tensor, got {X.dtype}; "
                        f"convert it with X.float()")
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
    if training and X.numel() // X.shape[1] < 2:
        raise ValueError(
            f"batch statistics are undefined with {X.numel() // X.shape[1]} value per channel "
            f"(input shape {tuple(X.shape)}, e.g. a batch of one after a fully connected layer): "
            f"train with batches of at least 2, or switch to eval mode (model.eval(), "
            f"training=False) to normalize with the running statistics.")
    for name, t in (("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if t.shape != gamma.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, gamma {tuple(gamma.shape)}: "
                             f"all four must have shape ({X.shape[1]},)")
    dtype = X.dtype
    if dtype in (torch.float16, torch.bfloat16):
        X = X.float()  # statistics in half precision would lose the mean's digits
    return X, dtype


def finite_or_old(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]
                  ) -> tuple[torch.Tensor, ...]:
    """``new`` if every value of the new statistics is finite, else ``old``.

    A batch with a NaN or an infinity gives a non-finite output, as it must, but leaves the
    running statistics as they were instead of poisoning every later prediction (the built-in
    layers let it in); the Trainer reports the non-finite loss at the end of the epoch. Decided on
    the device, with ``torch.where``, without a host sync.
    """
    finite = torch.isfinite(new[0]).all()
    for t in new[1:]:
        finite = finite & torch.isfinite(t).all()
    return tuple(torch.where(finite, n, o) for n, o in zip(new, old))


def checked_num_dims(num_dims: int) -> int:
    """``num_dims`` of a :class:`BatchNorm`, which must be 2 or 4."""
    if num_dims not in (2, 4):
        raise ValueError(f"num_dims must be 2 (after a fully connected layer) or 4 (after a "
                         f"convolution), got {num_dims!r}")
    return num_dims


def check_layer_input(X: torch.Tensor, num_dims: int) -> None:
    """Raise a ValueError if the tensor ``X`` is not ``num_dims``-D, as its :class:`BatchNorm`
    was built for (what is not a tensor, :func:`batch_norm` rejects with its own message)."""
    if isinstance(X, torch.Tensor) and X.ndim != num_dims:
        raise ValueError(f"this BatchNorm was built with num_dims={num_dims} but got a "
                         f"{X.ndim}-D input of shape {tuple(X.shape)}: use num_dims=2 after a "
                         f"fully connected layer, 4 after a convolution.")


def batch_statistics(X, running_mean, running_var, *, training, momentum=0.1,
                     unbiased_running_var=False):
    """The mean and variance to normalize X with, and the new running statistics."""
    if not training:
        return running_mean, running_var, running_mean, running_var
    axes = (0,) if X.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (X.ndim - 2)  # a (C,) vector along axis 1
    mean = X.mean(dim=axes)
    var = ((X - mean.reshape(shape)) ** 2).mean(dim=axes)
    n = X.numel() // X.shape[1]  # values per channel
    var_for_running = var * (n / (n - 1)) if unbiased_running_var else var
    new_mean = (1 - momentum) * running_mean + momentum * mean.detach()
    new_var = (1 - momentum) * running_var + momentum * var_for_running.detach()
    new_mean, new_var = finite_or_old(
        (new_mean, new_var), (running_mean, running_var))
    return mean, var, new_mean, new_var


def batch_norm(X, gamma, beta, running_mean, running_var, *, training,
               momentum=0.1, eps=1e-5, unbiased_running_var=False):
    """Batch-normalize X; return Y and the new running mean and variance."""
    X, dtype = checked_input(X, gamma, beta, running_mean, running_var, training)
    mean, var, new_mean, new_var = batch_statistics(
        X, running_mean, running_var, training=training, momentum=momentum,
        unbiased_running_var=unbiased_running_var)
    shape = (1, -1) + (1,) * (X.ndim - 2)
    X_hat = (X - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    Y = gamma.reshape(shape) * X_hat + beta.reshape(shape)
    return Y.to(dtype), new_mean, new_var


class BatchNorm(nn.Module):
    """Batch normalization layer from scratch, built on batch_norm."""

    def __init__(self, num_features, num_dims, *, momentum=0.1, eps=1e-5,
                 unbiased_running_var=False):
        super().__init__()
        self.num_features, self.num_dims = num_features, checked_num_dims(num_dims)
        self.momentum, self.eps = momentum, eps
        self.unbiased_running_var = unbiased_running_var
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        # Buffers, not plain attributes: .to(device) moves them, state_dict() saves them
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, X):
        check_layer_input(X, self.num_dims)
        Y, mean, var = batch_norm(
            X, self.gamma, self.beta, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps,
            unbiased_running_var=self.unbiased_running_var)
        if self.training:
            with torch.no_grad():  # in place: state_dict keeps the same buffers
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return Y

    def extra_repr(self):
        return (f"{self.num_features}, num_dims={self.num_dims}, "
                f"momentum={self.momentum}, eps={self.eps}")


def layer_norm(X, gamma, beta, eps=1e-5):
    """Layer normalization (Ba et al., 2016) from scratch."""
    if X.ndim < 2:
        raise ValueError(f"layer_norm expects a batch of examples, at least 2-D, "
                         f"got shape {tuple(X.shape)}; add a batch axis with "
                         f"X.unsqueeze(0).")
    if gamma.shape != X.shape[1:] or beta.shape != X.shape[1:]:
        raise ValueError(f"gamma and beta must have the shape of one example, "
                         f"{tuple(X.shape[1:])}; got {tuple(gamma.shape)} and "
                         f"{tuple(beta.shape)}.")
    axes = tuple(range(1, X.ndim))
    mean = X.mean(dim=axes, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=axes, keepdim=True)
    return gamma * (X - mean) / torch.sqrt(var + eps) + beta


def group_norm(X, gamma, beta, num_groups, eps=1e-5):
    """Group normalization (Wu & He, 2018): each example's channels (axis 1) standardized in
    ``num_groups`` groups of consecutive channels, over a group's channels and locations."""
    if X.ndim < 2 or X.shape[1] % num_groups != 0:
        raise ValueError(f"group_norm needs a batch whose channels (axis 1) split into "
                         f"{num_groups} equal groups; got shape {tuple(X.shape)}. Choose "
                         f"num_groups dividing the number of channels.")
    groups = X.reshape(X.shape[0], num_groups, -1)
    mean = groups.mean(dim=2, keepdim=True)
    var = ((groups - mean) ** 2).mean(dim=2, keepdim=True)
    X_hat = ((groups - mean) / torch.sqrt(var + eps)).reshape(X.shape)
    shape = (1, -1) + (1,) * (X.ndim - 2)
    return gamma.reshape(shape) * X_hat + beta.reshape(shape)


# --- Models --------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """Base class of the chapter's classifiers: a network ``self.net``, its loss and optimizer."""

    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def loss(self, Y_hat: torch.Tensor, Y: torch.Tensor, averaged: bool = True) -> torch.Tensor:
        """Cross-entropy of the logits ``Y_hat`` against the labels ``Y``."""
        return F.cross_entropy(Y_hat, Y, reduction="mean" if averaged else "none")

    def accuracy(self, Y_hat: torch.Tensor, Y: torch.Tensor,
                 averaged: bool = True) -> torch.Tensor:
        """Fraction (or, not averaged, indicator) of examples whose top logit is the label."""
        correct = (Y_hat.argmax(dim=1) == Y).float()
        return correct.mean() if averaged else correct

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(self, inputs: Iterable[torch.Tensor],
                   init: Optional[Callable[[nn.Module], None]] = None) -> None:
        """Run one forward pass on ``inputs`` (which materializes any lazy module), then apply
        ``init`` to every submodule of ``self.net``.

        The pass runs in eval mode without gradients, so the running statistics of the
        batch-normalization layers are left at their initial values.
        """
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self(*inputs)
        self.train(was_training)
        if init is not None:
            self.net.apply(init)


def init_cnn(module: nn.Module) -> None:
    """Xavier-uniform weights for convolutions and linear layers; their biases are kept."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)


# LeNet on 28x28x1 images: 5x5 convolutions without padding and 2x2 pooling give
# 6@24x24 -> 6@12x12 -> 16@8x8 -> 16@4x4, hence 16 * 4 * 4 = 256 inputs to the first
# linear layer. Written out rather than inferred by Lazy modules, so that the parameters
# exist as soon as the model does.
_FLAT = 16 * 4 * 4


class BNLeNetScratch(Classifier):
    """LeNet with our BatchNorm after every convolution and hidden linear layer."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(lr)
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5), BatchNorm(6, num_dims=4),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.Linear(_FLAT, 120), BatchNorm(120, num_dims=2),
            nn.Sigmoid(), nn.Linear(120, 84), BatchNorm(84, num_dims=2),
            nn.Sigmoid(), nn.Linear(84, num_classes))


class BNLeNet(Classifier):
    """The same LeNet with PyTorch's own nn.BatchNorm2d and nn.BatchNorm1d."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(lr)
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.Linear(_FLAT, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
            nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
            nn.Linear(84, num_classes))


# --- Data ----------------------------------------------------------------------------------------

class FashionMNIST(_data.FashionMNIST):
    """Fashion-MNIST minibatches as torch tensors: X float32 (b, 1, 28, 28), y int64 (b,)."""

    layout = "NCHW"

    def to_tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # from_numpy shares the memory, no copy; it warns on read-only arrays, so copy those.
        return tuple(torch.from_numpy(a) if a.flags.writeable else torch.tensor(a) for a in (X, y))


# --- Training ------------------------------------------------------------------------------------

def train_epoch(model: Classifier, optimizer: torch.optim.Optimizer, loader: Iterable,
                device: torch.device, report: Report) -> float:
    """One pass over ``loader`` in training mode; returns the mean training loss per example.

    The loss is summed on the device and read back once, at the end: a ``loss.item()`` per step
    would make the host wait for the device at every step.
    """
    model.train()
    total, count = torch.zeros((), device=device), 0
    for X, y in loader:
        X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = model.loss(model(X), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(y)
        count += len(y)
        report.batch_done()
    return total.item() / max(count, 1)


def evaluate(model: Classifier, loader: Iterable, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over the whole of ``loader``, in eval mode, without gradients."""
    model.eval()
    loss_sum, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    with torch.no_grad():
        for X, y in loader:
            X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
            Y_hat = model(X)
            loss_sum += model.loss(Y_hat, y, averaged=False).sum()
            correct += model.accuracy(Y_hat, y, averaged=False).sum()
            count += len(y)
    loss_sum, correct = torch.stack([loss_sum, correct]).tolist()  # one host sync
    return loss_sum / max(count, 1), correct / max(count, 1)


class Trainer:
    """Trains a :class:`Classifier` with minibatch SGD and returns its per-epoch history.

    Args:
        max_epochs: passes over the training data.
        num_gpus: 0 trains on the CPU; 1 or more trains on one CUDA GPU when there is one, and
            on the CPU otherwise (so ``Trainer(max_epochs=10, num_gpus=1)`` runs everywhere; see
            ``trainer.device``). More than one GPU is not used.
        seed: if given, ``torch.manual_seed(seed)`` at the start of :meth:`fit`, for randomness
            during training. The initial weights come from the model's construction, so for a
            reproducible run also call ``torch.manual_seed`` before building the model and fix
            the data's ``seed`` (its shuffling); then CPU runs repeat exactly.
        report: ``"auto"`` (a live figure in Jupyter, a progress bar elsewhere), ``"figure"``,
            ``"bar"``, ``"none"``, or a ``d2l_bn.training.Report`` instance.

    ``fit`` keeps the history in ``trainer.history`` however training ends: if the loss diverges
    (:class:`TrainingDiverged`) or on Ctrl-C, it holds the epochs completed before.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, *, seed: Optional[int] = None,
                 report: "str | Report" = "auto"):
        self.max_epochs, self.num_gpus, self.seed, self.report = max_epochs, num_gpus, seed, report
        use_gpu = num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda:0" if use_gpu else "cpu")
        self.history = History()

    def fit(self, model: Classifier, data, *,
            after_epoch: Optional[Callable[[int], None]] = None) -> History:
        """Train ``model`` on ``data.train_dataloader()``, evaluating on ``data.val_dataloader()``
        after every epoch. Returns the history (also ``self.history``)."""
        if self.seed is not None:
            torch.manual_seed(self.seed)
        model.to(self.device)
        optimizer = model.configure_optimizers()
        train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
        self.history = History()
        return run_epochs(
            self.history, self.max_epochs,
            partial(train_epoch, model, optimizer, train_loader, self.device),
            partial(evaluate, model, val_loader, self.device),
            num_batches=len(train_loader) if hasattr(train_loader, "__len__") else None,
            lr=getattr(model, "lr", None), report=self.report,
            after_epoch=after_epoch)

    def evaluate(self, model: Classifier, loader: Iterable) -> tuple[float, float]:
        """Mean loss and accuracy of ``model`` over ``loader``, in eval mode: e.g. on the training
        data, ``trainer.evaluate(model, data.get_dataloader(train=True))``."""
        return evaluate(model, loader, self.device)


# --- Statistics recomputed after training (the chapter's "Moving Averages or Recomputed
# Statistics") -----------------------------------------------------------------------------------
# The layers are found by their running_mean buffer rather than by isinstance: a notebook runs the
# chapter's own BatchNorm class, which is not this module's, and nn.BatchNorm*d works the same way.

def recompute_statistics(model, data, num_batches=100):
    """Set each BatchNorm's running statistics to their mean over training batches."""
    layers = [m for m in model.modules() if hasattr(m, "running_mean")]
    momenta = [layer.momentum for layer in layers]
    device = next(model.parameters()).device
    was_training = model.training
    model.train()  # each layer normalizes with, and records, the batch's statistics
    batches = data.get_dataloader(train=True, shuffle=False)
    with torch.no_grad():  # forward passes only: the parameters stay as they are
        for k, (X, _) in zip(range(1, num_batches + 1), batches):
            for layer in layers:
                layer.momentum = 1 / k  # the running value: the mean of k batches
            model(X.to(device))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.train(was_training)


def recomputed_val_accuracy(trainer: Trainer, model: Classifier, data,
                            num_batches: int = 100) -> float:
    """Validation accuracy of ``model`` with the running statistics of its batch-normalization
    layers recomputed by :func:`recompute_statistics` from ``num_batches`` training minibatches.

    The model is left exactly as it was: its running statistics (and the layers' momentum, and
    the model's mode) are saved before and written back after, bit for bit, and nothing else of
    it changes (no gradient, no update). The training batches are served in stored order, drawing nothing from
    ``data.rng``, so this may run between epochs of ``trainer.fit`` (as its ``after_epoch``)
    without changing the training run.
    """
    layers = [m for m in model.modules() if hasattr(m, "running_mean")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no batch-normalization layer with running "
                         f"statistics: nothing to recompute")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    saved = [(layer, layer.momentum, layer.running_mean.clone(), layer.running_var.clone())
             for layer in layers]
    was_training = model.training
    try:
        recompute_statistics(model, data, num_batches)
        return trainer.evaluate(model, data.val_dataloader())[1]
    finally:
        with torch.no_grad():
            for layer, momentum, mean, var in saved:
                layer.momentum = momentum
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
        model.train(was_training)


# --- Variants for the exercises (chapters/exercises.md) ------------------------------------------

def batch_norm_variant(X, gamma, beta, running_mean, running_var, *, training,
                       momentum=0.1, eps=1e-5, subtract_mean=True, divide_std=True):
    """batch_norm with either half of the standardization switched off."""
    X, dtype = checked_input(X, gamma, beta, running_mean, running_var, training)
    mean, var, new_mean, new_var = batch_statistics(
        X, running_mean, running_var, training=training, momentum=momentum)
    shape = (1, -1) + (1,) * (X.ndim - 2)
    X_hat = X - mean.reshape(shape) if subtract_mean else X
    if divide_std:
        X_hat = X_hat / torch.sqrt(var.reshape(shape) + eps)
    Y = gamma.reshape(shape) * X_hat + beta.reshape(shape)
    return Y.to(dtype), new_mean, new_var


class BatchNormVariant(nn.Module):
    """:class:`BatchNorm` built on :func:`batch_norm_variant`, with its two options, and
    ``learn_affine=False`` to keep gamma at 1 and beta at 0 (buffers, not parameters)."""

    def __init__(self, num_features: int, num_dims: int, *, momentum: float = 0.1,
                 eps: float = 1e-5, subtract_mean: bool = True, divide_std: bool = True,
                 learn_affine: bool = True):
        super().__init__()
        self.num_features, self.num_dims, self.momentum, self.eps = (
            num_features, num_dims, momentum, eps)
        self.subtract_mean, self.divide_std = subtract_mean, divide_std
        gamma, beta = torch.ones(num_features), torch.zeros(num_features)
        if learn_affine:
            self.gamma, self.beta = nn.Parameter(gamma), nn.Parameter(beta)
        else:
            self.register_buffer("gamma", gamma)
            self.register_buffer("beta", beta)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y, mean, var = batch_norm_variant(
            X, self.gamma, self.beta, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps,
            subtract_mean=self.subtract_mean, divide_std=self.divide_std)
        if self.training:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return Y


class LayerNorm(nn.Module):
    """Layer normalization from scratch, built on :func:`layer_norm`: gamma and beta have the
    shape of one example, ``shape`` (e.g. (channels, height, width) after a convolution)."""

    def __init__(self, shape: tuple[int, ...], eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return layer_norm(X, self.gamma, self.beta, self.eps)


class GroupNorm(nn.Module):
    """Group normalization from scratch, built on :func:`group_norm`: gamma and beta per
    channel."""

    def __init__(self, num_features: int, num_groups: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return group_norm(X, self.gamma, self.beta, self.num_groups, self.eps)


def _norm(kind: Optional[str], num_features: int, num_dims: int, shape: tuple[int, ...],
          **options) -> list:
    """The normalization layer of a kind, in a list (empty for None)."""
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
        bias: whether a convolution or linear layer followed by a normalization has a bias
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
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, bias=has_bias[0]),
            *_norm(norms[0], 6, 4, (6, 24, 24), **options),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5, bias=has_bias[1]),
            *_norm(norms[1], 16, 4, (16, 8, 8), **options),
            nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(), nn.Linear(_FLAT, 120, bias=has_bias[2]),
            *_norm(norms[2], 120, 2, (120,), **options), nn.Sigmoid(),
            nn.Linear(120, 84, bias=has_bias[3]), *_norm(norms[3], 84, 2, (84,), **options),
            nn.Sigmoid(), nn.Linear(84, num_classes))


class MLP(Classifier):
    """A multilayer perceptron on flattened images: each hidden layer is a linear layer, then
    a normalization if ``norm`` is given (``'batch'``: our :class:`BatchNorm`; ``'layer'``:
    :class:`LayerNorm`; ``'group'``: :class:`GroupNorm` with ``num_groups`` groups), a ReLU,
    then dropout with probability ``dropout`` (none at 0)."""

    def __init__(self, lr: float = 0.1, num_classes: int = 10, *,
                 num_hiddens: tuple[int, ...] = (128, 128), dropout: float = 0.0,
                 norm: Optional[str] = None, num_groups: int = 16):
        super().__init__(lr)
        self.num_classes = num_classes
        blocks, inputs = [nn.Flatten()], 28 * 28
        for outputs in num_hiddens:
            blocks.append(nn.Linear(inputs, outputs))
            blocks += _mlp_norm(norm, outputs, num_groups)
            blocks.append(nn.ReLU())
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            inputs = outputs
        self.net = nn.Sequential(*blocks, nn.Linear(inputs, num_classes))
