"""JAX code for the Batch Normalization chapter: the layer from scratch, LeNet, training.

Import it as the book does, ``from d2l_bn import jax as d2l``; never run this file as a script
(a file named ``jax.py`` first on the path would hide the real ``jax``).

Models are Flax linen modules and training follows Flax's ImageNet example: the parameters and the
running statistics live outside the model, in a ``TrainState`` with ``batch_stats``, and the
training step is a pure function under ``jax.jit``. Images are channels-last, (batch, height,
width, channels), as Flax's convolutions expect.
"""

from ._require import require

require("jax")

import dataclasses  # noqa: E402
from functools import lru_cache, partial  # noqa: E402
from typing import Any, Callable, Iterable, Optional, Sequence  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402

from . import data as _data  # noqa: E402
from .plotting import plot_curves, plot_shared_statistics  # noqa: E402,F401 (the chapter)
from .training import History, Report, TrainingDiverged, run_epochs  # noqa: E402

__all__ = ["batch_statistics", "batch_norm", "BatchNorm", "layer_norm", "Classifier",
           "BNLeNetScratch", "BNLeNet",
           "init_cnn", "FashionMNIST", "TrainState", "Trainer", "History", "TrainingDiverged",
           "recompute_statistics", "recomputed_val_accuracy",
           # for the exercises
           "batch_norm_variant", "BatchNormVariant", "LayerNorm", "group_norm", "GroupNorm",
           "NormLeNet", "MLP"]


# --- Batch normalization from scratch ------------------------------------------------------------

# The chapter shows batch_norm, BatchNorm and layer_norm as plain teaching code; these are the
# same mathematics hardened, with checks of the input, half precision and a guard against
# non-finite batches in the helpers below. tests/page_equivalence.py holds the two equal.
#
# Channels-last needs no reshaping: a (C,) array broadcasts along the last axis of a 2-D
# (batch, features) and of a 4-D (batch, height, width, channels) input alike.

def checked_input(X: jax.Array, gamma: jax.Array, beta: jax.Array, running_mean: jax.Array,
                  running_var: jax.Array, training: bool) -> tuple[jax.Array, Any]:
    """The checks of :func:`batch_norm`: returns ``X`` (in float32 if it is float16 or bfloat16)
    and the dtype of the output ``Y``.

    Each error says what to do. Only shapes and dtypes are looked at: they are static under
    ``jax.jit``, and looking at values would make the host wait for the device at every step.

    A float16 or bfloat16 input is normalized in float32, and the output is float32, as
    ``flax.linen.BatchNorm`` gives with float32 parameters: the returned dtype is the one the
    arithmetic of :func:`batch_norm` gives ``Y`` anyway (so its final cast changes nothing),
    float32 for a half-precision input with float32 parameters.
    """
    if not isinstance(X, (jax.Array, np.ndarray)):
        raise TypeError(f"batch_norm expects a jax.Array, got {type(X).__name__}; convert "
                        f"it with jnp.asarray(X, dtype=jnp.float32)")
    if not jnp.issubdtype(X.dtype, jnp.floating):
        raise TypeError(f"batch_norm expects a floating-point array, got {X.dtype}; "
                        f"convert it with X.astype(jnp.float32)")
    if X.ndim not in (2, 4):
        raise ValueError(
            f"batch_norm expects a 2-D input (batch, features), as after a fully connected layer, "
            f"or a 4-D input (batch, height, width, channels), as after a convolution; got shape "
            f"{tuple(X.shape)}. Flatten the input first (e.g. X.reshape((X.shape[0], -1))) or add "
            f"the missing axes.")
    num_channels = gamma.shape[0] if gamma.ndim == 1 else None
    if num_channels != X.shape[-1]:
        raise ValueError(
            f"the input has {X.shape[-1]} features/channels on its last axis but gamma has shape "
            f"{tuple(gamma.shape)}: gamma, beta and the running statistics must have shape "
            f"({X.shape[-1]},); build the layer with num_features={X.shape[-1]}.")
    if training and X.size // X.shape[-1] < 2:
        raise ValueError(
            f"batch statistics are undefined with {X.size // X.shape[-1]} value per channel "
            f"(input shape {tuple(X.shape)}, e.g. a batch of one after a fully connected layer): "
            f"train with batches of at least 2, or switch to prediction mode (train=False for the "
            f"layer, training=False for batch_norm) to normalize with the running statistics.")
    for name, t in (("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if t.shape != gamma.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, gamma {tuple(gamma.shape)}: "
                             f"all four must have shape ({X.shape[-1]},)")
    if X.dtype in (jnp.float16, jnp.bfloat16):
        X = X.astype(jnp.float32)  # statistics in float16 would lose the mean's digits
    # Y = gamma * (X - mean) / sqrt(var + eps) + beta, with the batch's statistics (of X's dtype)
    # in training and the running ones in prediction.
    statistics = () if training else (running_mean, running_var)
    return X, jnp.result_type(X, gamma, beta, *statistics)


def finite_or_old(new: Sequence[jax.Array], old: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """``new`` if every value of the new running statistics is finite, else ``old``.

    Under ``jax.jit`` nothing can be raised on values, so a batch that would make the running
    statistics non-finite (NaN or infinity in the input) leaves them unchanged instead of
    poisoning every later prediction; the output is non-finite all the same, and the Trainer
    reports the non-finite loss at the end of the epoch. Decided on the device by ``jnp.where``,
    without a host sync.
    """
    finite = jnp.isfinite(new[0]).all()
    for statistic in new[1:]:
        finite = finite & jnp.isfinite(statistic).all()
    return tuple(jnp.where(finite, n, o) for n, o in zip(new, old))


# batch_norm is a pure function: it returns (Y, new_running_mean, new_running_var) and changes
# nothing. unbiased_running_var=True feeds the running variance with the unbiased batch variance,
# as torch.nn.BatchNorm*d does; normalization always uses the biased one. use_fast_variance=True
# computes the batch variance in one pass, max(0, E[x²] - E[x]²), as flax.linen.BatchNorm does by
# default (Flax 0.12: bit for bit the same); in float32 it loses about (mean / std)² * 1.5e-7 of
# relative precision (0.1% for a channel with mean 100 and std 1, 1.5% for mean 300), where the
# two-pass variance stays within 1e-7.

def batch_statistics(X, running_mean, running_var, *, training, momentum=0.1,
                     unbiased_running_var=False, use_fast_variance=False):
    """The mean and variance to normalize X with, and the new running statistics."""
    if not training:
        return running_mean, running_var, running_mean, running_var
    axes = (0,) if X.ndim == 2 else (0, 1, 2)  # every axis but the last, the channels
    mean = X.mean(axis=axes)
    var = ((X - mean) ** 2).mean(axis=axes)
    if use_fast_variance:  # one pass, as in Flax's BatchNorm; less exact in float32
        var = jnp.maximum(0.0, (X * X).mean(axis=axes) - mean * mean)
    n = X.size // X.shape[-1]  # values per channel
    var_for_running = var * (n / (n - 1)) if unbiased_running_var else var
    batch_mean, batch_var = jax.lax.stop_gradient((mean, var_for_running))
    new_mean = (1 - momentum) * running_mean + momentum * batch_mean
    new_var = (1 - momentum) * running_var + momentum * batch_var
    new_mean, new_var = finite_or_old(
        (new_mean, new_var), (running_mean, running_var))
    return mean, var, new_mean, new_var


def batch_norm(X, gamma, beta, running_mean, running_var, *, training, momentum=0.1,
               eps=1e-5, unbiased_running_var=False, use_fast_variance=False):
    """Batch-normalize X; return Y and the new running mean and variance."""
    X, dtype = checked_input(X, gamma, beta, running_mean, running_var, training)
    mean, var, new_mean, new_var = batch_statistics(
        X, running_mean, running_var, training=training, momentum=momentum,
        unbiased_running_var=unbiased_running_var, use_fast_variance=use_fast_variance)
    X_hat = (X - mean) / jnp.sqrt(var + eps)
    return (gamma * X_hat + beta).astype(dtype), new_mean, new_var


def check_num_dims(num_dims: int) -> None:
    """The check of :class:`BatchNorm`'s ``num_dims``, when the layer is built."""
    if num_dims not in (2, 4):
        raise ValueError(f"num_dims must be 2 (after a fully connected layer) or 4 (after a "
                         f"convolution), got {num_dims!r}")


def check_layer_input(X: jax.Array, num_dims: int) -> None:
    """The check of :class:`BatchNorm`'s input: its number of dimensions is ``num_dims``.

    (:func:`batch_norm` accepts both 2-D and 4-D inputs; a layer built for one rejects the other.)
    """
    if jnp.ndim(X) != num_dims:
        raise ValueError(f"this BatchNorm was built with num_dims={num_dims} but got a "
                         f"{jnp.ndim(X)}-D input of shape {jnp.shape(X)}: use num_dims=2 "
                         f"after a fully connected layer, 4 after a convolution.")


# BatchNorm's variables: gamma and beta are parameters, in the collection 'params'; running_mean
# and running_var are in the collection 'batch_stats'. A Flax module holds no state: apply takes
# both collections, and with train=True and mutable=['batch_stats'] it returns the updated running
# statistics next to the output. As in flax.linen.BatchNorm, init only creates them, and training
# with batch_stats immutable is an error rather than a silent skip.

class BatchNorm(nn.Module):
    """Batch normalization layer from scratch, built on batch_norm."""

    num_features: int  # features or channels of the layer before it
    num_dims: int  # 2 after a dense layer, 4 after a convolution
    momentum: float = 0.1
    eps: float = 1e-5
    unbiased_running_var: bool = False
    use_fast_variance: bool = False

    def __post_init__(self):
        check_num_dims(self.num_dims)
        super().__post_init__()

    @nn.compact
    def __call__(self, X, train):
        check_layer_input(X, self.num_dims)
        shape = (self.num_features,)
        gamma = self.param("gamma", nn.initializers.ones, shape)
        beta = self.param("beta", nn.initializers.zeros, shape)
        running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, shape)
        running_var = self.variable("batch_stats", "running_var", jnp.ones, shape)
        Y, mean, var = batch_norm(X, gamma, beta, running_mean.value, running_var.value,
                                  training=train, momentum=self.momentum, eps=self.eps,
                                  unbiased_running_var=self.unbiased_running_var,
                                  use_fast_variance=self.use_fast_variance)
        if train and not self.is_initializing():  # init creates the statistics only
            running_mean.value, running_var.value = mean, var
        return Y


def layer_norm(X, gamma, beta, eps=1e-5):
    """Layer normalization (Ba et al., 2016) from scratch."""
    if X.ndim < 2:
        raise ValueError(f"layer_norm expects a batch of examples, at least 2-D, got "
                         f"shape {tuple(X.shape)}; add a batch axis with X[None].")
    if gamma.shape != X.shape[1:] or beta.shape != X.shape[1:]:
        raise ValueError(f"gamma and beta must have the shape of one example, "
                         f"{tuple(X.shape[1:])}; got {tuple(gamma.shape)} and "
                         f"{tuple(beta.shape)}.")
    axes = tuple(range(1, X.ndim))  # every axis but the batch
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    return gamma * (X - mean) / jnp.sqrt(var + eps) + beta


def group_norm(X, gamma, beta, num_groups, eps=1e-5):
    """Group normalization (Wu & He, 2018): each example's channels (last axis) standardized in
    ``num_groups`` groups of consecutive channels, over a group's channels and locations."""
    if X.ndim < 2 or X.shape[-1] % num_groups != 0:
        raise ValueError(f"group_norm needs a batch whose channels (last axis) split into "
                         f"{num_groups} equal groups; got shape {tuple(X.shape)}. Choose "
                         f"num_groups dividing the number of channels.")
    groups = X.reshape(X.shape[:-1] + (num_groups, X.shape[-1] // num_groups))
    axes = tuple(range(1, X.ndim - 1)) + (X.ndim,)  # every axis but the batch and the group
    mean = groups.mean(axis=axes, keepdims=True)
    var = ((groups - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = ((groups - mean) / jnp.sqrt(var + eps)).reshape(X.shape)
    return gamma * X_hat + beta  # gamma and beta broadcast along the channels, the last axis


# --- Models --------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """Base class of the chapter's classifiers: a Flax module with its loss and optimizer.

    Subclasses define ``__call__(self, X, train: bool = True)``; the variables (``params`` and
    ``batch_stats``) are not part of the module but of the trainer's state.
    """

    lr: float = 0.1
    num_classes: int = 10

    def loss(self, Y_hat: jax.Array, Y: jax.Array, averaged: bool = True) -> jax.Array:
        """Cross-entropy of the logits ``Y_hat`` against the labels ``Y``."""
        losses = optax.softmax_cross_entropy_with_integer_labels(Y_hat, Y)
        return losses.mean() if averaged else losses

    def accuracy(self, Y_hat: jax.Array, Y: jax.Array, averaged: bool = True) -> jax.Array:
        """Fraction (or, not averaged, indicator) of examples whose top logit is the label."""
        correct = (Y_hat.argmax(axis=1) == Y).astype(jnp.float32)
        return correct.mean() if averaged else correct

    def configure_optimizers(self) -> optax.GradientTransformation:
        return optax.sgd(self.lr)

    def apply_init(self, inputs: Sequence[jax.Array], key: jax.Array) -> dict:
        """The model's initial variables, ``{'params': ..., 'batch_stats': ...}``, from one
        forward pass on ``inputs`` (which fixes the input sizes of the dense layers).

        The pass runs with ``train=False``, so the running statistics keep their initial values.
        """
        return self.init(key, *inputs, train=False)


def init_cnn(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Xavier-uniform kernels for convolutions and dense layers (``kernel_init=init_cnn``); their
    biases keep Flax's zeros."""
    return nn.initializers.xavier_uniform()(key, shape, dtype)


# LeNet on 28x28x1 images: 5x5 convolutions without padding ('VALID'; Flax's default
# is 'SAME') and 2x2 pooling give 6@24x24 -> 6@12x12 -> 16@8x8 -> 16@4x4, hence
# 16 * 4 * 4 = 256 inputs to the first dense layer, whose size Flax infers at init.

class BNLeNetScratch(Classifier):
    """LeNet with our BatchNorm before each sigmoid; layers conv1, bn1, ..., fc3."""

    momentum: float = 0.1  # passed to every BatchNorm, so that a clone can change it

    @nn.compact
    def __call__(self, X, train=True):
        norm = partial(BatchNorm, momentum=self.momentum)
        X = nn.Conv(6, (5, 5), padding="VALID", kernel_init=init_cnn,
                    name="conv1")(X)
        X = nn.sigmoid(norm(6, num_dims=4, name="bn1")(X, train))
        X = nn.avg_pool(X, (2, 2), strides=(2, 2))
        X = nn.Conv(16, (5, 5), padding="VALID", kernel_init=init_cnn,
                    name="conv2")(X)
        X = nn.sigmoid(norm(16, num_dims=4, name="bn2")(X, train))
        X = nn.avg_pool(X, (2, 2), strides=(2, 2))
        X = X.reshape((X.shape[0], -1))  # flatten
        X = nn.Dense(120, kernel_init=init_cnn, name="fc1")(X)
        X = nn.sigmoid(norm(120, num_dims=2, name="bn3")(X, train))
        X = nn.Dense(84, kernel_init=init_cnn, name="fc2")(X)
        X = nn.sigmoid(norm(84, num_dims=2, name="bn4")(X, train))
        return nn.Dense(self.num_classes, kernel_init=init_cnn, name="fc3")(X)


class BNLeNet(Classifier):
    """The same LeNet with Flax's own nn.BatchNorm."""

    # For data-parallel training (the page "Batch Normalization Across Devices"): the
    # mapped axis over which the devices pool their batch statistics; None keeps each
    # device's own.
    axis_name: str | None = None

    @nn.compact
    def __call__(self, X, train=True):
        # use_running_average is `not train`; Flax's momentum 0.9 is our 0.1
        norm = partial(nn.BatchNorm, not train, momentum=0.9, axis_name=self.axis_name)
        X = nn.Conv(6, (5, 5), padding="VALID", kernel_init=init_cnn,
                    name="conv1")(X)
        X = nn.sigmoid(norm(name="bn1")(X))
        X = nn.avg_pool(X, (2, 2), strides=(2, 2))
        X = nn.Conv(16, (5, 5), padding="VALID", kernel_init=init_cnn,
                    name="conv2")(X)
        X = nn.sigmoid(norm(name="bn2")(X))
        X = nn.avg_pool(X, (2, 2), strides=(2, 2))
        X = X.reshape((X.shape[0], -1))  # flatten
        X = nn.Dense(120, kernel_init=init_cnn, name="fc1")(X)
        X = nn.sigmoid(norm(name="bn3")(X))
        X = nn.Dense(84, kernel_init=init_cnn, name="fc2")(X)
        X = nn.sigmoid(norm(name="bn4")(X))
        return nn.Dense(self.num_classes, kernel_init=init_cnn, name="fc3")(X)


# --- Data ----------------------------------------------------------------------------------------

class FashionMNIST(_data.FashionMNIST):
    """Fashion-MNIST minibatches as JAX arrays: X float32 (b, 28, 28, 1), y int32 (b,)."""

    layout = "NHWC"

    def to_tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        # JAX arrays rather than numpy (which jit would accept too): one asynchronous transfer
        # for both, to the default device (the trainer's, in fit), so on a GPU the copy overlaps
        # the previous step; y as int32, JAX's default integer type.
        return tuple(jax.device_put((X, y.astype(np.int32))))


# --- Training ------------------------------------------------------------------------------------

class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` (``step``, ``apply_fn``, ``params``, ``tx``, ``opt_state``) plus the
    running statistics of the batch-normalization layers, ``batch_stats``."""

    batch_stats: Any


@partial(jax.jit, static_argnums=0)
def train_step(model: Classifier, state: TrainState, X: jax.Array,
               y: jax.Array) -> tuple[TrainState, jax.Array]:
    """One SGD step in training mode; returns the new state and the minibatch's mean loss."""

    def loss_fn(params):
        # A key per step for models with dropout (d2l_bn's MLP); other models ignore it.
        rngs = {"dropout": jax.random.fold_in(jax.random.PRNGKey(0), state.step)}
        Y_hat, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                        X, train=True, mutable=["batch_stats"], rngs=rngs)
        return model.loss(Y_hat, y), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss


@partial(jax.jit, static_argnums=0)
def eval_step(model: Classifier, variables: dict, X: jax.Array,
              y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed loss and number of correct predictions on a minibatch, in prediction mode."""
    Y_hat = model.apply(variables, X, train=False)
    return (model.loss(Y_hat, y, averaged=False).sum(),
            model.accuracy(Y_hat, y, averaged=False).sum())


def train_epoch(model: Classifier, state: TrainState, loader: Iterable,
                report: Report) -> tuple[TrainState, float]:
    """One pass over ``loader`` in training mode; returns the new state and the mean training
    loss per example.

    The loss is summed on the device and read back once, at the end: a ``float(loss)`` per step
    would make the host wait for the device at every step.
    """
    total, count = jnp.zeros(()), 0
    for X, y in loader:
        state, loss = train_step(model, state, X, y)
        total += loss * len(y)
        count += len(y)
        report.batch_done()
    return state, float(total) / max(count, 1)


def evaluate(model: Classifier, state: TrainState, loader: Iterable) -> tuple[float, float]:
    """Mean loss and accuracy over the whole of ``loader``, in prediction mode."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    loss_sum, correct, count = jnp.zeros(()), jnp.zeros(()), 0
    for X, y in loader:
        batch_loss, batch_correct = eval_step(model, variables, X, y)
        loss_sum += batch_loss
        correct += batch_correct
        count += len(y)
    loss_sum, correct = jax.device_get((loss_sum, correct))  # one host sync
    return float(loss_sum) / max(count, 1), float(correct) / max(count, 1)


@lru_cache(maxsize=16)
def _static_fields(model: Classifier) -> tuple[Callable, optax.GradientTransformation]:
    """``apply_fn`` and ``tx`` of a new TrainState of ``model``: the same objects for equal models.

    ``jax.jit`` looks up its compiled ``train_step`` by the model and by these static fields of the
    state, so a second fit of an equal model (same class and fields) reuses the compiled step
    instead of compiling it again.
    """
    return model.apply, model.configure_optimizers()


def _device(num_gpus: int) -> jax.Device:
    if num_gpus > 0:
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:  # no GPU backend in this JAX
            pass
    return jax.devices("cpu")[0]


class Trainer:
    """Trains a :class:`Classifier` with minibatch SGD and returns its per-epoch history.

    Args:
        max_epochs: passes over the training data.
        num_gpus: 0 trains on the CPU; 1 or more trains on one GPU when JAX has one, and on the
            CPU otherwise (so ``Trainer(max_epochs=10, num_gpus=1)`` runs everywhere; see
            ``trainer.device``). More than one GPU is not used.
        seed: the initial weights come from ``jax.random.PRNGKey(seed)``. With the data's
            ``seed`` fixed too (its shuffling), CPU runs repeat exactly.
        report: ``"auto"`` (a live figure in Jupyter, a progress bar elsewhere), ``"figure"``,
            ``"bar"``, ``"none"``, or a ``d2l_bn.training.Report`` instance.

    ``fit`` initializes the model afresh and keeps its variables in ``trainer.state``, a
    :class:`TrainState` (``trainer.state.params``, ``trainer.state.batch_stats``), updated after
    every training pass. It keeps the history in ``trainer.history`` however training ends: if
    the loss diverges (:class:`TrainingDiverged`) or on Ctrl-C, it holds the epochs completed
    before.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, *, seed: int = 0,
                 report: "str | Report" = "auto"):
        self.max_epochs, self.num_gpus, self.seed, self.report = max_epochs, num_gpus, seed, report
        self.device = _device(num_gpus)
        self.history = History()
        self.state = None

    def fit(self, model: Classifier, data, *,
            after_epoch: Optional[Callable[[int], None]] = None) -> History:
        """Train ``model`` on ``data.train_dataloader()``, evaluating on ``data.val_dataloader()``
        after every epoch. Returns the history (also ``self.history``)."""
        train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
        self.history = History()
        with jax.default_device(self.device):
            # Initialized from one validation example: only its shape matters, one example
            # keeps the shapes of this pass the same for any batch size (so JAX's per-shape
            # caches serve every later fit), and unlike a training batch it draws no shuffle
            # from the data's random generator.
            X, _ = next(iter(val_loader))
            variables = model.apply_init([X[:1]], jax.random.PRNGKey(self.seed))
            apply_fn, tx = _static_fields(model)
            self.state = TrainState.create(apply_fn=apply_fn, params=variables["params"],
                                           batch_stats=variables.get("batch_stats", {}), tx=tx)

            def one_epoch(report: Report) -> float:
                self.state, loss = train_epoch(model, self.state, train_loader, report)
                return loss

            return run_epochs(
                self.history, self.max_epochs, one_epoch,
                lambda: evaluate(model, self.state, val_loader),
                num_batches=len(train_loader) if hasattr(train_loader, "__len__") else None,
                lr=getattr(model, "lr", None), report=self.report,
                after_epoch=after_epoch)

    def evaluate(self, model: Classifier, loader: Iterable) -> tuple[float, float]:
        """Mean loss and accuracy of ``model``, with the variables of ``trainer.state``, over
        ``loader``, in prediction mode: e.g. on the training data,
        ``trainer.evaluate(model, data.get_dataloader(train=True))``."""
        with jax.default_device(self.device):
            return evaluate(model, self.state, loader)


# --- Recomputed statistics (the chapter's "Moving Averages or Recomputed Statistics") ---------

# The chapter shows recompute_statistics; recomputed_val_accuracy is what its training cell calls
# after each epoch. Nothing here changes a state: JAX arrays are immutable, and a new TrainState
# is returned, so the trainer's state, and a training run that measures between its epochs, go
# on exactly as they would have.

def recompute_statistics(model, state, data, num_batches=100):
    """The state, with each BatchNorm's statistics averaged over training batches."""
    batch_stats = state.batch_stats
    batches = data.get_dataloader(train=True, shuffle=False)  # leaves data.rng alone
    for k, (X, _) in zip(range(1, num_batches + 1), batches):
        # training mode, no parameter update; momentum 1/k averages the first k batches
        variables = {"params": state.params, "batch_stats": batch_stats}
        _, updates = model.clone(momentum=1 / k).apply(
            variables, X, train=True, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    return state.replace(batch_stats=batch_stats)


def recomputed_val_accuracy(trainer: Trainer, model: Classifier, data,
                            num_batches: int = 100) -> float:
    """Validation accuracy of ``model`` with the parameters of ``trainer.state`` and running
    statistics recomputed by :func:`recompute_statistics` from ``num_batches`` training
    minibatches, in stored order.

    The trainer's state is left as it was, bit for bit, and ``data.rng`` is not drawn from, so
    a ``trainer.fit`` that calls this from ``after_epoch`` trains exactly as without it. The model
    needs batch-normalization layers with running statistics (the state's ``batch_stats``) and a
    ``momentum`` field that it passes to each of them, as :class:`BNLeNetScratch` has.
    """
    if trainer.state is None:
        raise ValueError("the trainer has no state yet: call trainer.fit(model, data) first "
                         "(or call this from its after_epoch)")
    if not jax.tree_util.tree_leaves(trainer.state.batch_stats):
        raise ValueError(f"{type(model).__name__} has no batch-normalization layer with running "
                         f"statistics: nothing to recompute")
    if "momentum" not in {field.name for field in dataclasses.fields(model)}:
        raise TypeError(f"{type(model).__name__} has no momentum field: recompute_statistics "
                        f"changes the momentum of the model's BatchNorm layers through a "
                        f"field that passes it to them, as BNLeNetScratch has")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    with jax.default_device(trainer.device):
        state = recompute_statistics(model, trainer.state, data, num_batches)
        return evaluate(model, state, data.val_dataloader())[1]


# --- Variants for the exercises (chapters/exercises.md) ------------------------------------------

def batch_norm_variant(X, gamma, beta, running_mean, running_var, *, training,
                       momentum=0.1, eps=1e-5, subtract_mean=True, divide_std=True):
    """batch_norm with either half of the standardization switched off."""
    X, dtype = checked_input(X, gamma, beta, running_mean, running_var, training)
    mean, var, new_mean, new_var = batch_statistics(
        X, running_mean, running_var, training=training, momentum=momentum)
    X_hat = X - mean if subtract_mean else X
    if divide_std:
        X_hat = X_hat / jnp.sqrt(var + eps)
    return (gamma * X_hat + beta).astype(dtype), new_mean, new_var


class BatchNormVariant(nn.Module):
    """:class:`BatchNorm` built on :func:`batch_norm_variant`, with its two options, and
    ``learn_affine=False`` to keep gamma at 1 and beta at 0 (constants, not parameters)."""

    num_features: int
    num_dims: int
    momentum: float = 0.1
    eps: float = 1e-5
    subtract_mean: bool = True
    divide_std: bool = True
    learn_affine: bool = True

    @nn.compact
    def __call__(self, X: jax.Array, train: bool) -> jax.Array:
        shape = (self.num_features,)
        if self.learn_affine:
            gamma = self.param("gamma", nn.initializers.ones, shape)
            beta = self.param("beta", nn.initializers.zeros, shape)
        else:
            gamma, beta = jnp.ones(shape), jnp.zeros(shape)
        running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, shape)
        running_var = self.variable("batch_stats", "running_var", jnp.ones, shape)
        Y, mean, var = batch_norm_variant(
            X, gamma, beta, running_mean.value, running_var.value, training=train,
            momentum=self.momentum, eps=self.eps, subtract_mean=self.subtract_mean,
            divide_std=self.divide_std)
        if train and not self.is_initializing():
            running_mean.value, running_var.value = mean, var
        return Y


class LayerNorm(nn.Module):
    """Layer normalization from scratch, built on :func:`layer_norm`: gamma and beta have the
    shape of one example (e.g. (height, width, channels) after a convolution), found at
    initialization."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, X: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.ones, X.shape[1:])
        beta = self.param("beta", nn.initializers.zeros, X.shape[1:])
        return layer_norm(X, gamma, beta, self.eps)


class GroupNorm(nn.Module):
    """Group normalization from scratch, built on :func:`group_norm`: gamma and beta per
    channel."""

    num_features: int
    num_groups: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, X: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.ones, (self.num_features,))
        beta = self.param("beta", nn.initializers.zeros, (self.num_features,))
        return group_norm(X, gamma, beta, self.num_groups, self.eps)


class NormLeNet(Classifier):
    """LeNet with a normalization of choice after each of its four hidden layers (conv1, conv2,
    fc1, fc2), before the sigmoid; the normalization layers are named ``norm1`` to ``norm4``.

    Attributes:
        norms: one entry per hidden layer: ``'batch'`` (:class:`BatchNormVariant`), ``'layer'``
            (:class:`LayerNorm`) or ``None``. The default, all ``'batch'``, is
            :class:`BNLeNetScratch`.
        bias: whether a convolution or dense layer followed by a normalization has a bias
            (a layer without normalization after it always has one).
        subtract_mean, divide_std, learn_affine: the options of :class:`BatchNormVariant`.
    """

    norms: tuple = ("batch",) * 4
    bias: bool = True
    subtract_mean: bool = True
    divide_std: bool = True
    learn_affine: bool = True

    def _norm(self, i: int, X: jax.Array, train: bool) -> jax.Array:
        kind, name = self.norms[i], f"norm{i + 1}"
        if kind == "batch":
            return BatchNormVariant(X.shape[-1], X.ndim, subtract_mean=self.subtract_mean,
                                    divide_std=self.divide_std, learn_affine=self.learn_affine,
                                    name=name)(X, train)
        if kind == "layer":
            return LayerNorm(name=name)(X)
        if kind is None:
            return X
        raise ValueError(f"a normalization is 'batch', 'layer' or None, got {kind!r}")

    @nn.compact
    def __call__(self, X: jax.Array, train: bool = True) -> jax.Array:
        if len(self.norms) != 4:
            raise ValueError(f"norms needs one entry per hidden layer, 4, got {self.norms!r}")
        bias = [self.bias or kind is None for kind in self.norms]
        X = nn.Conv(6, (5, 5), padding="VALID", use_bias=bias[0], kernel_init=init_cnn,
                    name="conv1")(X)
        X = nn.avg_pool(nn.sigmoid(self._norm(0, X, train)), (2, 2), strides=(2, 2))
        X = nn.Conv(16, (5, 5), padding="VALID", use_bias=bias[1], kernel_init=init_cnn,
                    name="conv2")(X)
        X = nn.avg_pool(nn.sigmoid(self._norm(1, X, train)), (2, 2), strides=(2, 2))
        X = X.reshape((X.shape[0], -1))  # flatten
        X = nn.Dense(120, use_bias=bias[2], kernel_init=init_cnn, name="fc1")(X)
        X = nn.sigmoid(self._norm(2, X, train))
        X = nn.Dense(84, use_bias=bias[3], kernel_init=init_cnn, name="fc2")(X)
        X = nn.sigmoid(self._norm(3, X, train))
        return nn.Dense(self.num_classes, kernel_init=init_cnn, name="fc3")(X)


class MLP(Classifier):
    """A multilayer perceptron on flattened images: each hidden layer is a dense layer, then
    a normalization if ``norm`` is given (``'batch'``: our :class:`BatchNorm`; ``'layer'``:
    :class:`LayerNorm`; ``'group'``: :class:`GroupNorm` with ``num_groups`` groups), a ReLU,
    then dropout with probability ``dropout`` (none at 0; its random keys come from the
    Trainer's ``'dropout'`` stream)."""

    num_hiddens: tuple = (128, 128)
    dropout: float = 0.0
    norm: Optional[str] = None
    num_groups: int = 16

    def _norm(self, X: jax.Array, train: bool) -> jax.Array:
        """A hidden layer's normalization of kind ``self.norm`` applied to X (X for None);
        called from ``__call__``, its layer belongs to the MLP."""
        if self.norm == "batch":
            return BatchNorm(X.shape[-1], num_dims=2)(X, train)
        if self.norm == "layer":
            return LayerNorm()(X)  # gamma and beta of shape (features,), found at init
        if self.norm == "group":
            return GroupNorm(X.shape[-1], self.num_groups)(X)
        if self.norm is None:
            return X
        raise ValueError(f"an MLP's norm is 'batch', 'layer', 'group' or None, "
                         f"got {self.norm!r}")

    @nn.compact
    def __call__(self, X: jax.Array, train: bool = True) -> jax.Array:
        X = X.reshape((X.shape[0], -1))  # flatten
        for outputs in self.num_hiddens:
            X = nn.relu(self._norm(nn.Dense(outputs, kernel_init=init_cnn)(X), train))
            if self.dropout > 0:
                X = nn.Dropout(self.dropout, deterministic=not train)(X)
        return nn.Dense(self.num_classes, kernel_init=init_cnn)(X)
