"""The variants that the exercises build on, one framework at a time: ``batch_norm_variant``,
``BatchNormVariant``, ``NormLeNet`` and ``MLP``.

Each ``tests/test_equivalence_<framework>.py`` imports these with ``from variants import *`` and
gives them its adapter ``fw`` (see tests/equivalence.py), which offers, besides what
equivalence.py uses,
    variant(X, gamma, beta, training, **options)  d2l_bn's batch_norm_variant, running mean 0
                                                  and variance 1: (Y, new_mean, new_var)
    trainable_count(name, **options)              the trainable parameters of d2l_bn's model
                                                  ``name`` built with ``options``
    logits_shape(name, **options)                 the shape of its output on a batch of 4 images

Parameter counts are a framework-free fact of the architecture, so all four frameworks must
report the same numbers.
"""

import numpy as np
import pytest

__all__ = ["test_variant_with_both_halves_is_batch_norm", "test_variant_halves",
           "test_variant_keeps_running_statistics_of_a_non_finite_batch",
           "test_norm_lenet_parameter_counts", "test_mlp_variants_give_logits",
           "test_mlp_rejects_an_unknown_norm"]

RTOL, ATOL = 1e-5, 1e-5
SHAPES = {"dense": (16, 5), "conv": (4, 3, 6, 6)}  # NCHW here; moved to NHWC where needed
# LeNet's four hidden layers: conv1 6 channels of 24x24, conv2 16 of 8x8, fc1 120, fc2 84.
NORMALIZED = [(6, 24 * 24), (16, 8 * 8), (120, 1), (84, 1)]
BN_AFFINE = sum(2 * channels for channels, _ in NORMALIZED)  # gamma and beta: 452
BIASES = sum(channels for channels, _ in NORMALIZED)  # 226
LN_AFFINE = sum(2 * channels * size for channels, size in NORMALIZED)  # one per value: 9368


def batch(fw, shape_name, seed=0):
    rng = np.random.default_rng(seed)
    shape = SHAPES[shape_name]
    C = shape[1]
    per_channel = (1, C) + (1,) * (len(shape) - 2)
    X = (rng.normal(size=shape) * rng.uniform(0.5, 3, per_channel)
         + rng.uniform(-2, 2, per_channel)).astype(np.float32)
    if fw.channel_axis == -1 and X.ndim == 4:
        X = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.uniform(-1, 1, C).astype(np.float32)
    return X, gamma, beta


def channel_stats(fw, X):
    """Per-channel mean and biased variance, shaped to broadcast against X (any layout)."""
    channel = fw.channel_axis % X.ndim
    axes = tuple(a for a in range(X.ndim) if a != channel)
    return (X.mean(axis=axes, dtype=np.float64, keepdims=True),
            X.var(axis=axes, dtype=np.float64, keepdims=True))


def along_channels(fw, t, X):
    shape = [1] * X.ndim
    shape[fw.channel_axis % X.ndim] = -1
    return t.reshape(shape)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape_name", SHAPES)
def test_variant_with_both_halves_is_batch_norm(fw, shape_name, training):
    X, gamma, beta = batch(fw, shape_name)
    Y, new_mean, new_var = fw.variant(X, gamma, beta, training)
    if training:
        mean, var = channel_stats(fw, X)
        np.testing.assert_allclose(Y, fw.batch_norm(X, gamma, beta), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(new_mean, 0.1 * mean.ravel(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(new_var, 0.9 + 0.1 * var.ravel(), rtol=RTOL, atol=ATOL)
    else:  # running mean 0 and variance 1: only the affine map and ε remain
        gamma, beta = along_channels(fw, gamma, X), along_channels(fw, beta, X)
        np.testing.assert_allclose(Y, X * gamma / np.sqrt(1 + 1e-5) + beta, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape_name", SHAPES)
def test_variant_halves(fw, shape_name):
    X, gamma, beta = batch(fw, shape_name)
    mean, var = channel_stats(fw, X)
    gamma_c, beta_c = along_channels(fw, gamma, X), along_channels(fw, beta, X)
    only_scaled, _, _ = fw.variant(X, gamma, beta, True, subtract_mean=False)
    np.testing.assert_allclose(only_scaled, gamma_c * X / np.sqrt(var + 1e-5) + beta_c,
                               rtol=RTOL, atol=ATOL)
    only_centered, _, _ = fw.variant(X, gamma, beta, True, divide_std=False)
    np.testing.assert_allclose(only_centered, gamma_c * (X - mean) + beta_c, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("options", [{}, {"subtract_mean": False}, {"divide_std": False}])
def test_variant_keeps_running_statistics_of_a_non_finite_batch(fw, options):
    """The variant's statistics are batch_norm's (batch_statistics): its guard too."""
    X, gamma, beta = batch(fw, "conv")
    X[0, 0, 0, 0] = np.nan
    Y, new_mean, new_var = fw.variant(X, gamma, beta, True, **options)
    assert np.isnan(Y).any()
    np.testing.assert_array_equal(new_mean, np.zeros(3))
    np.testing.assert_array_equal(new_var, np.ones(3))


def test_norm_lenet_parameter_counts(fw):
    full = fw.trainable_count("BNLeNetScratch")
    assert fw.trainable_count("NormLeNet") == full  # the default is the chapter's model
    assert fw.trainable_count("NormLeNet", bias=False) == full - BIASES
    assert fw.trainable_count("NormLeNet", learn_affine=False) == full - BN_AFFINE
    assert fw.trainable_count("NormLeNet", norms=(None,) * 4) == full - BN_AFFINE
    assert fw.trainable_count("NormLeNet", norms=("layer",) * 4) == full - BN_AFFINE + LN_AFFINE
    assert fw.trainable_count("NormLeNet", norms=("batch", None, None, "batch")) == \
        full - 2 * (16 + 120)
    with pytest.raises(ValueError, match="norms needs one entry per hidden layer"):
        fw.trainable_count("NormLeNet", norms=("batch",) * 3)


@pytest.mark.parametrize("options", [{}, {"dropout": 0.5}, {"norm": "batch"}, {"norm": "layer"},
                                     {"norm": "group"}, {"norm": "group", "num_groups": 8}])
def test_mlp_variants_give_logits(fw, options):
    assert tuple(fw.logits_shape("MLP", **options)) == (4, 10)
    hidden = 128  # the default width of both hidden layers
    base = 784 * hidden + hidden + hidden * hidden + hidden + hidden * 10 + 10
    extra = 2 * (hidden + hidden) if options.get("norm") else 0  # each norm's gamma and beta
    assert fw.trainable_count("MLP", **options) == base + extra


def test_mlp_rejects_an_unknown_norm(fw):
    with pytest.raises(ValueError, match="an MLP's norm is 'batch', 'layer', 'group' or None"):
        fw.trainable_count("MLP", norm="instance")
