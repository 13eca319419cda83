"""TensorFlow across two CPU devices: ``tf.distribute.MirroredStrategy`` over logical CPUs.

TensorFlow needs no worker processes: one process splits its CPU into ``num_devices`` logical
devices (:func:`cpu_strategy`), and ``MirroredStrategy`` keeps a copy of every variable on each
and runs a step on all of them at once (``strategy.run``), adding up the gradients with an
all-reduce, as DDP does. The logical devices must be set before TensorFlow first computes
anything, so in a notebook :func:`cpu_strategy` comes first, and the tests run each experiment in
a fresh Python process.

Keras' own ``layers.BatchNormalization(synchronized=True)`` computes the global batch statistics
with a differentiable all-reduce; :func:`synchronize_batch_norm` switches it on in ``BNLeNet``.
Per-device (unsynchronized) layers leave the copies of the moving statistics apart: each device
updates its own copy with its own batch (the variables' aggregation is ``NONE``), and whatever
reads them outside ``strategy.run``, evaluation or saving, sees device 0's.
"""

from .._require import require

require("tensorflow")

from functools import partial  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from . import ShardedBatches  # noqa: E402
from .. import tensorflow as d2l  # noqa: E402

__all__ = ["cpu_strategy", "synchronize_batch_norm", "data_parallel_step",
           "train_data_parallel"]


# --- The devices ---------------------------------------------------------------------------------

_strategies: dict = {}  # num_devices -> its strategy, made once per process


def cpu_strategy(num_devices: int = 2) -> tf.distribute.MirroredStrategy:
    """A ``MirroredStrategy`` over ``num_devices`` logical CPUs, "/cpu:0" to
    "/cpu:{num_devices - 1}", which this call creates if TensorFlow has not started yet.

    Once TensorFlow has computed anything its devices are fixed: with fewer logical CPUs than
    asked for this raises RuntimeError (restart the process and call it first). The same
    ``num_devices`` gives the same strategy: a second one over the same devices would number
    its all-reduces from the start again, and they would meet the first one's in the devices'
    shared collective state ("Shape mismatch in the collective instance")."""
    if num_devices < 1:
        raise ValueError(f"num_devices must be positive, got {num_devices}")
    if num_devices in _strategies:
        return _strategies[num_devices]
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError as error:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have < num_devices:
            raise RuntimeError(
                f"TensorFlow has already started with {have} logical CPU device(s), and its "
                f"devices cannot change afterwards, so {num_devices} cannot be made: restart the "
                f"kernel (or Python process) and call cpu_strategy({num_devices}) first, before "
                f"any TensorFlow computation") from error
    # The strategy logs a line at INFO level for every all-reduce it builds: dozens per
    # experiment, printed into a notebook's output. Warnings and errors still show.
    tf.get_logger().setLevel("WARNING")
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{k}" for k in range(num_devices)])
    _strategies[num_devices] = strategy
    return strategy


# --- The synchronized layer ----------------------------------------------------------------------

def synchronize_batch_norm(model):
    """Swap every layers.BatchNormalization in model.net for a synchronized one."""
    # Keras fixes `synchronized` when it makes a layer, so we make new layers from
    # the old ones' configurations and swap them in with pop and add, as Keras changes
    # a Sequential: a new network assigned to model.net would leave the old one's
    # weights in the model. Inside strategy.scope(), the new variables are mirrored.
    net = model.net
    input_shape = net.input_shape
    stack = [net.pop(rebuild=False) for _ in range(len(net.layers))][::-1]
    swapped = []
    for layer in stack:
        if isinstance(layer, layers.BatchNormalization):
            synced = layers.BatchNormalization.from_config(
                {**layer.get_config(), "synchronized": True})
            swapped.append((layer, synced))
            layer = synced
        net.add(layer, rebuild=False)
    net.build(input_shape)  # builds the new layers; the others keep their weights
    for old, new in swapped:
        new.set_weights(old.get_weights())
    return model


# --- What the devices do -------------------------------------------------------------------------

def _model(strategy: tf.distribute.Strategy, synchronized: bool, seed: int,
           lr: float = 0.1) -> d2l.BNLeNet:
    with strategy.scope():  # every variable gets one copy per device, all starting equal
        keras.utils.set_random_seed(seed)  # the initial weights, as d2l_bn.tensorflow seeds them
        model = d2l.BNLeNet(lr)
        return synchronize_batch_norm(model) if synchronized else model


def _distribute(strategy: tf.distribute.Strategy, *arrays: np.ndarray) -> list:
    """Per-device values: device ``k`` gets the ``k``-th equal slice of each global array."""
    per_device = len(arrays[0]) // strategy.num_replicas_in_sync

    def my_slice(array: np.ndarray, context: tf.distribute.experimental.ValueContext):
        k = context.replica_id_in_sync_group
        return tf.constant(array[k * per_device:(k + 1) * per_device])

    return [strategy.experimental_distribute_values_from_function(partial(my_slice, a))
            for a in arrays]


def _per_device(strategy: tf.distribute.Strategy, value) -> np.ndarray:
    """A per-device value (or mirrored variable) as numpy, with a leading device axis."""
    return np.stack([np.asarray(v) for v in strategy.experimental_local_results(value)])


def data_parallel_step(X: np.ndarray, y: np.ndarray, *, synchronized: bool, num_devices: int = 2,
                       seed: int = 0) -> dict:
    """One training-mode forward and backward pass of a fresh ``BNLeNet`` (seed ``seed``) on the
    global batch ``X, y`` (NHWC) split over ``num_devices`` logical CPUs (:func:`cpu_strategy`),
    device ``k`` taking the ``k``-th equal slice.

    Returns numpy arrays: ``outputs``, the logits in the batch's order; ``grad``, the first
    convolution's kernel gradient averaged over the devices, as DDP averages it; and per device
    (first axis), ``batch_mean`` and ``batch_var``, the statistics of the first BN layer's input
    on its slice, and ``running_mean``, that layer's moving mean after the step (each device's
    own copy). No gradient is applied."""
    if len(X) % num_devices:
        raise ValueError(f"a batch of {len(X)} does not split evenly over {num_devices} devices")
    strategy = cpu_strategy(num_devices)
    model = _model(strategy, synchronized, seed)
    conv, first_bn = model.net.layers[0], model.net.layers[1]
    k = next(i for i, v in enumerate(model.trainable_variables) if v is conv.kernel)

    def step(X: tf.Tensor, y: tf.Tensor) -> dict:  # on each device, its own slice
        with tf.GradientTape() as tape:
            # Keras has no forward hooks: run the Sequential's layers one by one, as its call
            # does, keeping the first BN layer's input on the way.
            H = X
            for layer in model.net.layers:
                if layer is first_bn:
                    conv_output = H
                H = layer(H, training=True)
            loss = model.loss(H, y)
        gradients = tape.gradient(loss, model.trainable_variables)
        gradients = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, gradients)  # what DDP does to the gradients
        mean, var = tf.nn.moments(conv_output, axes=[0, 1, 2])  # var is the biased one
        return {"outputs": H, "grad": gradients[k], "batch_mean": mean, "batch_var": var}

    X_dist, y_dist = _distribute(strategy, X, y)
    results = tf.function(lambda X, y: strategy.run(step, args=(X, y)))(X_dist, y_dist)
    per_device = {key: _per_device(strategy, value) for key, value in results.items()}
    return {"outputs": np.concatenate(per_device["outputs"]),
            "grad": per_device["grad"][0],
            "batch_mean": per_device["batch_mean"], "batch_var": per_device["batch_var"],
            "running_mean": _per_device(strategy, first_bn.moving_mean.value)}


def train_data_parallel(*, per_device: int, num_steps: int, skewed: bool, synchronized: bool,
                        num_devices: int = 2, seed: int = 0, lr: float = 0.1) -> dict:
    """Train a fresh ``BNLeNet`` for ``num_steps`` SGD steps on Fashion-MNIST, each device taking
    ``per_device`` examples per step from its own shard (class-skewed or a random split), with
    per-device (``synchronized=False``) or global batch statistics. Returns the mean training
    loss (over all devices' examples), and the validation loss and accuracy in prediction mode
    with device 0's moving statistics (those a saved model keeps; per-device layers leave each
    device with its own)."""
    strategy = cpu_strategy(num_devices)
    data = d2l.FashionMNIST(batch_size=256)
    model = _model(strategy, synchronized, seed, lr)
    with strategy.scope():
        optimizer = model.configure_optimizers()
        optimizer.build(model.trainable_variables)
    batches = ShardedBatches(*data.train, per_device=per_device, num_devices=num_devices,
                             num_steps=num_steps, skewed=skewed, layout="NHWC", seed=seed)

    def step(X: tf.Tensor, y: tf.Tensor) -> tf.Tensor:  # on each device, its own slice
        with tf.GradientTape() as tape:
            loss = model.loss(model(X, training=True), y)
            # The optimizer adds up the devices' gradients (an all-reduce SUM): dividing each
            # device's loss by their number makes that sum the mean, as DDP averages.
            scaled = loss / strategy.num_replicas_in_sync
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def distributed_step(X, y) -> tf.Tensor:
        losses = strategy.run(step, args=(X, y))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    losses = [distributed_step(*_distribute(strategy, X, y)) for X, y in batches]
    with tf.device("/cpu:0"):  # outside strategy.run a mirrored variable reads this device's copy
        val_loss, val_acc = d2l.evaluate(
            tf.function(partial(d2l.eval_step, model), jit_compile=True), data.val_dataloader())
    return {"train_loss": float(tf.reduce_mean(tf.stack(losses))), "val_loss": val_loss,
            "val_acc": val_acc}
