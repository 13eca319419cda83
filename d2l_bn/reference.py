"""Batch and layer normalization in float64 NumPy: the yardstick the four frameworks are held to.

Framework-free and written for clarity, not speed: the forward pass in training and prediction,
the running-statistics update, and the backward pass derived by hand (checked against finite
differences in the tests). ``channel_axis`` is 1 for PyTorch's and MXNet's (N, C, H, W) and -1
for JAX's and TensorFlow's (N, H, W, C); a 2-D input is (N, C) either way.

The running-statistics update uses d2l_bn's convention: ``momentum`` is the weight of the new
batch. ``unbiased_running_var=True`` feeds it the unbiased batch variance, as PyTorch does.
"""

import numpy as np

__all__ = ["batch_norm", "batch_norm_grads", "layer_norm", "layer_norm_grads", "group_norm",
           "random_batch", "channel_stats_axes", "random_case", "training_step", "report"]


def channel_stats_axes(ndim: int, channel_axis: int = 1) -> tuple[int, ...]:
    """The axes batch norm averages over: every axis but the channel axis."""
    if ndim not in (2, 4):
        raise ValueError(f"batch norm takes a 2-D (N, C) or 4-D input, got {ndim}-D")
    channel = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != channel)


def _per_channel(t: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """A (C,) array shaped to broadcast along the channel axis."""
    return np.expand_dims(np.asarray(t, np.float64), axes)


def batch_norm(X, gamma, beta, running_mean, running_var, *, training: bool,
               momentum: float = 0.1, eps: float = 1e-5, unbiased_running_var: bool = False,
               channel_axis: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(Y, new_running_mean, new_running_var)``, all float64, as d2l_bn's batch_norm."""
    X = np.asarray(X, np.float64)
    axes = channel_stats_axes(X.ndim, channel_axis)
    running_mean = np.asarray(running_mean, np.float64)
    running_var = np.asarray(running_var, np.float64)
    if training:
        mean = X.mean(axis=axes)
        var = ((X - _per_channel(mean, axes)) ** 2).mean(axis=axes)
        n = X.size // X.shape[channel_axis]
        var_for_running = var * n / (n - 1) if unbiased_running_var else var
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var_for_running
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    X_hat = (X - _per_channel(mean, axes)) / np.sqrt(_per_channel(var, axes) + eps)
    Y = _per_channel(gamma, axes) * X_hat + _per_channel(beta, axes)
    return Y, new_mean, new_var


def batch_norm_grads(X, gamma, dY, *, eps: float = 1e-5, channel_axis: int = 1
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dX, dgamma, dbeta)`` of training-mode batch norm, given ``dY`` = ∂L/∂Y.

    With x̂ = (x - μ) / σ, σ = sqrt(var + eps), and m the number of values per channel, the chain
    rule through μ and var (both functions of every x in the channel) gives

        dX = γ / σ · (dY - mean(dY) - x̂ · mean(dY · x̂)),  dγ = Σ dY · x̂,  dβ = Σ dY,

    means and sums taken per channel over the m values.
    """
    X, dY = np.asarray(X, np.float64), np.asarray(dY, np.float64)
    axes = channel_stats_axes(X.ndim, channel_axis)
    mean = X.mean(axis=axes, keepdims=True)
    sigma = np.sqrt(((X - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    X_hat = (X - mean) / sigma
    g = _per_channel(gamma, axes)
    dX = g / sigma * (dY - dY.mean(axis=axes, keepdims=True)
                      - X_hat * (dY * X_hat).mean(axis=axes, keepdims=True))
    return dX, (dY * X_hat).sum(axis=axes), dY.sum(axis=axes)


def layer_norm(X, gamma, beta, eps: float = 1e-5) -> np.ndarray:
    """Each example standardized over all its non-batch axes; gamma, beta of shape X.shape[1:]."""
    X = np.asarray(X, np.float64)
    axes = tuple(range(1, X.ndim))
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    return np.asarray(gamma, np.float64) * (X - mean) / np.sqrt(var + eps) + beta


def group_norm(X, gamma, beta, num_groups: int, eps: float = 1e-5, channel_axis: int = 1
               ) -> np.ndarray:
    """Each example's channels standardized in ``num_groups`` groups of consecutive channels,
    over the group's channels and all locations; gamma, beta per channel."""
    X = np.moveaxis(np.asarray(X, np.float64), channel_axis, 1)
    N, C = X.shape[:2]
    groups = X.reshape(N, num_groups, -1)
    mean = groups.mean(axis=2, keepdims=True)
    var = ((groups - mean) ** 2).mean(axis=2, keepdims=True)
    X_hat = ((groups - mean) / np.sqrt(var + eps)).reshape(X.shape)
    shape = (1, C) + (1,) * (X.ndim - 2)
    Y = np.asarray(gamma, np.float64).reshape(shape) * X_hat + np.reshape(beta, shape)
    return np.moveaxis(Y, 1, channel_axis)


def layer_norm_grads(X, gamma, dY, eps: float = 1e-5
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dX, dgamma, dbeta)`` of layer norm: batch norm's formula with the roles of
    the axes swapped (statistics per example), γ applied elementwise before the projection."""
    X, dY = np.asarray(X, np.float64), np.asarray(dY, np.float64)
    axes = tuple(range(1, X.ndim))
    mean = X.mean(axis=axes, keepdims=True)
    sigma = np.sqrt(((X - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    X_hat = (X - mean) / sigma
    g = dY * np.asarray(gamma, np.float64)  # ∂L/∂x̂
    dX = (g - g.mean(axis=axes, keepdims=True)
          - X_hat * (g * X_hat).mean(axis=axes, keepdims=True)) / sigma
    return dX, (dY * X_hat).sum(axis=0), dY.sum(axis=0)


def random_batch(rng: np.random.Generator, shape: tuple, channel_axis: int = 1,
                 mean_range: tuple = (2.0, 4.0), scale_range: tuple = (0.5, 5.0)) -> np.ndarray:
    """Float32 test input whose channels have means in ``mean_range`` and standard deviations
    in ``scale_range``: far from zero mean and unit scale, so that a missing centring, a wrong
    axis or a lost precision cannot hide."""
    axes = channel_stats_axes(len(shape), channel_axis)
    channels = shape[channel_axis]
    mean = np.expand_dims(rng.uniform(*mean_range, channels), axes)
    scale = np.expand_dims(rng.uniform(*scale_range, channels), axes)
    return (rng.standard_normal(shape) * scale + mean).astype(np.float32)


# --- For the chapter: one check, printed --------------------------------------------------------

def random_case(shape: tuple, seed: int = 0, channel_axis: int = 1
                ) -> tuple[np.ndarray, np.ndarray]:
    """A float32 input from :func:`random_batch` and a random float32 ``dY`` (∂L/∂Y) for it."""
    rng = np.random.default_rng(seed)
    X = random_batch(rng, shape, channel_axis)
    return X, rng.standard_normal(shape).astype(np.float32)


def training_step(X, dY, *, momentum: float = 0.1, eps: float = 1e-5,
                  unbiased_running_var: bool = False, channel_axis: int = 1) -> dict:
    """One training step of a fresh layer (γ = 1, β = 0, running statistics 0 and 1), in
    float64: the output ``Y``, the gradient ``dX`` and the new running statistics."""
    C = np.shape(X)[channel_axis]
    ones, zeros = np.ones(C), np.zeros(C)
    Y, running_mean, running_var = batch_norm(
        X, ones, zeros, zeros, ones, training=True, momentum=momentum, eps=eps,
        unbiased_running_var=unbiased_running_var, channel_axis=channel_axis)
    dX, _, _ = batch_norm_grads(X, ones, dY, eps=eps, channel_axis=channel_axis)
    return {"Y": Y, "dX": dX, "running_mean": running_mean, "running_var": running_var}


def report(actual: dict, expected: dict, rtol: float = 1e-5) -> str:
    """The largest |actual - expected| of each quantity, rounded up to a power of ten (so that
    the printout does not flicker with the last bit); raises if one exceeds ``rtol`` times the
    largest |expected| (the tests hold them to a tighter, stated tolerance)."""
    parts = []
    for name, value in actual.items():
        value = np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value, np.float64)
        error = float(np.abs(value - expected[name]).max())
        limit = rtol * float(np.abs(expected[name]).max())
        if error > limit:
            raise AssertionError(f"{name}: largest error {error:.3g} exceeds {limit:.3g}")
        bound = 10.0 ** np.ceil(np.log10(error)) if error > 0 else 0.0
        parts.append(f"{name} ≤ {bound:.0e}" if error > 0 else f"{name} exact")
    return ", ".join(parts)
