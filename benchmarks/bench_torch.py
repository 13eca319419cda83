"""The PyTorch side of benchmarks/steps.py: staged batches, a bare training epoch, one BN step."""

import torch
from torch import nn

from d2l_bn import torch as d2l

FRAMEWORK = "torch"
DEVICE = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
COMPILER = "torch.compile"


def versions() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"


def wait(result) -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def stage(loader) -> list:
    """One epoch of the loader's batches, converted and on the device before any timing."""
    return [(X.to(DEVICE), y.to(DEVICE)) for X, y in loader]


def build(name: str, first_batch) -> d2l.Classifier:
    """The chapter's model ``name``, initialized as the chapter does."""
    model = getattr(d2l, name)(lr=0.1)
    model.apply_init([first_batch[0]], d2l.init_cnn)
    return model


def model_only(model: d2l.Classifier):
    """One epoch as bare PyTorch: SGD steps over staged batches, then the validation forwards;
    no metrics, no report. Returns a callable that runs it."""
    model.to(DEVICE)
    optimizer = model.configure_optimizers()

    def run_epoch(train, val):
        model.train()
        for X, y in train:
            loss = model.loss(model(X), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            outputs = [model(X) for X, _ in val]
        wait(outputs)

    return run_epoch


def lenet_step(name: str, first_batch, compiled: bool):
    """One SGD step of the chapter's LeNet, its forward and backward compiled or not."""
    torch.manual_seed(0)
    model = build(name, first_batch).to(DEVICE).train()
    forward = torch.compile(model) if compiled else model
    optimizer = model.configure_optimizers()

    def step(X, y):
        loss = model.loss(forward(X), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def bn_step(kind: str, shape: tuple, compiled: bool):
    """One training-mode forward and backward pass of a BN layer on a (N, C[, H, W]) input."""
    torch.manual_seed(0)
    num_features = shape[1]
    if kind == "scratch":
        layer = d2l.BatchNorm(num_features, num_dims=len(shape))
    else:
        layer = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(num_features)
    layer.to(DEVICE).train()
    forward = torch.compile(layer) if compiled else layer
    X = torch.randn(shape, device=DEVICE).mul_(2).add_(3).requires_grad_()
    grad_Y = torch.randn(shape, device=DEVICE)

    def step():
        X.grad = None
        layer.zero_grad(set_to_none=True)
        forward(X).backward(grad_Y)
        wait(X.grad)

    return step
