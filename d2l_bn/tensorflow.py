"""TensorFlow (Keras 3) code for the Batch Normalization chapter: the layer from scratch, LeNet with
it, training.

Import it as the book does, ``from d2l_bn import tensorflow as d2l``; never run this file as a
script (a file named ``tensorflow.py`` first on the path would hide the real ``tensorflow``).

Images are channels-last, (batch, height, width, channels), as Keras expects: the channel axis is
the LAST one here, where it is axis 1 in ``d2l_bn.torch``.
"""

from ._require import require

require("tensorflow")

import inspect  # noqa: E402
from functools import partial  # noqa: E402
from typing import Callable, Iterable, Optional  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from . import data as _data  # noqa: E402
from .plotting import plot_curves, plot_shared_statistics  # noqa: E402,F401 (the chapter)
from .training import History, Report, TrainingDiverged, run_epochs  # noqa: E402

__all__ = ["batch_statistics", "batch_norm", "BatchNorm", "layer_norm", "Classifier",
           "BNLeNetScratch", "BNLeNet",
           "FashionMNIST", "Trainer", "History", "TrainingDiverged",
           "recompute_statistics", "recomputed_val_accuracy",
           # for the exercises
           "batch_norm_variant", "BatchNormVariant", "LayerNorm", "group_norm", "GroupNorm",
           "NormLeNet", "MLP"]


# --- Batch normalization from scratch ------------------------------------------------------------
# The chapter shows batch_norm, BatchNorm and layer_norm as plain teaching code; these are the
# same mathematics hardened, with checks of the input, half precision and a guard against
# non-finite batches in the helpers below. tests/page_equivalence.py holds the two equal.

def checked_input(X: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, running_mean: tf.Tensor,
                  running_var: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.DType]:
    """The checks of :func:`batch_norm`'s arguments, with errors that say what to do; returns
    ``X``, in float32 if it is float16 or bfloat16, and the dtype of the output, float32 then, as
    Keras' layer gives under its default float32 policy.

    Static shapes only: looking at values would make the host wait for the device at every step.
    """
    if not isinstance(X, tf.Tensor):
        raise TypeError(f"batch_norm expects a tf.Tensor, got {type(X).__name__}; convert "
                        f"it with tf.convert_to_tensor(X, dtype=tf.float32)")
    if not X.dtype.is_floating:
        raise TypeError(f"batch_norm expects a floating-point tensor, got {X.dtype.name}; "
                        f"convert it with tf.cast(X, tf.float32)")
    if X.ndim not in (2, 4):
        raise ValueError(
            f"batch_norm expects a 2-D input (batch, features), as after a fully connected layer, "
            f"or a 4-D input (batch, height, width, channels), as after a convolution; got shape "
            f"{tuple(X.shape)}. Flatten the input first (e.g. layers.Flatten()) or add the "
            f"missing axes.")
    num_channels = gamma.shape[0] if len(gamma.shape) == 1 else None
    if num_channels != X.shape[-1]:
        raise ValueError(
            f"the input has {X.shape[-1]} features/channels on its last axis but gamma has shape "
            f"{tuple(gamma.shape)}: gamma, beta and the running statistics must have shape "
            f"({X.shape[-1]},); build the layer with num_features={X.shape[-1]}.")
    n = X.shape[:-1].num_elements()  # None while the batch size is unknown (Keras' symbolic pass)
    if training and n is not None and n < 2:
        raise ValueError(
            f"batch statistics are undefined with {n} value per channel "
            f"(input shape {tuple(X.shape)}, e.g. a batch of one after a fully connected layer): "
            f"train with batches of at least 2, or switch to prediction mode (call the model "
            f"with training=False) to normalize with the running statistics.")
    for name, t in (("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if tuple(t.shape) != tuple(gamma.shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, gamma {tuple(gamma.shape)}: "
                             f"all four must have shape ({X.shape[-1]},)")
    if X.dtype in (tf.float16, tf.bfloat16):
        X = tf.cast(X, tf.float32)  # statistics in float16 would lose the mean's digits
    return X, X.dtype


def finite_or_old(new: tuple, old: tuple) -> tuple:
    """``new`` (the new running statistics) if every value in it is finite, else ``old``.

    A batch with a NaN or an infinity gives a non-finite output, as it must, but leaves the
    running statistics as they were instead of poisoning every later prediction (Keras' layer
    lets it in); the Trainer reports the non-finite loss at the end of the epoch. Decided on the
    device, inside ``tf.function`` too: the host does not wait for the device to look.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in new])
    return tuple(tf.where(finite, t_new, t_old) for t_new, t_old in zip(new, old))


def batch_statistics(X, running_mean, running_var, *, training, momentum=0.1,
                     unbiased_running_var=False):
    """The mean and variance to normalize X with, and the new running statistics."""
    if not training:
        return running_mean, running_var, running_mean, running_var
    axes = (0,) if X.ndim == 2 else (0, 1, 2)  # every axis but the last, the channels
    mean = tf.reduce_mean(X, axis=axes)
    var = tf.reduce_mean(tf.square(X - mean), axis=axes)
    n = tf.cast(tf.size(X) // tf.shape(X)[-1], X.dtype)  # values per channel
    var_for_running = var * (n / (n - 1)) if unbiased_running_var else var
    new_mean = (1 - momentum) * running_mean + momentum * tf.stop_gradient(mean)
    new_var = ((1 - momentum) * running_var
               + momentum * tf.stop_gradient(var_for_running))
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
    X_hat = (X - mean) / tf.sqrt(var + eps)  # channels last: (C,) broadcasts as is
    Y = gamma * X_hat + beta
    return tf.cast(Y, dtype), new_mean, new_var


def checked_num_dims(num_dims: int) -> int:
    """``num_dims`` of :class:`BatchNorm`, which must be 2 or 4."""
    if num_dims not in (2, 4):
        raise ValueError(f"num_dims must be 2 (after a fully connected layer) or 4 (after a "
                         f"convolution), got {num_dims!r}")
    return num_dims


def checked_layer_input(X: tf.Tensor, num_dims: int) -> tf.Tensor:
    """``X``, the input of a :class:`BatchNorm` built with ``num_dims``, which must be its rank."""
    if isinstance(X, tf.Tensor) and X.ndim != num_dims:
        raise ValueError(f"this BatchNorm was built with num_dims={num_dims} but got a "
                         f"{X.ndim}-D input of shape {tuple(X.shape)}: use "
                         f"num_dims=2 after a fully connected layer, 4 after a convolution.")
    return X


def init_config(layer: layers.Layer) -> dict:
    """``get_config`` of a layer that keeps each argument of its constructor in an attribute of
    the same name: Keras' own configuration (name, dtype, ...) and those arguments, which Keras
    saves with a model and passes back to the constructor to make the layer again."""
    parameters = inspect.signature(type(layer).__init__).parameters.values()
    names = [p.name for p in parameters if p.name != "self"
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {**layers.Layer.get_config(layer), **{name: getattr(layer, name) for name in names}}


class BatchNorm(layers.Layer):
    """Batch normalization layer from scratch, built on batch_norm; channels last."""

    def __init__(self, num_features, num_dims, *, momentum=0.1, eps=1e-5,
                 unbiased_running_var=False, **kwargs):
        super().__init__(**kwargs)
        self.num_features, self.num_dims = num_features, checked_num_dims(num_dims)
        self.momentum, self.eps = momentum, eps
        self.unbiased_running_var = unbiased_running_var
        shape = (num_features,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        # Not trainable: the optimizer leaves them alone, but the model saves them.
        self.running_mean = self.add_weight(shape=shape, initializer="zeros",
                                            trainable=False, name="running_mean")
        self.running_var = self.add_weight(shape=shape, initializer="ones",
                                           trainable=False, name="running_var")

    def call(self, inputs, training=None):  # Keras passes model(X, training=...) down
        X = checked_layer_input(inputs, self.num_dims)
        Y, mean, var = batch_norm(X, self.gamma, self.beta, self.running_mean,
                                  self.running_var, training=bool(training),
                                  momentum=self.momentum, eps=self.eps,
                                  unbiased_running_var=self.unbiased_running_var)
        if training:
            self.running_mean.assign(mean)
            self.running_var.assign(var)
        return Y

    get_config = init_config  # the constructor's arguments, which Keras saves


def layer_norm(X, gamma, beta, eps=1e-5):
    """Layer normalization (Ba et al., 2016): each example on its own."""
    if X.ndim < 2:
        raise ValueError(f"layer_norm expects a batch of examples, at least 2-D, got "
                         f"shape {tuple(X.shape)}; add a batch axis with X[None].")
    shape = tuple(X.shape[1:])  # of one example
    if tuple(gamma.shape) != shape or tuple(beta.shape) != shape:
        raise ValueError(f"gamma and beta must have the shape of one example, {shape}; "
                         f"got {tuple(gamma.shape)} and {tuple(beta.shape)}.")
    axes = tuple(range(1, X.ndim))
    mean = tf.reduce_mean(X, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.square(X - mean), axis=axes, keepdims=True)
    return gamma * (X - mean) / tf.sqrt(var + eps) + beta


def group_norm(X, gamma, beta, num_groups, eps=1e-5):
    """Group normalization (Wu & He, 2018): each example's channels (last axis) standardized in
    ``num_groups`` groups of consecutive channels, over a group's channels and locations."""
    if X.ndim < 2 or X.shape[-1] % num_groups != 0:
        raise ValueError(f"group_norm needs a batch whose channels (last axis) split into "
                         f"{num_groups} equal groups; got shape {tuple(X.shape)}. Choose "
                         f"num_groups dividing the number of channels.")
    # (..., num_groups, channels per group); tf.shape, as the batch size may be unknown
    groups = tf.reshape(X, tf.concat([tf.shape(X)[:-1],
                                      [num_groups, X.shape[-1] // num_groups]], axis=0))
    axes = tuple(range(1, X.ndim - 1)) + (X.ndim,)  # all but the example and the group
    mean = tf.reduce_mean(groups, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.square(groups - mean), axis=axes, keepdims=True)
    X_hat = tf.reshape((groups - mean) / tf.sqrt(var + eps), tf.shape(X))
    return gamma * X_hat + beta  # channels last: (C,) broadcasts as is


# --- Models --------------------------------------------------------------------------------------

class Classifier(keras.Model):
    """Base class of the chapter's classifiers: a network ``self.net``, its loss and optimizer.

    There is no ``apply_init`` or ``init_cnn`` as in ``d2l_bn.torch``: Keras already initializes
    the kernels of ``Conv2D`` and ``Dense`` Xavier-uniform (``glorot_uniform``), biases at zero.
    """

    def __init__(self, lr: float):
        super().__init__()
        # keras.Model.__init__ sets self.loss = None, the slot that compile() fills. We never
        # compile (the Trainer below is the training loop), so drop it: the method shows through.
        del self.loss
        self.lr = lr

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.net(X, training=training)

    def loss(self, Y_hat: tf.Tensor, Y: tf.Tensor, averaged: bool = True) -> tf.Tensor:
        """Cross-entropy of the logits ``Y_hat`` against the labels ``Y``."""
        losses = keras.losses.sparse_categorical_crossentropy(Y, Y_hat, from_logits=True)
        return tf.reduce_mean(losses) if averaged else losses

    def accuracy(self, Y_hat: tf.Tensor, Y: tf.Tensor, averaged: bool = True) -> tf.Tensor:
        """Fraction (or, not averaged, indicator) of examples whose top logit is the label."""
        correct = tf.cast(tf.argmax(Y_hat, axis=1) == tf.cast(Y, tf.int64), tf.float32)
        return tf.reduce_mean(correct) if averaged else correct

    def configure_optimizers(self) -> keras.optimizers.Optimizer:
        # Keras refuses an int learning rate, which the other frameworks take (lr=1).
        return keras.optimizers.SGD(learning_rate=float(self.lr))


# LeNet on 28x28x1 images: 5x5 convolutions without padding and 2x2 pooling give
# 24x24@6 -> 12x12@6 -> 8x8@16 -> 4x4@16, hence 4 * 4 * 16 = 256 inputs to the first
# dense layer. keras.Input gives the input shape, so Keras builds every layer, weights
# included, as soon as the model exists.
_INPUT_SHAPE = (28, 28, 1)


class BNLeNetScratch(Classifier):
    """LeNet with our BatchNorm after each convolution and hidden dense layer."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(lr)
        self.num_classes = num_classes
        self.net = keras.Sequential([
            keras.Input(shape=_INPUT_SHAPE),
            layers.Conv2D(6, kernel_size=5), BatchNorm(6, num_dims=4),
            layers.Activation("sigmoid"), layers.AvgPool2D(pool_size=2, strides=2),
            layers.Conv2D(16, kernel_size=5), BatchNorm(16, num_dims=4),
            layers.Activation("sigmoid"), layers.AvgPool2D(pool_size=2, strides=2),
            layers.Flatten(), layers.Dense(120), BatchNorm(120, num_dims=2),
            layers.Activation("sigmoid"),
            layers.Dense(84), BatchNorm(84, num_dims=2), layers.Activation("sigmoid"),
            layers.Dense(num_classes)])


class BNLeNet(Classifier):
    """The same LeNet with Keras' own layers.BatchNormalization."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(lr)
        self.num_classes = num_classes
        bn = dict(momentum=0.9, epsilon=1e-5)  # our defaults, in Keras' terms
        self.net = keras.Sequential([
            keras.Input(shape=_INPUT_SHAPE),
            layers.Conv2D(6, kernel_size=5), layers.BatchNormalization(**bn),
            layers.Activation("sigmoid"), layers.AvgPool2D(pool_size=2, strides=2),
            layers.Conv2D(16, kernel_size=5), layers.BatchNormalization(**bn),
            layers.Activation("sigmoid"), layers.AvgPool2D(pool_size=2, strides=2),
            layers.Flatten(), layers.Dense(120), layers.BatchNormalization(**bn),
            layers.Activation("sigmoid"),
            layers.Dense(84), layers.BatchNormalization(**bn),
            layers.Activation("sigmoid"),
            layers.Dense(num_classes)])


# --- Data ----------------------------------------------------------------------------------------

class FashionMNIST(_data.FashionMNIST):
    """Fashion-MNIST minibatches as tf tensors: X float32 (b, 28, 28, 1), y int64 (b,)."""

    layout = "NHWC"

    def to_tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.convert_to_tensor(X), tf.convert_to_tensor(y)


# --- Training ------------------------------------------------------------------------------------

def train_step(model: Classifier, optimizer: keras.optimizers.Optimizer, X: tf.Tensor,
               y: tf.Tensor) -> tf.Tensor:
    """One SGD step on the minibatch ``(X, y)``; returns its mean loss. The Trainer compiles it
    with ``tf.function``.

    ``training=True`` is the point: it is what puts every batch-normalization layer (ours and
    Keras') in training mode, normalizing with the batch statistics and updating the running
    ones. Called as ``model(X)``, Keras would run them in prediction mode.
    """
    with tf.GradientTape() as tape:
        loss = model.loss(model(X, training=True), y)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss


def eval_step(model: Classifier, X: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Summed loss and number of correct predictions on ``(X, y)``, in prediction mode."""
    Y_hat = model(X, training=False)
    return (tf.reduce_sum(model.loss(Y_hat, y, averaged=False)),
            tf.reduce_sum(model.accuracy(Y_hat, y, averaged=False)))


def train_epoch(step: Callable, loader: Iterable, report: Report) -> float:
    """One pass over ``loader`` with the compiled ``step``; returns the mean training loss per
    example.

    The losses stay on the device and are summed once, at the end: a ``float(loss)`` per step
    would make the host wait for the device at every step, and even an eager ``total += loss``
    costs about 1 ms per step on a CPU (5% of a LeNet step), as each eager op is dispatched alone.
    """
    losses, sizes = [], []
    for X, y in loader:
        losses.append(step(X, y))
        sizes.append(len(y))
        report.batch_done()
    if not losses:
        return 0.0
    total = tf.tensordot(tf.stack(losses), tf.constant(sizes, losses[0].dtype), 1)
    return float(total) / sum(sizes)


def evaluate(step: Callable, loader: Iterable) -> tuple[float, float]:
    """Mean loss and accuracy over the whole of ``loader``, with the compiled ``eval_step``."""
    loss_sum, correct, count = tf.zeros(()), tf.zeros(()), 0
    for X, y in loader:
        batch_loss, batch_correct = step(X, y)  # summed loss, number correct
        loss_sum, correct = loss_sum + batch_loss, correct + batch_correct  # on the device
        count += len(y)
    loss_sum, correct = tf.stack([loss_sum, correct]).numpy()  # one host sync
    return float(loss_sum) / max(count, 1), float(correct) / max(count, 1)


class Trainer:
    """Trains a :class:`Classifier` with minibatch SGD and returns its per-epoch history.

    A plain loop rather than ``model.fit``: each training step is a ``tf.function`` that calls the
    model with ``training=True`` (see :func:`train_step`), evaluation calls it with
    ``training=False``.

    Args:
        max_epochs: passes over the training data.
        num_gpus: 0 trains on the CPU; 1 or more trains on one GPU when TensorFlow sees one, and
            on the CPU otherwise (so ``Trainer(max_epochs=10, num_gpus=1)`` runs everywhere; see
            ``trainer.device``). More than one GPU is not used.
        seed: if given, ``keras.utils.set_random_seed(seed)`` at the start of :meth:`fit`, for
            randomness during training, and on a GPU ``tf.config.experimental.
            enable_op_determinism()`` (for the whole process), without which its kernels may sum
            in a different order each run. The initial weights come from the model's
            construction, so for a reproducible run also call ``keras.utils.set_random_seed``
            before building the model and fix the data's ``seed`` (its shuffling); then runs
            repeat exactly.
        report: ``"auto"`` (a live figure in Jupyter, a progress bar elsewhere), ``"figure"``,
            ``"bar"``, ``"none"``, or a ``d2l_bn.training.Report`` instance.
        jit_compile: compile the steps with XLA (the default), which fuses the many small
            operations of a batch-normalization layer into fewer, faster ones. XLA compiles anew
            for every model that ``fit`` trains, in a fixed time that a short run does not earn
            back: for many runs of a few hundred steps each, ``False`` is faster.

    ``fit`` keeps the history in ``trainer.history`` however training ends: if the loss diverges
    (:class:`TrainingDiverged`) or on Ctrl-C, it holds the epochs completed before.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, *, seed: Optional[int] = None,
                 report: "str | Report" = "auto", jit_compile: bool = True):
        self.max_epochs, self.num_gpus, self.seed, self.report = max_epochs, num_gpus, seed, report
        self.jit_compile = jit_compile
        use_gpu = num_gpus > 0 and bool(tf.config.list_physical_devices("GPU"))
        self.device = "/GPU:0" if use_gpu else "/CPU:0"
        self.history = History()

    def fit(self, model: Classifier, data, *,
            after_epoch: Optional[Callable[[int], None]] = None) -> History:
        """Train ``model`` on ``data.train_dataloader()``, evaluating on ``data.val_dataloader()``
        after every epoch. Returns the history (also ``self.history``)."""
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
            if self.device != "/CPU:0":
                tf.config.experimental.enable_op_determinism()
        optimizer = model.configure_optimizers()
        train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
        # With XLA, each new batch shape (the last, partial batch) compiles once more.
        compiled_train_step = tf.function(partial(train_step, model, optimizer),
                                          jit_compile=self.jit_compile)
        compiled_eval_step = tf.function(partial(eval_step, model), jit_compile=self.jit_compile)
        self.history = History()
        with tf.device(self.device):
            return run_epochs(
                self.history, self.max_epochs,
                partial(train_epoch, compiled_train_step, train_loader),
                partial(evaluate, compiled_eval_step, val_loader),
                num_batches=len(train_loader) if hasattr(train_loader, "__len__") else None,
                lr=getattr(model, "lr", None), report=self.report,
                after_epoch=after_epoch)

    def evaluate(self, model: Classifier, loader: Iterable) -> tuple[float, float]:
        """Mean loss and accuracy of ``model`` over ``loader``, in prediction mode: e.g. on the
        training data, ``trainer.evaluate(model, data.get_dataloader(train=True))``."""
        with tf.device(self.device):
            return evaluate(tf.function(partial(eval_step, model), jit_compile=self.jit_compile),
                            loader)


# --- Recomputed statistics (the chapter's "Moving Averages or Recomputed Statistics") ---------

def recompute_statistics(model, data, num_batches=100):
    """Set each BatchNorm's running statistics to their mean over training batches."""
    layers = [layer for layer in model.net.layers if hasattr(layer, 'running_mean')]
    momenta = [layer.momentum for layer in layers]
    batches = data.get_dataloader(train=True, shuffle=False)
    for k, (X, _) in zip(range(1, num_batches + 1), batches):
        for layer in layers:
            layer.momentum = 1 / k  # makes the running average the mean of k batches
        model(X, training=True)  # no gradient step: only the statistics change
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def recomputed_val_accuracy(trainer: Trainer, model: Classifier, data,
                            num_batches: int = 100) -> float:
    """Validation accuracy of ``model`` with the running statistics of its scratch batch-norm
    layers recomputed by :func:`recompute_statistics` from ``num_batches`` training minibatches.

    The model is left exactly as it was: its running statistics (and the layers' momentum) are
    saved before and written back after, bit for bit, and nothing else of it changes (no
    gradient, no update). The training batches are served in stored order, drawing nothing from
    ``data.rng``, so this may run between epochs of ``trainer.fit`` (as its ``after_epoch``)
    without changing the training run.
    """
    layers = [layer for layer in model.net.layers if hasattr(layer, "running_mean")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no batch-normalization layer with running "
                         f"statistics: nothing to recompute")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    saved = [(layer, layer.momentum, layer.running_mean.numpy().copy(),
              layer.running_var.numpy().copy()) for layer in layers]
    try:
        with tf.device(trainer.device):
            recompute_statistics(model, data, num_batches)
        return trainer.evaluate(model, data.val_dataloader())[1]
    finally:
        for layer, momentum, mean, var in saved:
            layer.momentum = momentum
            layer.running_mean.assign(mean)
            layer.running_var.assign(var)


# --- Variants for the exercises (chapters/exercises.md) ------------------------------------------

def batch_norm_variant(X, gamma, beta, running_mean, running_var, *, training,
                       momentum=0.1, eps=1e-5, subtract_mean=True, divide_std=True):
    """batch_norm with either half of the standardization switched off."""
    X, dtype = checked_input(X, gamma, beta, running_mean, running_var, training)
    mean, var, new_mean, new_var = batch_statistics(
        X, running_mean, running_var, training=training, momentum=momentum)
    X_hat = X - mean if subtract_mean else X
    if divide_std:
        X_hat = X_hat / tf.sqrt(var + eps)
    Y = gamma * X_hat + beta
    return tf.cast(Y, dtype), new_mean, new_var


class BatchNormVariant(layers.Layer):
    """:class:`BatchNorm` built on :func:`batch_norm_variant`, with its two options, and
    ``learn_affine=False`` to keep gamma at 1 and beta at 0 (non-trainable weights)."""

    def __init__(self, num_features: int, num_dims: int, *, momentum: float = 0.1,
                 eps: float = 1e-5, subtract_mean: bool = True, divide_std: bool = True,
                 learn_affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_features, self.num_dims, self.momentum, self.eps = (
            num_features, num_dims, momentum, eps)
        self.subtract_mean, self.divide_std = subtract_mean, divide_std
        shape = (num_features,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", trainable=learn_affine,
                                     name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", trainable=learn_affine,
                                    name="beta")
        self.running_mean = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                            name="running_mean")
        self.running_var = self.add_weight(shape=shape, initializer="ones", trainable=False,
                                           name="running_var")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        training = bool(training)
        Y, mean, var = batch_norm_variant(
            inputs, self.gamma, self.beta, self.running_mean, self.running_var,
            training=training, momentum=self.momentum, eps=self.eps,
            subtract_mean=self.subtract_mean, divide_std=self.divide_std)
        if training:
            self.running_mean.assign(mean)
            self.running_var.assign(var)
        return Y


class LayerNorm(layers.Layer):
    """Layer normalization from scratch, built on :func:`layer_norm`: gamma and beta have the
    shape of one example (e.g. (height, width, channels) after a convolution), found when the
    layer is built."""

    def __init__(self, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps

    def build(self, input_shape) -> None:
        shape = tuple(input_shape[1:])
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return layer_norm(inputs, self.gamma, self.beta, self.eps)


class GroupNorm(layers.Layer):
    """Group normalization from scratch, built on :func:`group_norm`: gamma and beta per
    channel."""

    def __init__(self, num_features: int, num_groups: int, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_features, self.num_groups, self.eps = num_features, num_groups, eps
        shape = (num_features,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return group_norm(inputs, self.gamma, self.beta, self.num_groups, self.eps)

    get_config = init_config  # the constructor's arguments, which Keras saves


def _norm(kind: Optional[str], num_features: int, num_dims: int, **options) -> list:
    """The normalization layer of a kind, in a list (empty for None)."""
    if kind == "batch":
        return [BatchNormVariant(num_features, num_dims, **options)]
    if kind == "layer":
        return [LayerNorm()]
    if kind is None:
        return []
    raise ValueError(f"a normalization is 'batch', 'layer' or None, got {kind!r}")


def _mlp_norm(kind: Optional[str], num_features: int, num_groups: int) -> list:
    """The normalization layer of an MLP's hidden layer of a kind, in a list (empty for None)."""
    if kind == "batch":
        return [BatchNorm(num_features, num_dims=2)]
    if kind == "layer":
        return [LayerNorm()]  # gamma and beta of shape (num_features,), found when built
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
        self.net = keras.Sequential([
            keras.Input(shape=_INPUT_SHAPE),
            layers.Conv2D(6, kernel_size=5, use_bias=has_bias[0]),
            *_norm(norms[0], 6, 4, **options),
            layers.Activation("sigmoid"), layers.AvgPool2D(pool_size=2, strides=2),
            layers.Conv2D(16, kernel_size=5, use_bias=has_bias[1]),
            *_norm(norms[1], 16, 4, **options),
            layers.Activation("sigmoid"), layers.AvgPool2D(pool_size=2, strides=2),
            layers.Flatten(), layers.Dense(120, use_bias=has_bias[2]),
            *_norm(norms[2], 120, 2, **options), layers.Activation("sigmoid"),
            layers.Dense(84, use_bias=has_bias[3]), *_norm(norms[3], 84, 2, **options),
            layers.Activation("sigmoid"), layers.Dense(num_classes)])


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
        blocks = [keras.Input(shape=_INPUT_SHAPE), layers.Flatten()]
        for outputs in num_hiddens:
            blocks.append(layers.Dense(outputs))
            blocks += _mlp_norm(norm, outputs, num_groups)
            blocks.append(layers.Activation("relu"))
            if dropout > 0:
                blocks.append(layers.Dropout(dropout))
        self.net = keras.Sequential([*blocks, layers.Dense(num_classes)])
