"""The page's teaching code ≡ d2l_bn's hardened code, one framework at a time.

The chapter shows `batch_norm`, `BatchNorm` and `layer_norm` as plain array code; d2l_bn ships
them with input checks, half precision, non-finite batches and (MXNet) a compiled graph. These
tests run the page's own cells (tests/page_code.py) and d2l_bn's functions on the same random
input and hold them to equivalence.py's stated float32 tolerance: the output, the input gradient
and the new running statistics, in training and in prediction mode, for a dense (2-D) and a
convolutional (4-D) input; for the layers, one training step and then prediction.

Each tests/test_equivalence_<framework>.py imports these with ``from page_equivalence import *``;
its adapter ``fw`` adds
    page_function(batch_norm, X, gamma, beta, training, dY)   (Y, dX, new_mean, new_var); the
                                       running statistics going in are 0.5 and 2.0 per channel
    page_layer(layer_class, C, ndim, X, dY)                     (Y, dX, running_mean,
                                       running_var, Y in prediction mode) after one training step
    page_layer_norm(layer_norm, X, gamma, beta, dY)             (Y, dX)
    d2l_batch_norm                     d2l_bn's batch_norm, called as the page's is
"""

import numpy as np
import pytest

import page_code
from d2l_bn import reference
from equivalence import SHAPES, check, conditioning, native_shape

__all__ = ["page", "test_page_batch_norm_is_d2l_batch_norm", "test_page_layer_is_d2l_layer",
           "test_page_layer_norm_is_d2l_layer_norm", "test_page_code_is_plain"]


@pytest.fixture(scope="module")
def page(fw):
    return page_code.namespace(fw.name)


def case(fw, kind: str):
    shape = native_shape(fw, SHAPES[kind])
    X, dY = reference.random_case(shape, seed=3, channel_axis=fw.channel_axis)
    C = shape[fw.channel_axis]
    gamma = np.linspace(0.5, 2.0, C, dtype=np.float32)
    beta = np.linspace(-1.0, 1.0, C, dtype=np.float32)
    return X, dY, C, gamma, beta


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("kind", SHAPES)
def test_page_batch_norm_is_d2l_batch_norm(fw, page, kind, training):
    X, dY, _, gamma, beta = case(fw, kind)
    kappa = conditioning(X, fw.channel_axis)
    shown = fw.page_function(page["batch_norm"], X, gamma, beta, training, dY)
    shipped = fw.page_function(fw.d2l_batch_norm, X, gamma, beta, training, dY)
    for what, actual, expected in zip(("Y", "dX", "new running mean", "new running var"),
                                      shown, shipped):
        check(fw, f"page batch_norm, {kind}, {what}", actual, expected, kappa)


@pytest.mark.parametrize("kind", SHAPES)
def test_page_layer_is_d2l_layer(fw, page, kind):
    X, dY, C, _, _ = case(fw, kind)
    kappa = conditioning(X, fw.channel_axis)
    ndim = len(SHAPES[kind])
    shown = fw.page_layer(page["BatchNorm"], C, ndim, X, dY)
    shipped = fw.page_layer(fw.d2l.BatchNorm, C, ndim, X, dY)
    for what, actual, expected in zip(("Y", "dX", "running mean", "running var",
                                       "prediction-mode Y"), shown, shipped):
        check(fw, f"page BatchNorm, {kind}, {what}", actual, expected, kappa)


@pytest.mark.parametrize("kind", SHAPES)
def test_page_layer_norm_is_d2l_layer_norm(fw, page, kind):
    X, dY, _, _, _ = case(fw, kind)
    rng = np.random.default_rng(4)
    gamma = rng.uniform(0.5, 2.0, X.shape[1:]).astype(np.float32)
    beta = rng.uniform(-1.0, 1.0, X.shape[1:]).astype(np.float32)
    # per example, the layer normalizes over all of its values
    kappa = 1 + float(np.max(np.abs(X.reshape(len(X), -1).mean(axis=1))
                             / X.reshape(len(X), -1).std(axis=1)))
    shown = fw.page_layer_norm(page["layer_norm"], X, gamma, beta, dY)
    shipped = fw.page_layer_norm(fw.d2l.layer_norm, X, gamma, beta, dY)
    for what, actual, expected in zip(("Y", "dX"), shown, shipped):
        check(fw, f"page layer_norm, {kind}, {what}", actual, expected, kappa)


def test_page_code_is_plain(fw):
    """The page's versions call none of d2l_bn's guards: those live in d2l_bn only."""
    sources = "\n".join(page_code.code_cells("batch-norm", fw.name))
    for guard in ("checked_input", "finite_or_old", "check_layer_input", "checked_num_dims",
                  "check_num_dims", "checked_layer_input", "checked_context",
                  "unbiased_running_var", "use_fast_variance"):
        assert guard not in sources, f"the chapter's {fw.name} code calls {guard}"
