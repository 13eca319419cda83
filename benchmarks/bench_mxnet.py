"""The MXNet side of benchmarks/steps.py: staged batches, a bare training epoch, one BN step."""

import mxnet as mx
from mxnet import autograd, np, npx
from mxnet.gluon import nn

from d2l_bn import mxnet as d2l

FRAMEWORK = "mxnet"
CTX = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
COMPILER = "hybridize"


def versions() -> dict:
    return {"mxnet": mx.__version__}


def device_name() -> str:
    return str(CTX)


def wait(result) -> None:
    npx.waitall()


def stage(loader) -> list:
    """One epoch of the loader's batches, converted and on the device before any timing."""
    return [(X.as_in_ctx(CTX), y.as_in_ctx(CTX)) for X, y in loader]


def build(name: str, first_batch) -> d2l.Classifier:
    """The chapter's model ``name``, initialized as the chapter does."""
    model = getattr(d2l, name)(lr=0.1)
    model.apply_init([first_batch[0]], d2l.init_cnn)
    return model


def model_only(model: d2l.Classifier):
    """One epoch as bare Gluon: SGD steps over staged batches, then the validation forwards;
    no metrics, no report. Returns a callable that runs it."""
    model.collect_params().reset_ctx(CTX)
    optimizer = model.configure_optimizers()

    def run_epoch(train, val):
        for X, y in train:
            with autograd.record():
                loss = model.loss(model(X), y)
            loss.backward()
            optimizer.step(batch_size=1)
        outputs = [model(X) for X, _ in val]
        wait(outputs)

    return run_epoch


def lenet_step(name: str, first_batch, compiled: bool):
    """One SGD step of the chapter's LeNet, hybridized or not. The scratch LeNet's net is a plain
    Sequential, whose hybridize() reaches each layer: the Hybridized graphs of our BatchNorm
    too, so not compiled, its batch_norm runs operation by operation."""
    model = build(name, first_batch)
    model.net.hybridize(active=compiled)
    optimizer = model.configure_optimizers()

    def step(X, y):
        with autograd.record():
            loss = model.loss(model(X), y)
        loss.backward()
        optimizer.step(batch_size=1)
        return loss

    return step


def bn_step(kind: str, shape: tuple, compiled: bool):
    """One training-mode forward and backward pass of a BN layer on a (N, C[, H, W]) input. Our
    BatchNorm is a Block whose hybridize() reaches its Hybridized graphs: not compiled, its
    batch_norm runs operation by operation, as the shipped layer's graphs would without it."""
    num_features = shape[1]
    if kind == "scratch":
        layer = d2l.BatchNorm(num_features, num_dims=len(shape))
    else:
        layer = nn.BatchNorm(momentum=0.9, epsilon=1e-5, in_channels=num_features)
    layer.initialize(ctx=CTX)
    if compiled:
        layer.hybridize(static_alloc=True, static_shape=True)
    else:
        layer.hybridize(active=False)
    mx.random.seed(0)
    X = np.random.normal(3, 2, size=shape, ctx=CTX)
    grad_Y = np.random.normal(size=shape, ctx=CTX)
    X.attach_grad()

    def step():
        with autograd.record():
            Y = layer(X)
        Y.backward(grad_Y)
        wait(X.grad)

    return step
