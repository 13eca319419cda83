"""d2l_bn.reference, the float64 yardstick: its backward pass against finite differences, its
statistics against their definitions."""

import numpy as np
import pytest

from d2l_bn import reference

SHAPES = [((6, 4), 1), ((3, 2, 4, 5), 1), ((3, 4, 5, 2), -1)]


def assert_grads_match(loss, args: tuple, grads: tuple) -> None:
    """Each analytic gradient against central differences of ``loss`` in that argument."""
    for i, (arg, grad) in enumerate(zip(args, grads)):
        def in_arg(value, i=i):
            return loss(*args[:i], value, *args[i + 1:])
        np.testing.assert_allclose(grad, finite_difference_grad(in_arg, arg), rtol=1e-6, atol=1e-8)


def finite_difference_grad(f, X: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f at X, one coordinate at a time (error O(h²))."""
    grad = np.zeros_like(X)
    for i in np.ndindex(X.shape):
        step = np.zeros_like(X)
        step[i] = h
        grad[i] = (f(X + step) - f(X - step)) / (2 * h)
    return grad


@pytest.mark.parametrize("shape, channel_axis", SHAPES)
def test_batch_norm_grads_match_finite_differences(shape, channel_axis):
    rng = np.random.default_rng(0)
    X = reference.random_batch(rng, shape, channel_axis).astype(np.float64)
    C = shape[channel_axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    dY = rng.standard_normal(shape)
    stats = np.zeros(C), np.ones(C)

    def loss(X, gamma, beta):  # L = Σ dY · Y, so that ∂L/∂Y = dY
        Y, _, _ = reference.batch_norm(X, gamma, beta, *stats, training=True,
                                       channel_axis=channel_axis)
        return float((dY * Y).sum())

    assert_grads_match(loss, (X, gamma, beta),
                       reference.batch_norm_grads(X, gamma, dY, channel_axis=channel_axis))


@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 3, 4)])
def test_layer_norm_grads_match_finite_differences(shape):
    rng = np.random.default_rng(1)
    X = rng.standard_normal(shape) * 3 + 2
    gamma, beta = rng.uniform(0.5, 2, shape[1:]), rng.standard_normal(shape[1:])
    dY = rng.standard_normal(shape)

    def loss(X, gamma, beta):
        return float((dY * reference.layer_norm(X, gamma, beta)).sum())

    assert_grads_match(loss, (X, gamma, beta), reference.layer_norm_grads(X, gamma, dY))


def test_a_wrong_gradient_formula_would_be_caught():
    # The finite-difference check is sharp enough to see the classic slip of forgetting the
    # term through the variance (dX = γ/σ · (dY - mean(dY))).
    rng = np.random.default_rng(2)
    X = reference.random_batch(rng, (6, 3)).astype(np.float64)
    gamma, dY = np.ones(3), rng.standard_normal((6, 3))
    dX, _, _ = reference.batch_norm_grads(X, gamma, dY)
    sigma = np.sqrt(X.var(axis=0) + 1e-5)
    wrong = gamma / sigma * (dY - dY.mean(axis=0))
    assert np.abs(wrong - dX).max() > 1e-3


@pytest.mark.parametrize("shape, channel_axis", SHAPES)
def test_training_statistics_and_running_update(shape, channel_axis):
    rng = np.random.default_rng(3)
    X = reference.random_batch(rng, shape, channel_axis).astype(np.float64)
    C = shape[channel_axis]
    axes = reference.channel_stats_axes(len(shape), channel_axis)
    running_mean, running_var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    Y, new_mean, new_var = reference.batch_norm(X, np.ones(C), np.zeros(C), running_mean,
                                                running_var, training=True, momentum=0.25,
                                                channel_axis=channel_axis)
    np.testing.assert_allclose(Y.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(Y.var(axis=axes), X.var(axis=axes) / (X.var(axis=axes) + 1e-5))
    np.testing.assert_allclose(new_mean, 0.75 * running_mean + 0.25 * X.mean(axis=axes))
    np.testing.assert_allclose(new_var, 0.75 * running_var + 0.25 * X.var(axis=axes))
    _, _, unbiased = reference.batch_norm(X, np.ones(C), np.zeros(C), running_mean, running_var,
                                          training=True, momentum=0.25, unbiased_running_var=True,
                                          channel_axis=channel_axis)
    np.testing.assert_allclose(unbiased, 0.75 * running_var + 0.25 * X.var(axis=axes, ddof=1))


def test_prediction_uses_running_statistics_and_changes_nothing():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((5, 3))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    Y, new_mean, new_var = reference.batch_norm(X, gamma, beta, mean, var, training=False)
    np.testing.assert_allclose(Y, gamma * (X - mean) / np.sqrt(var + 1e-5) + beta)
    assert new_mean is mean and new_var is var


def test_random_batch_has_the_promised_statistics():
    X = reference.random_batch(np.random.default_rng(5), (4000, 3, 2, 2))
    assert X.dtype == np.float32
    means, stds = X.mean(axis=(0, 2, 3)), X.std(axis=(0, 2, 3))
    assert ((means > 1.9) & (means < 4.1)).all() and ((stds > 0.45) & (stds < 5.2)).all()


def test_rank_other_than_2_or_4_is_rejected():
    with pytest.raises(ValueError, match="2-D .* or 4-D"):
        reference.batch_norm(np.zeros((2, 3, 4)), np.ones(3), np.zeros(3), np.zeros(3),
                             np.ones(3), training=True)
