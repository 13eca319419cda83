"""The TensorFlow side of benchmarks/steps.py: staged batches, a bare training epoch, one BN step."""

from functools import partial

import keras
import tensorflow as tf

from d2l_bn import tensorflow as d2l

FRAMEWORK = "tensorflow"
DEVICE = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
COMPILER = "tf.function(jit_compile=True)"


def versions() -> dict:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def device_name() -> str:
    return "cpu" if DEVICE == "/CPU:0" else tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "gpu")


def wait(result) -> None:
    for tensor in tf.nest.flatten(result):
        tensor.numpy()


def stage(loader) -> list:
    """One epoch of the loader's batches, converted and on the device before any timing."""
    with tf.device(DEVICE):
        return [(tf.identity(X), tf.identity(y)) for X, y in loader]


def build(name: str, first_batch) -> d2l.Classifier:
    """The chapter's model ``name`` (Keras initializes the weights when it is first called)."""
    return getattr(d2l, name)(lr=0.1)


def model_only(model: d2l.Classifier):
    """One epoch of the Trainer's compiled steps over staged batches, then the validation
    forwards; no metrics, no report. Returns a callable that runs it."""
    optimizer = model.configure_optimizers()
    train_step = tf.function(partial(d2l.train_step, model, optimizer), jit_compile=True)
    eval_step = tf.function(partial(d2l.eval_step, model), jit_compile=True)

    def run_epoch(train, val):
        with tf.device(DEVICE):
            losses = [train_step(X, y) for X, y in train]
            outputs = [eval_step(X, y) for X, y in val]
        wait((losses[-1], outputs[-1]))

    return run_epoch


def lenet_step(name: str, first_batch, compiled: bool):
    """One SGD step of the chapter's LeNet: the Trainer's XLA-compiled step, or run eagerly."""
    model = build(name, first_batch)
    step = partial(d2l.train_step, model, model.configure_optimizers())
    return tf.function(step, jit_compile=True) if compiled else step


def nhwc(shape: tuple) -> tuple:
    return shape if len(shape) == 2 else (shape[0], shape[2], shape[3], shape[1])


def bn_step(kind: str, shape: tuple, compiled: bool):
    """One training-mode forward and backward pass of a BN layer on a (N, C[, H, W]) input,
    laid out channels-last."""
    shape = nhwc(shape)
    if kind == "scratch":
        layer = d2l.BatchNorm(shape[-1], num_dims=len(shape))
    else:
        layer = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    with tf.device(DEVICE):
        generator = tf.random.Generator.from_seed(0)
        X = generator.normal(shape) * 2 + 3
        grad_Y = generator.normal(shape)
        layer(X, training=False)  # builds the weights

    @tf.autograph.experimental.do_not_convert  # no Python control flow to convert
    def forward_backward(X, grad_Y):
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = layer(X, training=True)
        return tape.gradient(Y, [X] + layer.trainable_variables, output_gradients=grad_Y)

    run = tf.function(forward_backward, jit_compile=True) if compiled else forward_backward

    def step():
        with tf.device(DEVICE):
            wait(run(X, grad_Y)[-1])

    return step
