"""Scratch layer ≡ built-in layer ≡ float64 reference, one framework at a time.

Each ``tests/test_equivalence_<framework>.py`` defines a fixture ``fw``, an adapter that speaks its
framework in NumPy arrays (in the framework's own layout), and imports the tests below with
``from equivalence import *``; pytest then runs them in that framework's venv. The tests never
touch a framework directly, so all four are held to exactly the same checks.

The adapter (see test_equivalence_torch.py for one) offers
    name, channel_axis                       its key in CONVENTIONS, 1 (NCHW) or -1 (NHWC)
    layer(kind, C, ndim, gamma, beta, **o)   "scratch" or "builtin"; options in OUR convention:
                                             momentum (weight of the new batch), eps,
                                             unbiased_running_var, use_fast_variance; None or
                                             absent means that layer's own default
    step(layer, X, dY)                       training forward + backward of sum(Y * dY):
                                             (Y, dX, dgamma, dbeta); running statistics updated
    forward(layer, X)                        training-mode forward only: Y
    predict(layer, X)                        prediction mode: Y
    running(layer)                           (running_mean, running_var)
    builtin_momentum_and_eps()               the built-in's default momentum and ε as stored
    batch_norm(X, gamma, beta)               d2l_bn's pure batch_norm, training mode: Y
    layer_norm(X, gamma, beta)               d2l_bn's pure layer_norm: Y
    group_norm(X, gamma, beta, num_groups)   d2l_bn's pure group_norm: Y
    forward_half(layer, X, dtype)            X rounded to "float16"/"bfloat16", training-mode
                                             forward: (Y as float64, Y's dtype name,
                                             the rounded X as float64)

Tolerances (float32): |actual - expected| <= RTOL |expected| + ULPS · ε32 · κ · s, where
κ = 1 + max |μ|/σ over the input's channels (subtracting a mean μ from values of spread σ loses
|μ|/σ ulps), s the largest |expected| of the quantity (for dγ and dβ, which are sums of terms of
either sign, the largest sum of |terms|). Flax's one-pass variance loses (μ/σ)² ulps more: where
it is in use, κ grows by max (μ/σ)², and the test says so by its variant's name.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conventions import CONVENTIONS, new_batch_weight
from d2l_bn import reference

__all__ = [
    "only_given",
    "test_training_step_matches_reference", "test_running_stats_and_prediction_match_reference",
    "test_scratch_configured_like_builtin_equals_builtin",
    "test_builtin_momentum_convention", "test_builtin_eps_default",
    "test_builtin_running_var_convention", "test_builtin_variance_formula",
    "test_channel_axis", "test_when_running_stats_update",
    "test_prediction_mode_uses_running_statistics",
    "test_zero_variance_channel_stays_finite", "test_non_finite_batch",
    "test_half_precision_input",
    "test_property_output_has_mean_beta_and_std_gamma",
    "test_property_invariant_to_per_channel_affine_input",
    "test_property_bias_before_batch_norm_changes_nothing",
    "test_property_layer_norm_invariant_to_per_example_affine_input",
    "test_group_norm_matches_reference", "test_group_norm_rejects_unequal_groups",
]

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
RTOL = 1e-5
ULPS = 8

# The largest error seen per (framework, comparison): printed by conftest.py at the end of a run.
LARGEST: dict[tuple[str, str], tuple[float, float]] = {}


def only_given(**options) -> dict:
    """The options that were given (not None), for a layer constructor: None means its default."""
    return {name: value for name, value in options.items() if value is not None}


def conditioning(X: np.ndarray, channel_axis: int, one_pass_variance: bool = False) -> float:
    axes = reference.channel_stats_axes(X.ndim, channel_axis)
    X = np.asarray(X, np.float64)
    ratio = np.abs(X.mean(axis=axes)) / X.std(axis=axes)
    return float(1 + ratio.max() + (ratio.max() ** 2 if one_pass_variance else 0))


def check(fw, what: str, actual, expected, kappa: float, scale: float | None = None) -> None:
    """Assert ``actual`` ≈ ``expected`` to the stated tolerance and record the error."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.abs(expected).max() if scale is None else scale
    tolerance = RTOL * np.abs(expected) + ULPS * EPS32 * kappa * scale
    error = np.abs(actual - expected)
    ratio = float((error / tolerance).max())
    key = (fw.name, what)
    old = LARGEST.get(key, (0.0, 0.0))
    LARGEST[key] = (max(old[0], float(error.max())), max(old[1], ratio))
    assert ratio <= 1, (f"{fw.name}, {what}: error {error.max():.3g} is {ratio:.3g}× the "
                        f"tolerance (rtol {RTOL}, {ULPS} ulps × κ {kappa:.3g} × {scale:.3g})")


SHAPES = {"dense": (32, 12), "conv": (8, 6, 10, 10)}  # conv as (N, C, H, W); NHWC where native


def native_shape(fw, shape: tuple) -> tuple:
    if len(shape) == 4 and fw.channel_axis == -1:
        return (shape[0], shape[2], shape[3], shape[1])
    return shape


def reference_options(fw, kind: str, options: dict) -> dict:
    """What ``reference.batch_norm`` must be told to behave like this layer."""
    if kind == "scratch":
        return {"momentum": options.get("momentum", 0.1), "eps": options.get("eps", 1e-5),
                "unbiased_running_var": options.get("unbiased_running_var", False)}
    convention = CONVENTIONS[fw.name]
    return {"momentum": options.get("momentum", new_batch_weight(fw.name)),
            "eps": options.get("eps", convention["eps_default"]),
            "unbiased_running_var": convention["running_var"] == "unbiased"}


def uses_one_pass_variance(fw, kind: str, options: dict) -> bool:
    if "use_fast_variance" in options:
        return options["use_fast_variance"]
    return kind == "builtin" and CONVENTIONS[fw.name]["variance"] == "one-pass"


# Each variant: (kind, options in our convention). "built-in" runs with the framework's own defaults.
VARIANTS = {
    "scratch": ("scratch", {}),
    "built-in": ("builtin", {}),
    "built-in, momentum 0.1, eps 1e-5": ("builtin", {"momentum": 0.1, "eps": 1e-5}),
}


def variant_options(fw, variant: str) -> tuple[str, dict]:
    kind, options = VARIANTS[variant]
    if kind == "builtin" and CONVENTIONS[fw.name]["variance"] == "one-pass" and options:
        options = {**options, "use_fast_variance": False}  # the exact one, to be held tight
    return kind, options


def random_affine(rng, C: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)).astype(np.float32), \
        rng.standard_normal(C).astype(np.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_training_step_matches_reference(fw, variant, shape_name):
    rng = np.random.default_rng(0)
    shape = native_shape(fw, SHAPES[shape_name])
    C, axes = shape[fw.channel_axis], reference.channel_stats_axes(len(shape), fw.channel_axis)
    kind, options = variant_options(fw, variant)
    gamma, beta = random_affine(rng, C)
    layer = fw.layer(kind, C, len(shape), gamma, beta, **options)
    X = reference.random_batch(rng, shape, fw.channel_axis)
    dY = rng.standard_normal(shape).astype(np.float32)
    Y, dX, dgamma, dbeta = fw.step(layer, X, dY)

    ref = reference_options(fw, kind, options)
    Y_ref, _, _ = reference.batch_norm(X, gamma, beta, np.zeros(C), np.ones(C), training=True,
                                       channel_axis=fw.channel_axis, **ref)
    dX_ref, dgamma_ref, dbeta_ref = reference.batch_norm_grads(
        X, gamma, dY, eps=ref["eps"], channel_axis=fw.channel_axis)
    kappa = conditioning(X, fw.channel_axis, uses_one_pass_variance(fw, kind, options))
    X_hat = (Y_ref - np.expand_dims(beta, axes)) / np.expand_dims(gamma, axes)
    check(fw, f"{variant}: Y", Y, Y_ref, kappa)
    check(fw, f"{variant}: dX", dX, dX_ref, kappa)
    check(fw, f"{variant}: dgamma", dgamma, dgamma_ref, kappa,
          scale=np.abs(dY * X_hat).sum(axis=axes).max())
    check(fw, f"{variant}: dbeta", dbeta, dbeta_ref, kappa, scale=np.abs(dY).sum(axis=axes).max())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_running_stats_and_prediction_match_reference(fw, variant, shape_name):
    rng = np.random.default_rng(1)
    shape = native_shape(fw, SHAPES[shape_name])
    C = shape[fw.channel_axis]
    kind, options = variant_options(fw, variant)
    gamma, beta = random_affine(rng, C)
    layer = fw.layer(kind, C, len(shape), gamma, beta, **options)
    ref = reference_options(fw, kind, options)
    mean_ref, var_ref = np.zeros(C), np.ones(C)
    kappa = 1.0
    for _ in range(4):
        X = reference.random_batch(rng, shape, fw.channel_axis)
        fw.step(layer, X, rng.standard_normal(shape).astype(np.float32))
        _, mean_ref, var_ref = reference.batch_norm(X, gamma, beta, mean_ref, var_ref,
                                                    training=True, channel_axis=fw.channel_axis,
                                                    **ref)
        kappa = max(kappa, conditioning(X, fw.channel_axis,
                                        uses_one_pass_variance(fw, kind, options)))
        mean, var = fw.running(layer)
        check(fw, f"{variant}: running_mean", mean, mean_ref, kappa)
        check(fw, f"{variant}: running_var", var, var_ref, kappa)
    X = reference.random_batch(rng, shape, fw.channel_axis)
    Y_ref, _, _ = reference.batch_norm(X, gamma, beta, mean, var, training=False,
                                       eps=ref["eps"], channel_axis=fw.channel_axis)
    check(fw, f"{variant}: prediction Y", fw.predict(layer, X), Y_ref,
          conditioning(X, fw.channel_axis))


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_scratch_configured_like_builtin_equals_builtin(fw, shape_name):
    """The scratch layer has an option for every convention in which the built-in differs from
    it: set them, and the two agree on outputs, gradients, running statistics and predictions."""
    rng = np.random.default_rng(2)
    shape = native_shape(fw, SHAPES[shape_name])
    C = shape[fw.channel_axis]
    convention = CONVENTIONS[fw.name]
    gamma, beta = random_affine(rng, C)
    builtin = fw.layer("builtin", C, len(shape), gamma, beta)
    like_builtin = {"momentum": new_batch_weight(fw.name), "eps": convention["eps_default"],
                    "unbiased_running_var": convention["running_var"] == "unbiased"}
    if convention["variance"] == "one-pass":
        like_builtin["use_fast_variance"] = True
    scratch = fw.layer("scratch", C, len(shape), gamma, beta, **like_builtin)
    for step in range(3):
        X = reference.random_batch(rng, shape, fw.channel_axis)
        dY = rng.standard_normal(shape).astype(np.float32)
        kappa = conditioning(X, fw.channel_axis, convention["variance"] == "one-pass")
        for name, ours, theirs in zip(["Y", "dX", "dgamma", "dbeta"], fw.step(scratch, X, dY),
                                      fw.step(builtin, X, dY)):
            scale = np.abs(theirs).max() * (1 if name in ("Y", "dX") else np.prod(shape) / C)
            check(fw, f"scratch like built-in: {name}", ours, theirs, kappa, scale)
        for name, ours, theirs in zip(["running_mean", "running_var"], fw.running(scratch),
                                      fw.running(builtin)):
            check(fw, f"scratch like built-in: {name}", ours, theirs, kappa)
    X = reference.random_batch(rng, shape, fw.channel_axis)
    check(fw, "scratch like built-in: prediction Y", fw.predict(scratch, X),
          fw.predict(builtin, X), conditioning(X, fw.channel_axis))


# --- The convention table, one test per row -------------------------------------------------------

def one_step_from_fresh(fw, shape, **options):
    """A built-in layer with γ = 1, β = 0, one training step (forward and backward) on X."""
    rng = np.random.default_rng(3)
    C = shape[fw.channel_axis]
    layer = fw.layer("builtin", C, len(shape), np.ones(C, np.float32), np.zeros(C, np.float32),
                     **options)
    X = reference.random_batch(rng, shape, fw.channel_axis)
    Y = fw.step(layer, X, np.ones(shape, np.float32))[0]
    return layer, X, Y


def test_builtin_momentum_convention(fw):
    """momentum's default, and which average it weights: from running_mean = 0, one step leaves
    w · batch_mean, w the weight of the new batch (0.1 in PyTorch, 1 - 0.99 in Flax and Keras)."""
    convention = CONVENTIONS[fw.name]
    momentum, _ = fw.builtin_momentum_and_eps()
    assert momentum == pytest.approx(convention["momentum_default"])
    layer, X, _ = one_step_from_fresh(fw, (16, 5))
    running_mean, _ = fw.running(layer)
    w = new_batch_weight(fw.name)
    np.testing.assert_allclose(running_mean, w * X.astype(np.float64).mean(axis=0), rtol=1e-5)
    assert not np.allclose(running_mean, (1 - w) * X.mean(axis=0), rtol=1e-2)


def test_builtin_eps_default(fw):
    """ε's default, seen in the output: on a channel whose variance is 1e-4, ε = 1e-3 and 1e-5
    give outputs that differ by 40%."""
    convention = CONVENTIONS[fw.name]
    _, eps = fw.builtin_momentum_and_eps()
    assert eps == pytest.approx(convention["eps_default"])
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((64, 3)) * 0.01).astype(np.float32)
    layer = fw.layer("builtin", 3, 2, np.ones(3, np.float32), np.zeros(3, np.float32))
    Y = fw.forward(layer, X)
    other = 1e-5 if convention["eps_default"] == 1e-3 else 1e-3
    for eps, matches in [(convention["eps_default"], True), (other, False)]:
        Y_ref, _, _ = reference.batch_norm(X, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3),
                                           training=True, eps=eps)
        assert np.allclose(Y, Y_ref, rtol=1e-4, atol=1e-5) == matches


def test_builtin_running_var_convention(fw):
    """Biased or unbiased: with n = 8 values per feature, n / (n - 1) = 8/7 tells them apart."""
    convention = CONVENTIONS[fw.name]
    layer, X, _ = one_step_from_fresh(fw, (8, 5), momentum=1.0)  # running var = the batch's
    _, running_var = fw.running(layer)
    ddof = 1 if convention["running_var"] == "unbiased" else 0
    X = X.astype(np.float64)
    np.testing.assert_allclose(running_var, X.var(axis=0, ddof=ddof), rtol=1e-5)
    assert not np.allclose(running_var, X.var(axis=0, ddof=1 - ddof), rtol=1e-2)


def test_builtin_variance_formula(fw):
    """Two-pass E[(x - E[x])²] or one-pass E[x²] - E[x]²: for channels with mean 300 and std 1,
    the one-pass formula in float32 is off by about 1% (cancellation), the two-pass by 1e-7."""
    convention = CONVENTIONS[fw.name]
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((256, 4)) + 300).astype(np.float32)
    layer = fw.layer("builtin", 4, 2, np.ones(4, np.float32), np.zeros(4, np.float32),
                     momentum=1.0)
    fw.step(layer, X, np.ones(X.shape, np.float32))
    _, running_var = fw.running(layer)
    exact = X.astype(np.float64).var(axis=0, ddof=1 if convention["running_var"] == "unbiased"
                                     else 0)
    relative_error = np.abs(running_var / exact - 1).max()
    if convention["variance"] == "one-pass":
        assert relative_error > 1e-3
    else:
        assert relative_error < 1e-5


def test_channel_axis(fw):
    """Statistics are per channel along the framework's channel axis (1 for NCHW, -1 for NHWC):
    with β = 0 and γ = 1 every channel of the output has mean 0; along another axis it need not."""
    rng = np.random.default_rng(6)
    shape = native_shape(fw, (4, 3, 5, 7))
    C = shape[fw.channel_axis]
    axes = reference.channel_stats_axes(4, fw.channel_axis)
    for kind in ("scratch", "builtin"):
        layer = fw.layer(kind, C, 4, np.ones(C, np.float32), np.zeros(C, np.float32))
        Y = fw.forward(layer, reference.random_batch(rng, shape, fw.channel_axis))
        np.testing.assert_allclose(Y.mean(axis=axes), 0, atol=1e-5)
        assert np.asarray(fw.running(layer)[0]).shape == (C,)


def test_when_running_stats_update(fw):
    """In the training forward pass (PyTorch, Flax, Keras, every scratch layer) or only in the
    backward pass (Gluon on the CPU)."""
    X = reference.random_batch(np.random.default_rng(7), (16, 4))
    for kind in ("scratch", "builtin"):
        layer = fw.layer(kind, 4, 2, np.ones(4, np.float32), np.zeros(4, np.float32))
        fw.forward(layer, X)
        after_forward = fw.running(layer)[0]
        expected = "forward" if kind == "scratch" else CONVENTIONS[fw.name]["updates_in"]
        assert (np.abs(after_forward).max() > 0) == (expected == "forward"), kind
        fw.step(layer, X, np.ones(X.shape, np.float32))
        assert np.abs(fw.running(layer)[0]).max() > 0, kind


@pytest.mark.parametrize("kind", ["scratch", "builtin"])
def test_prediction_mode_uses_running_statistics(fw, kind):
    """The mode switch (model.eval(), outside autograd.record(), train=False, training=False)
    selects the running statistics; training mode selects the batch's."""
    rng = np.random.default_rng(8)
    layer = fw.layer(kind, 4, 2, np.ones(4, np.float32), np.zeros(4, np.float32),
                     momentum=1.0, eps=1e-5)
    fw.step(layer, reference.random_batch(rng, (16, 4)), np.ones((16, 4), np.float32))
    mean, var = fw.running(layer)
    X = reference.random_batch(rng, (16, 4))
    predicted = fw.predict(layer, X)
    np.testing.assert_allclose(predicted, (X - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fw.forward(layer, X),
                               reference.batch_norm(X, np.ones(4), np.zeros(4), mean, var,
                                                    training=True)[0], rtol=1e-4, atol=1e-5)


# --- Edge cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["scratch", "builtin"])
def test_zero_variance_channel_stays_finite(fw, kind):
    """A constant channel has variance 0: ε keeps the division finite, the output is β, and
    the gradients are finite."""
    rng = np.random.default_rng(9)
    X = reference.random_batch(rng, (16, 3))
    X[:, 1] = 7.0
    gamma, beta = random_affine(rng, 3)
    layer = fw.layer(kind, 3, 2, gamma, beta)
    Y, dX, dgamma, dbeta = fw.step(layer, X, rng.standard_normal(X.shape).astype(np.float32))
    for name, value in [("Y", Y), ("dX", dX), ("dgamma", dgamma), ("dbeta", dbeta)]:
        assert np.isfinite(value).all(), name
    # The kernel's mean of the 7s may be off by an ulp of 7, which ε's square root amplifies.
    eps = 1e-5 if kind == "scratch" else CONVENTIONS[fw.name]["eps_default"]
    np.testing.assert_allclose(Y[:, 1], beta[1], atol=2 * abs(gamma[1]) * EPS32 * 7 / eps ** 0.5)


@pytest.mark.parametrize("kind", ["scratch", "builtin"])
def test_non_finite_batch(fw, kind):
    """A NaN in the input: the output is NaN either way (the Trainer's once-per-epoch check then
    raises TrainingDiverged, tested with each framework's Trainer). The built-in layers let the
    NaN into the running statistics of that channel, where it would poison every later
    prediction; the scratch layers keep the running statistics of the step before."""
    rng = np.random.default_rng(10)
    layer = fw.layer(kind, 3, 2, np.ones(3, np.float32), np.zeros(3, np.float32))
    fw.step(layer, reference.random_batch(rng, (16, 3)), np.ones((16, 3), np.float32))
    before = [np.array(s) for s in fw.running(layer)]
    X = reference.random_batch(rng, (16, 3))
    X[0, 0] = np.nan
    Y = fw.step(layer, X, np.ones(X.shape, np.float32))[0]
    assert np.isnan(Y[:, 0]).all()
    after = fw.running(layer)
    if kind == "scratch":
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
    else:
        assert np.isnan(after[0][0]) and np.isfinite(after[0][1:]).all()


@pytest.mark.parametrize("kind", ["scratch", "builtin"])
def test_half_precision_input(fw, kind):
    """float16/bfloat16 input, float32 γ, β and running statistics: the output comes back in the
    input's dtype (PyTorch, Gluon) or in float32 (Flax, Keras), the scratch layer as its built-in;
    either way as close to the float64 reference (fed the same rounded input) as the output's
    precision allows. Gluon on the CPU has no bfloat16: the table says so."""
    convention = CONVENTIONS[fw.name]
    X = reference.random_batch(np.random.default_rng(11), (32, 4))
    for dtype in convention["half_dtypes"]:
        layer = fw.layer(kind, 4, 2, np.ones(4, np.float32), np.zeros(4, np.float32))
        Y, out_dtype, X_rounded = fw.forward_half(layer, X, dtype)
        expected_dtype = dtype if convention["half_output"] == "input dtype" else "float32"
        assert out_dtype == expected_dtype, (kind, dtype)
        Y_ref, _, _ = reference.batch_norm(X_rounded, np.ones(4), np.zeros(4), np.zeros(4),
                                           np.ones(4), training=True,
                                           eps=1e-5 if kind == "scratch"
                                           else convention["eps_default"])
        # Computed in float32, then rounded once to the output's dtype: half a unit of its
        # precision, plus the float32 error (as elsewhere). Statistics kept in the input's
        # precision would err by about an ulp of the mean (~3) over σ, more than that.
        unit = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": EPS32}[out_dtype]
        scale = np.abs(Y_ref).max()
        atol = (unit / 2 + ULPS * EPS32 * conditioning(X_rounded, 1)) * scale
        np.testing.assert_allclose(Y, Y_ref, rtol=0, atol=atol, err_msg=f"{kind} {dtype}")
    for dtype in {"float16", "bfloat16"} - set(convention["half_dtypes"]):
        with pytest.raises(TypeError):  # the framework has no such dtype: stated, and so
            fw.forward_half(fw.layer(kind, 4, 2, np.ones(4, np.float32),
                                     np.zeros(4, np.float32)), X, dtype)


# --- Properties of the pure functions (hypothesis) ------------------------------------------------

def _batch(seed: int, shape: tuple, mean: float, scale: float, channel_axis: int) -> np.ndarray:
    return reference.random_batch(np.random.default_rng(seed), shape, channel_axis,
                                  (mean, mean + 1), (scale, 2 * scale))


SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2 ** 32 - 1)
means = st.floats(-5, 5)
scales = st.floats(0.5, 5)


@SETTINGS
@given(seed=seeds, mean=means, scale=scales, conv=st.booleans())
def test_property_output_has_mean_beta_and_std_gamma(fw, seed, mean, scale, conv):
    shape = native_shape(fw, (8, 3, 4, 4) if conv else (16, 3))
    axes = reference.channel_stats_axes(len(shape), fw.channel_axis)
    rng = np.random.default_rng(seed)
    gamma, beta = random_affine(rng, 3)
    X = _batch(seed, shape, mean, scale, fw.channel_axis)
    Y = np.asarray(fw.batch_norm(X, gamma, beta), np.float64)
    kappa = conditioning(X, fw.channel_axis)
    np.testing.assert_allclose(Y.mean(axis=axes), beta, atol=ULPS * EPS32 * kappa * 4)
    # variance >= 0.25 >> eps = 1e-5: the std is |γ| to within eps / (2 var) < 2e-5
    np.testing.assert_allclose(Y.std(axis=axes), np.abs(gamma), rtol=1e-4)


@SETTINGS
@given(seed=seeds, mean=means, scale=scales, conv=st.booleans())
def test_property_invariant_to_per_channel_affine_input(fw, seed, mean, scale, conv):
    """BN(a·x + c) = BN(x) for a > 0 and any c, per channel (ε aside: variance stays >> ε)."""
    shape = native_shape(fw, (8, 3, 4, 4) if conv else (16, 3))
    axes = reference.channel_stats_axes(len(shape), fw.channel_axis)
    rng = np.random.default_rng(seed)
    gamma, beta = random_affine(rng, 3)
    X = _batch(seed, shape, mean, scale, fw.channel_axis)
    a = np.expand_dims(rng.uniform(0.5, 2, 3), axes)
    c = np.expand_dims(rng.uniform(-3, 3, 3), axes)
    X2 = (a * X + c).astype(np.float32)
    kappa = max(conditioning(X, fw.channel_axis), conditioning(X2, fw.channel_axis))
    np.testing.assert_allclose(fw.batch_norm(X2, gamma, beta), fw.batch_norm(X, gamma, beta),
                               rtol=1e-4, atol=4 * ULPS * EPS32 * kappa * 2 * 4)


@SETTINGS
@given(seed=seeds, mean=means, scale=scales)
def test_property_bias_before_batch_norm_changes_nothing(fw, seed, mean, scale):
    """A fully connected layer's bias b is removed by BN's mean subtraction: BN(XW + b) = BN(XW),
    so the layer before BN needs no bias (β takes its role)."""
    rng = np.random.default_rng(seed)
    X = _batch(seed, (16, 5), mean, scale, 1).astype(np.float64)
    W, b = rng.standard_normal((5, 3)), rng.uniform(-3, 3, 3)
    gamma, beta = random_affine(rng, 3)
    H = (X @ W).astype(np.float32)
    Hb = (X @ W + b).astype(np.float32)
    kappa = max(conditioning(H, 1), conditioning(Hb, 1))
    np.testing.assert_allclose(fw.batch_norm(Hb, gamma, beta), fw.batch_norm(H, gamma, beta),
                               rtol=1e-4, atol=4 * ULPS * EPS32 * kappa * 2 * 4)


@SETTINGS
@given(seed=seeds, mean=means, scale=scales)
def test_property_layer_norm_invariant_to_per_example_affine_input(fw, seed, mean, scale):
    """LN(α·x + c; ε) = LN(x; ε/α²) for α > 0 and c chosen per example. With ε kept the same,
    the invariance holds only up to ε relative to each row's variance, which a row of small
    variance shows."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((6, 10)) * scale + mean).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 10).astype(np.float32), rng.standard_normal(10).astype(
        np.float32)
    alpha, c = rng.uniform(0.5, 2, (6, 1)), rng.uniform(-3, 3, (6, 1))
    X2 = (alpha * X + c).astype(np.float32)
    centred = X.astype(np.float64) - X.mean(1, keepdims=True, dtype=np.float64)
    expected = gamma * centred / np.sqrt(centred.var(1, keepdims=True) + 1e-5 / alpha ** 2) + beta
    kappa = 1 + float((np.abs(X2.mean(1)) / X2.std(1)).max() + (np.abs(X.mean(1)) / X.std(1)).max())
    np.testing.assert_allclose(fw.layer_norm(X2, gamma, beta), expected,
                               rtol=1e-4, atol=4 * ULPS * EPS32 * kappa * 2 * 4)


@pytest.mark.parametrize("shape, num_groups", [((16, 8), 4), ((16, 8), 1), ((4, 6, 5, 5), 3),
                                               ((4, 6, 5, 5), 6)])
def test_group_norm_matches_reference(fw, shape, num_groups):
    """Groups of consecutive channels, statistics per example over a group's channels and all
    locations, gamma and beta per channel; channels where the framework keeps them."""
    rng = np.random.default_rng(0)
    C = shape[1]
    X = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    if fw.channel_axis == -1:
        X = np.ascontiguousarray(np.moveaxis(X, 1, -1))
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    expected = reference.group_norm(X, gamma, beta, num_groups, channel_axis=fw.channel_axis)
    np.testing.assert_allclose(fw.group_norm(X, gamma, beta, num_groups), expected,
                               rtol=RTOL, atol=ULPS * EPS32 * 4 * float(np.abs(expected).max()))


def test_group_norm_rejects_unequal_groups(fw):
    X = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="num_groups dividing the number of channels"):
        fw.group_norm(X, np.ones(6, np.float32), np.zeros(6, np.float32), 4)
