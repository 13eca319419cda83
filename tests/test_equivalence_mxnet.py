"""MXNet: d2l_bn.mxnet's scratch layer, mxnet.gluon.nn.BatchNorm and the float64 reference held to
the same checks (tests/equivalence.py)."""

import numpy as onp
import pytest
import mxnet as mx
from mxnet import autograd, np, npx
from mxnet.gluon import nn

from d2l_bn import mxnet as d2l
from equivalence import *  # noqa: F401,F403  the shared tests, run here in MXNet
from page_equivalence import *  # noqa: F401,F403  the page's code against d2l_bn's
from variants import *  # noqa: F401,F403  the exercises' variants, in MXNet

npx.set_np()


class MXNetAdapter:
    name, channel_axis = "mxnet", 1

    def layer(self, kind, C, ndim, gamma, beta, momentum=None, eps=None,
              unbiased_running_var=None):
        if kind == "scratch":
            options = only_given(momentum=momentum, eps=eps,
                                 unbiased_running_var=unbiased_running_var)
            layer = d2l.BatchNorm(C, ndim, **options)
        else:
            assert unbiased_running_var is None, "Gluon's running variance is biased"
            # Gluon's momentum weights the old average: ours m is its 1 - m.
            options = only_given(momentum=None if momentum is None else 1 - momentum,
                                 epsilon=eps)
            layer = nn.BatchNorm(in_channels=C, **options)
        layer.initialize()
        layer.gamma.set_data(np.array(gamma))
        layer.beta.set_data(np.array(beta))
        return layer

    def step(self, layer, X, dY):
        X = np.array(X)
        X.attach_grad()
        with autograd.record():
            Y = layer(X)
            loss = (Y * np.array(dY)).sum()
        loss.backward()
        return (Y.asnumpy(), X.grad.asnumpy(), layer.gamma.grad().asnumpy(),
                layer.beta.grad().asnumpy())

    def forward(self, layer, X):
        with autograd.record():  # training mode; no backward
            return layer(np.array(X)).asnumpy()

    def predict(self, layer, X):
        return layer(np.array(X)).asnumpy()

    def running(self, layer):
        return layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy()

    def builtin_momentum_and_eps(self):
        layer = nn.BatchNorm()
        return layer._kwargs["momentum"], layer._kwargs["eps"]

    def forward_half(self, layer, X, dtype):
        X = np.array(X, dtype=dtype)
        with autograd.record():
            Y = layer(X)
        return Y.asnumpy().astype(onp.float64), str(Y.dtype), X.asnumpy().astype(onp.float64)

    def batch_norm(self, X, gamma, beta):
        C = X.shape[1]
        Y, _, _ = d2l.batch_norm(mx.nd, np.array(X), np.array(gamma), np.array(beta),
                                 np.zeros(C), np.ones(C), training=True)
        return Y.asnumpy()

    def layer_norm(self, X, gamma, beta):
        return d2l.layer_norm(np.array(X), np.array(gamma), np.array(beta)).asnumpy()

    def group_norm(self, X, gamma, beta, num_groups):
        return d2l.group_norm(np.array(X), np.array(gamma), np.array(beta),
                              num_groups).asnumpy()

    def variant(self, X, gamma, beta, training, **options):
        C = X.shape[1]
        return tuple(t.asnumpy() for t in d2l.batch_norm_variant(
            mx.nd, np.array(X), np.array(gamma), np.array(beta), np.zeros(C), np.ones(C),
            training=training, **options))

    def _model(self, name, **options):
        model = getattr(d2l, name)(**options)
        model.initialize()
        return model, model(np.zeros((4, 1, 28, 28)))

    def trainable_count(self, name, **options):
        model, _ = self._model(name, **options)
        return sum(p.data().size for p in model.collect_params().values()
                   if p.grad_req != "null")

    def logits_shape(self, name, **options):
        return self._model(name, **options)[1].shape

    # The page's teaching code against d2l_bn's (tests/page_equivalence.py)
    d2l = d2l

    @staticmethod
    def d2l_batch_norm(*args, **options):
        return d2l.batch_norm(mx.nd, *args, **options)  # run as written, not compiled

    def page_function(self, batch_norm, X, gamma, beta, training, dY):
        C = len(gamma)
        X = np.array(X)
        X.attach_grad()
        with autograd.record(train_mode=training):
            Y, mean, var = batch_norm(X, np.array(gamma), np.array(beta), np.full((C,), 0.5),
                                      np.full((C,), 2.0), training=training)
            loss = (Y * np.array(dY)).sum()
        loss.backward()
        return Y.asnumpy(), X.grad.asnumpy(), mean.asnumpy(), var.asnumpy()

    def page_layer(self, layer_class, C, ndim, X, dY):
        layer = layer_class(C, ndim)
        layer.initialize()
        Y, dX, _, _ = self.step(layer, X, dY)
        return (Y, dX, layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy(),
                layer(np.array(X)).asnumpy())

    def page_layer_norm(self, layer_norm, X, gamma, beta, dY):
        X = np.array(X)
        X.attach_grad()
        with autograd.record():
            Y = layer_norm(X, np.array(gamma), np.array(beta))
            loss = (Y * np.array(dY)).sum()
        loss.backward()
        return Y.asnumpy(), X.grad.asnumpy()


@pytest.fixture(scope="module")
def fw():
    return MXNetAdapter()
