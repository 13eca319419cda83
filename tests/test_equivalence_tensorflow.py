"""TensorFlow: d2l_bn.tensorflow's scratch layer, keras.layers.BatchNormalization and the float64
reference held to the same checks (tests/equivalence.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from d2l_bn import tensorflow as d2l
from equivalence import *  # noqa: F401,F403  the shared tests, run here in TensorFlow
from page_equivalence import *  # noqa: F401,F403  the page's code against d2l_bn's
from variants import *  # noqa: F401,F403  the exercises' variants, in TensorFlow


class TensorFlowAdapter:
    name, channel_axis = "tensorflow", -1

    def layer(self, kind, C, ndim, gamma, beta, momentum=None, eps=None,
              unbiased_running_var=None):
        if kind == "scratch":
            options = only_given(momentum=momentum, eps=eps,
                                 unbiased_running_var=unbiased_running_var)
            layer = d2l.BatchNorm(C, ndim, **options)
        else:
            assert unbiased_running_var is None, "Keras' running variance is biased"
            # Keras' momentum weights the old average: ours m is its 1 - m.
            options = only_given(momentum=None if momentum is None else 1 - momentum,
                                 epsilon=eps)
            layer = keras.layers.BatchNormalization(**options)
            layer.build((None,) * (ndim - 1) + (C,))
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        return layer

    def step(self, layer, X, dY):
        X = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = layer(X, training=True)
            loss = tf.reduce_sum(Y * dY)
        dX, dgamma, dbeta = tape.gradient(loss, [X, layer.gamma, layer.beta])
        return Y.numpy(), dX.numpy(), dgamma.numpy(), dbeta.numpy()

    def forward(self, layer, X):
        return layer(tf.constant(X), training=True).numpy()

    def predict(self, layer, X):
        return layer(tf.constant(X), training=False).numpy()

    def running(self, layer):
        if isinstance(layer, d2l.BatchNorm):
            return layer.running_mean.numpy(), layer.running_var.numpy()
        return layer.moving_mean.numpy(), layer.moving_variance.numpy()

    def builtin_momentum_and_eps(self):
        layer = keras.layers.BatchNormalization()
        return layer.momentum, layer.epsilon

    def forward_half(self, layer, X, dtype):
        X = tf.cast(tf.constant(X), dtype)
        Y = layer(X, training=True)
        return (tf.cast(Y, tf.float64).numpy(), Y.dtype.name, tf.cast(X, tf.float64).numpy())

    def batch_norm(self, X, gamma, beta):
        C = X.shape[-1]
        Y, _, _ = d2l.batch_norm(tf.constant(X), tf.constant(gamma), tf.constant(beta),
                                 tf.zeros(C), tf.ones(C), training=True)
        return Y.numpy()

    def layer_norm(self, X, gamma, beta):
        return d2l.layer_norm(tf.constant(X), tf.constant(gamma), tf.constant(beta)).numpy()

    def group_norm(self, X, gamma, beta, num_groups):
        return d2l.group_norm(tf.constant(X), tf.constant(gamma), tf.constant(beta),
                              num_groups).numpy()

    def variant(self, X, gamma, beta, training, **options):
        C = X.shape[-1]
        return tuple(t.numpy() for t in d2l.batch_norm_variant(
            tf.constant(X), tf.constant(gamma), tf.constant(beta), tf.zeros(C), tf.ones(C),
            training=training, **options))

    def _model(self, name, **options):
        model = getattr(d2l, name)(**options)
        return model, model(tf.zeros((4, 28, 28, 1)), training=False)

    def trainable_count(self, name, **options):
        model, _ = self._model(name, **options)
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    def logits_shape(self, name, **options):
        return self._model(name, **options)[1].shape

    # The page's teaching code against d2l_bn's (tests/page_equivalence.py)
    d2l = d2l
    d2l_batch_norm = staticmethod(d2l.batch_norm)

    def page_function(self, batch_norm, X, gamma, beta, training, dY):
        C = len(gamma)
        X = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y, mean, var = batch_norm(X, tf.constant(gamma), tf.constant(beta),
                                      tf.fill([C], 0.5), tf.fill([C], 2.0), training=training)
            loss = tf.reduce_sum(Y * dY)
        return (Y.numpy(), tape.gradient(loss, X).numpy(), np.asarray(mean),
                np.asarray(var))

    def page_layer(self, layer_class, C, ndim, X, dY):
        layer = layer_class(C, ndim)
        X = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = layer(X, training=True)
            loss = tf.reduce_sum(Y * dY)
        return (Y.numpy(), tape.gradient(loss, X).numpy(), layer.running_mean.numpy(),
                layer.running_var.numpy(), layer(X, training=False).numpy())

    def page_layer_norm(self, layer_norm, X, gamma, beta, dY):
        X = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = layer_norm(X, tf.constant(gamma), tf.constant(beta))
            loss = tf.reduce_sum(Y * dY)
        return Y.numpy(), tape.gradient(loss, X).numpy()


@pytest.fixture(scope="module")
def fw():
    return TensorFlowAdapter()
