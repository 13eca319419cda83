"""PyTorch: d2l_bn.torch's scratch layer, torch.nn.BatchNorm1d/2d and the float64 reference held to
the same checks (tests/equivalence.py)."""

import numpy as np
import pytest
import torch
from torch import nn

from d2l_bn import torch as d2l
from equivalence import *  # noqa: F401,F403  the shared tests, run here in PyTorch
from page_equivalence import *  # noqa: F401,F403  the page's code against d2l_bn's
from variants import *  # noqa: F401,F403  the exercises' variants, in PyTorch


class TorchAdapter:
    name, channel_axis = "torch", 1

    def layer(self, kind, C, ndim, gamma, beta, momentum=None, eps=None,
              unbiased_running_var=None):
        options = only_given(momentum=momentum, eps=eps)
        if kind == "scratch":
            layer = d2l.BatchNorm(C, ndim, unbiased_running_var=bool(unbiased_running_var),
                                  **options)
            affine = layer.gamma, layer.beta
        else:
            assert unbiased_running_var is None, "nn.BatchNorm*d's running variance is unbiased"
            layer = (nn.BatchNorm1d if ndim == 2 else nn.BatchNorm2d)(C, **options)
            affine = layer.weight, layer.bias
        with torch.no_grad():
            affine[0].copy_(torch.as_tensor(gamma))
            affine[1].copy_(torch.as_tensor(beta))
        return layer

    def _affine(self, layer):
        # our layers (d2l_bn's and the page's) name them gamma and beta, nn.BatchNorm*d not
        return (layer.gamma, layer.beta) if hasattr(layer, "gamma") \
            else (layer.weight, layer.bias)

    def step(self, layer, X, dY):
        layer.train()
        layer.zero_grad()
        X = torch.tensor(X, requires_grad=True)
        Y = layer(X)
        (Y * torch.as_tensor(dY)).sum().backward()
        gamma, beta = self._affine(layer)
        return Y.detach().numpy(), X.grad.numpy(), gamma.grad.numpy(), beta.grad.numpy()

    def forward(self, layer, X):
        layer.train()
        with torch.no_grad():
            return layer(torch.as_tensor(X)).numpy()

    def predict(self, layer, X):
        layer.eval()
        with torch.no_grad():
            return layer(torch.as_tensor(X)).numpy()

    def running(self, layer):
        return layer.running_mean.numpy().copy(), layer.running_var.numpy().copy()

    def builtin_momentum_and_eps(self):
        layer = nn.BatchNorm2d(3)
        return layer.momentum, layer.eps

    def forward_half(self, layer, X, dtype):
        X = torch.as_tensor(X).to(getattr(torch, dtype))
        layer.train()
        with torch.no_grad():
            Y = layer(X)
        return Y.double().numpy(), str(Y.dtype).removeprefix("torch."), X.double().numpy()

    def batch_norm(self, X, gamma, beta):
        C = X.shape[1]
        Y, _, _ = d2l.batch_norm(torch.as_tensor(X), torch.as_tensor(gamma),
                                 torch.as_tensor(beta), torch.zeros(C), torch.ones(C),
                                 training=True)
        return Y.numpy()

    def layer_norm(self, X, gamma, beta):
        return d2l.layer_norm(torch.as_tensor(X), torch.as_tensor(gamma),
                              torch.as_tensor(beta)).numpy()

    def group_norm(self, X, gamma, beta, num_groups):
        return d2l.group_norm(torch.as_tensor(X), torch.as_tensor(gamma),
                              torch.as_tensor(beta), num_groups).numpy()

    def variant(self, X, gamma, beta, training, **options):
        C = X.shape[1]
        return tuple(t.numpy() for t in d2l.batch_norm_variant(
            torch.as_tensor(X), torch.as_tensor(gamma), torch.as_tensor(beta), torch.zeros(C),
            torch.ones(C), training=training, **options))

    def _model(self, name, **options):
        model = getattr(d2l, name)(**options)
        model.eval()
        with torch.no_grad():
            return model, model(torch.zeros(4, 1, 28, 28))

    def trainable_count(self, name, **options):
        model, _ = self._model(name, **options)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def logits_shape(self, name, **options):
        return self._model(name, **options)[1].shape

    # The page's teaching code against d2l_bn's (tests/page_equivalence.py)
    d2l = d2l
    d2l_batch_norm = staticmethod(d2l.batch_norm)

    def page_function(self, batch_norm, X, gamma, beta, training, dY):
        C = len(gamma)
        X = torch.tensor(X, requires_grad=True)
        Y, mean, var = batch_norm(X, torch.as_tensor(gamma), torch.as_tensor(beta),
                                  torch.full((C,), 0.5), torch.full((C,), 2.0),
                                  training=training)
        (Y * torch.as_tensor(dY)).sum().backward()
        return Y.detach().numpy(), X.grad.numpy(), mean.numpy(), var.numpy()

    def page_layer(self, layer_class, C, ndim, X, dY):
        layer = layer_class(C, ndim)
        Y, dX, _, _ = self.step(layer, X, dY)
        running_mean, running_var = self.running(layer)
        return Y, dX, running_mean, running_var, self.predict(layer, X)

    def page_layer_norm(self, layer_norm, X, gamma, beta, dY):
        X = torch.tensor(X, requires_grad=True)
        Y = layer_norm(X, torch.as_tensor(gamma), torch.as_tensor(beta))
        (Y * torch.as_tensor(dY)).sum().backward()
        return Y.detach().numpy(), X.grad.numpy()


@pytest.fixture(scope="module")
def fw():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait for each other
    yield TorchAdapter()
    torch.set_num_threads(threads)
