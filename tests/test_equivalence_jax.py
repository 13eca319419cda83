"""JAX: d2l_bn.jax's scratch layer, flax.linen.BatchNorm and the float64 reference held to the same
checks (tests/equivalence.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from d2l_bn import jax as d2l
from equivalence import *  # noqa: F401,F403  the shared tests, run here in JAX
from page_equivalence import *  # noqa: F401,F403  the page's code against d2l_bn's
from variants import *  # noqa: F401,F403  the exercises' variants, in JAX


class Layer:
    """A Flax module and its variables: the state that PyTorch keeps inside the module."""

    def __init__(self, module, variables, scratch: bool):
        self.module, self.variables, self.scratch = module, variables, scratch
        self.affine = ("gamma", "beta") if scratch else ("scale", "bias")
        self.stats = ("running_mean", "running_var") if scratch else ("mean", "var")

    def apply(self, variables, X, train: bool):
        mode = {"train": train} if self.scratch else {"use_running_average": not train}
        if train:
            return self.module.apply(variables, X, mutable=["batch_stats"], **mode)
        return self.module.apply(variables, X, **mode), {}


class JaxAdapter:
    name, channel_axis = "jax", -1

    def layer(self, kind, C, ndim, gamma, beta, momentum=None, eps=None,
              unbiased_running_var=None, use_fast_variance=None):
        if kind == "scratch":
            options = only_given(momentum=momentum, eps=eps,
                                 unbiased_running_var=unbiased_running_var,
                                 use_fast_variance=use_fast_variance)
            module = d2l.BatchNorm(C, ndim, **options)
            variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2,) * (ndim - 1) + (C,)),
                                    train=False)
        else:
            assert unbiased_running_var is None, "Flax's running variance is biased"
            # Flax's momentum weights the old average: ours m is its 1 - m.
            options = only_given(momentum=None if momentum is None else 1 - momentum,
                                 epsilon=eps, use_fast_variance=use_fast_variance)
            module = nn.BatchNorm(**options)
            variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2,) * (ndim - 1) + (C,)),
                                    use_running_average=True)
        layer = Layer(module, variables, kind == "scratch")
        layer.variables["params"] = {layer.affine[0]: jnp.asarray(gamma),
                                     layer.affine[1]: jnp.asarray(beta)}
        return layer

    def step(self, layer, X, dY):
        def loss(X, params):
            Y, updates = layer.apply({**layer.variables, "params": params}, X, train=True)
            return (Y * dY).sum(), (Y, updates)

        (_, (Y, updates)), (dX, dparams) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            jnp.asarray(X), layer.variables["params"])
        layer.variables = {**layer.variables, **updates}
        return (np.asarray(Y), np.asarray(dX), np.asarray(dparams[layer.affine[0]]),
                np.asarray(dparams[layer.affine[1]]))

    def forward(self, layer, X):
        Y, updates = layer.apply(layer.variables, jnp.asarray(X), train=True)
        layer.variables = {**layer.variables, **updates}
        return np.asarray(Y)

    def predict(self, layer, X):
        return np.asarray(layer.apply(layer.variables, jnp.asarray(X), train=False)[0])

    def running(self, layer):
        stats = layer.variables["batch_stats"]
        return np.asarray(stats[layer.stats[0]]), np.asarray(stats[layer.stats[1]])

    def builtin_momentum_and_eps(self):
        layer = nn.BatchNorm()
        return layer.momentum, layer.epsilon

    def forward_half(self, layer, X, dtype):
        X = jnp.asarray(X).astype(getattr(jnp, dtype))
        Y = self.forward(layer, X)
        return Y.astype(np.float64), str(Y.dtype), np.asarray(X.astype(jnp.float64)
                                                             if jax.config.x64_enabled
                                                             else X.astype(jnp.float32),
                                                             np.float64)

    def batch_norm(self, X, gamma, beta):
        C = X.shape[-1]
        Y, _, _ = d2l.batch_norm(jnp.asarray(X), jnp.asarray(gamma), jnp.asarray(beta),
                                 jnp.zeros(C), jnp.ones(C), training=True)
        return np.asarray(Y)

    def layer_norm(self, X, gamma, beta):
        return np.asarray(d2l.layer_norm(jnp.asarray(X), jnp.asarray(gamma), jnp.asarray(beta)))

    def group_norm(self, X, gamma, beta, num_groups):
        return np.asarray(d2l.group_norm(jnp.asarray(X), jnp.asarray(gamma), jnp.asarray(beta),
                                         num_groups))

    def variant(self, X, gamma, beta, training, **options):
        C = X.shape[-1]
        return tuple(np.asarray(t) for t in d2l.batch_norm_variant(
            jnp.asarray(X), jnp.asarray(gamma), jnp.asarray(beta), jnp.zeros(C), jnp.ones(C),
            training=training, **options))

    def _model(self, name, **options):
        model = getattr(d2l, name)(**options)
        X = jnp.zeros((4, 28, 28, 1))
        variables = model.init(jax.random.PRNGKey(0), X, train=False)
        return variables, model.apply(variables, X, train=False)

    def trainable_count(self, name, **options):
        variables, _ = self._model(name, **options)
        return sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables["params"]))

    def logits_shape(self, name, **options):
        return self._model(name, **options)[1].shape

    # The page's teaching code against d2l_bn's (tests/page_equivalence.py)
    d2l = d2l
    d2l_batch_norm = staticmethod(d2l.batch_norm)

    def page_function(self, batch_norm, X, gamma, beta, training, dY):
        C = len(gamma)
        (Y, mean, var), pullback = jax.vjp(lambda X: batch_norm(
            X, jnp.asarray(gamma), jnp.asarray(beta), jnp.full((C,), 0.5),
            jnp.full((C,), 2.0), training=training), jnp.asarray(X))
        dX, = pullback((jnp.asarray(dY), jnp.zeros_like(mean), jnp.zeros_like(var)))
        return np.asarray(Y), np.asarray(dX), np.asarray(mean), np.asarray(var)

    def page_layer(self, layer_class, C, ndim, X, dY):
        layer = layer_class(C, ndim)
        X = jnp.asarray(X)
        variables = layer.init(jax.random.PRNGKey(0), X, train=False)
        Y, pullback, updates = jax.vjp(
            lambda X: layer.apply(variables, X, train=True, mutable=["batch_stats"]), X,
            has_aux=True)
        dX, = pullback(jnp.asarray(dY))
        stats = updates["batch_stats"]
        predicted = layer.apply({**variables, **updates}, X, train=False)
        return tuple(np.asarray(a) for a in (Y, dX, stats["running_mean"],
                                             stats["running_var"], predicted))

    def page_layer_norm(self, layer_norm, X, gamma, beta, dY):
        Y, pullback = jax.vjp(lambda X: layer_norm(X, jnp.asarray(gamma), jnp.asarray(beta)),
                              jnp.asarray(X))
        dX, = pullback(jnp.asarray(dY))
        return np.asarray(Y), np.asarray(dX)


@pytest.fixture(scope="module")
def fw():
    return JaxAdapter()
