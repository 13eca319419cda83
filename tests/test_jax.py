"""d2l_bn.jax: the scratch layer's statistics, its input checks, the models
and the Trainer (a short run on real Fashion-MNIST, seeding, divergence, Ctrl-C, host syncs).
The equivalence with the built-in layer and the float64 reference is in test_equivalence_*.py."""

import itertools
from functools import partial

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scripted_data import ScriptedData

from d2l_bn import jax as d2l
from d2l_bn.training import TrainingDiverged

EPS32 = float(jnp.finfo(jnp.float32).eps)  # 1.19e-7


def assert_close(actual, expected) -> None:
    # rtol 1e-5, plus an atol of 16 float32 ulps of the largest |expected|: the two
    # implementations sum in different orders (Flax's fused statistics vs our two-pass mean), so
    # entries near zero, e.g. gradients that are sums of terms of either sign, differ by a few ulps
    # of the terms summed rather than of their own size.
    expected = np.asarray(expected)
    atol = 16 * EPS32 * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=atol)


def shifted_batch(shape: tuple, rng: np.random.Generator) -> jax.Array:
    """Random input whose features/channels (last axis) have means in [2, 4] and scales in
    [0.5, 5]."""
    mean, std = rng.uniform(2, 4, shape[-1]), rng.uniform(0.5, 5, shape[-1])
    return jnp.asarray((rng.standard_normal(shape) * std + mean).astype(np.float32))


SHAPES = [(32, 12), (8, 10, 10, 6)]  # dense (batch, features); conv (N, H, W, C), channels last


def reduce_axes(X) -> tuple:
    return (0,) if X.ndim == 2 else (0, 1, 2)


def scratch_layer(shape: tuple, rng=None, **kwargs):
    """Our layer for inputs of ``shape`` and its variables; gamma and beta random if ``rng``."""
    layer = d2l.BatchNorm(shape[-1], num_dims=len(shape), **kwargs)
    variables = layer.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
    if rng is not None:
        variables["params"] = {"gamma": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32),
                               "beta": jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)}
    return layer, variables


def train(layer, variables: dict, X, **kwargs):
    """A training-mode pass: the output and the variables with the updated running statistics."""
    Y, updates = layer.apply(variables, X, mutable=["batch_stats"], **kwargs)
    return Y, {**variables, **updates}


def stats(variables: dict) -> tuple:
    return (variables["batch_stats"]["running_mean"], variables["batch_stats"]["running_var"])


# --- The scratch layer on its own ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_training_output_is_standardized_per_channel(shape):
    rng = np.random.default_rng(0)
    layer, variables = scratch_layer(shape, rng)
    X = shifted_batch(shape, rng)
    Y, _ = train(layer, variables, X, train=True)
    assert Y.shape == X.shape
    gamma, beta = variables["params"]["gamma"], variables["params"]["beta"]
    Z = (Y - beta) / gamma  # undo gamma and beta (they broadcast along the last axis)
    axes = reduce_axes(X)
    np.testing.assert_allclose(Z.mean(axis=axes), np.zeros(shape[-1]), rtol=0, atol=1e-5)
    # eps shrinks the std by sqrt(var / (var + eps)), at most 1e-5 relative for var >= 0.25
    np.testing.assert_allclose(Z.std(axis=axes), np.ones(shape[-1]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_running_stats_follow_the_momentum_formula(shape):
    rng = np.random.default_rng(1)
    layer, variables = scratch_layer(shape, momentum=0.3)
    mean, var = np.zeros(shape[-1]), np.ones(shape[-1])
    for _ in range(4):
        X = shifted_batch(shape, rng)
        _, variables = train(layer, variables, X, train=True)
        X64, axes = np.asarray(X, np.float64), reduce_axes(X)
        mean = 0.7 * mean + 0.3 * X64.mean(axis=axes)
        var = 0.7 * var + 0.3 * X64.var(axis=axes)  # biased, by default
    np.testing.assert_allclose(stats(variables)[0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats(variables)[1], var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_prediction_uses_the_running_stats(shape):
    rng = np.random.default_rng(2)
    layer, variables = scratch_layer(shape, rng)
    for _ in range(3):
        _, variables = train(layer, variables, shifted_batch(shape, rng), train=True)
    X = shifted_batch(shape, rng)
    Y, after = train(layer, variables, X, train=False)  # mutable, yet prediction changes nothing
    mean, var = stats(variables)
    gamma, beta = variables["params"]["gamma"], variables["params"]["beta"]
    assert_close(Y, (X - mean) / np.sqrt(var + layer.eps) * gamma + beta)
    np.testing.assert_array_equal(stats(after), stats(variables))
    assert_close(layer.apply(variables, X, train=False), Y)  # no mutable collection needed


def test_with_momentum_one_prediction_equals_training_on_the_same_batch():
    # momentum=1 keeps only the last batch's statistics (Flax's momentum=0): evaluating that
    # batch must then give the training output.
    layer, variables = scratch_layer((8, 5, 5, 6), momentum=1.0)
    X = shifted_batch((8, 5, 5, 6), np.random.default_rng(3))
    Y_train, variables = train(layer, variables, X, train=True)
    np.testing.assert_allclose(layer.apply(variables, X, train=False), Y_train,
                               rtol=1e-5, atol=1e-5)


def test_batch_norm_is_pure_jittable_and_keeps_running_stats_out_of_autograd():
    X = shifted_batch((4, 3), np.random.default_rng(4))
    gamma, beta, mean, var = jnp.ones(3), jnp.zeros(3), jnp.zeros(3), jnp.ones(3)
    Y, new_mean, new_var = d2l.batch_norm(X, gamma, beta, mean, var, training=True)
    np.testing.assert_array_equal(mean, np.zeros(3))  # the inputs are untouched
    jitted = jax.jit(d2l.batch_norm, static_argnames="training")
    for a, b in zip(jitted(X, gamma, beta, mean, var, training=True), (Y, new_mean, new_var)):
        assert_close(a, b)
    # no gradient reaches X through the running statistics, only through the output
    grad = jax.grad(lambda X: sum(d2l.batch_norm(X, gamma, beta, mean, var, training=True)[1:])
                    .sum())(X)
    np.testing.assert_array_equal(grad, np.zeros_like(X))
    assert np.abs(jax.grad(lambda X: (d2l.batch_norm(X, gamma, beta, mean, var, training=True)[0]
                                      * X).sum())(X)).max() > 0.1
    _, same_mean, same_var = d2l.batch_norm(X, gamma, beta, mean, var, training=False)
    assert same_mean is mean and same_var is var


def test_running_stats_live_in_batch_stats():
    layer = d2l.BatchNorm(5, num_dims=2)
    X = shifted_batch((4, 5), np.random.default_rng(5))
    variables = layer.init(jax.random.PRNGKey(0), X, train=True)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"gamma", "beta"}
    assert set(variables["batch_stats"]) == {"running_mean", "running_var"}
    # init creates the running statistics, even in training mode, without updating them
    np.testing.assert_array_equal(stats(variables), (np.zeros(5), np.ones(5)))
    # training without asking for the new statistics is an error, as with flax.linen.BatchNorm
    with pytest.raises(flax.errors.ModifyScopeVariableError, match="running_mean"):
        layer.apply(variables, X, train=True)
    assert "num_features = 5" in repr(layer) and "momentum = 0.1" in repr(layer)


def test_nhwc_statistics_are_one_per_channel_not_one_per_row():
    # The regression test: d2l's JAX layer reduces over axes (0, 2, 3), which for NCHW data are
    # batch, height and width, but Flax data are NHWC, so it averages over batch, width and
    # channels and gets one statistic per image ROW.
    rng = np.random.default_rng(6)
    X = shifted_batch((16, 28, 28, 6), rng)
    d2l_mean = X.mean(axis=(0, 2, 3), keepdims=True)  # what d2l's JAX batch_norm computes
    assert d2l_mean.shape == (1, 28, 1, 1)
    d2l_out = (X - d2l_mean) / jnp.sqrt(((X - d2l_mean) ** 2).mean(axis=(0, 2, 3),
                                                                  keepdims=True) + 1e-5)
    assert np.abs(d2l_out.mean(axis=(0, 1, 2))).max() > 0.1  # channels not standardized

    ones, zeros = jnp.ones(6), jnp.zeros(6)
    Y, batch_mean, batch_var = d2l.batch_norm(X, ones, zeros, zeros, ones, training=True,
                                              momentum=1.0)  # momentum 1: the batch statistics
    assert batch_mean.shape == batch_var.shape == (6,)
    X64 = np.asarray(X, np.float64)
    np.testing.assert_allclose(batch_mean, X64.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(batch_var, X64.var(axis=(0, 1, 2)), rtol=1e-5)
    # Float32 round-off of a standardized channel: each value carries about eps times
    # max|x| / std (the shift is subtracted in float32), and a mean over n values up to log2(n)
    # of those (pairwise summation). JAX 0.7.2 measured 1.3e-5 against 4.5e-5 here.
    n = X.size // X.shape[-1]
    scale = np.abs(X64).max() / X64.std(axis=(0, 1, 2)).min()
    atol = np.finfo(np.float32).eps * scale * np.log2(n)
    np.testing.assert_allclose(Y.mean(axis=(0, 1, 2)), np.zeros(6), rtol=0, atol=atol)
    np.testing.assert_allclose(Y.std(axis=(0, 1, 2)), np.ones(6), rtol=0, atol=max(atol, 1e-4))


# --- Equivalence with Flax's own layer -----------------------------------------------------------

def test_group_norm_matches_flax():
    rng = np.random.default_rng(10)
    for shape, num_groups in [((8, 12), 4), ((4, 5, 5, 6), 3)]:  # channels last
        X = jnp.asarray((rng.standard_normal(shape) * 3 + 2).astype(np.float32))
        gamma = jnp.asarray(rng.uniform(0.5, 1.5, shape[-1]), jnp.float32)
        beta = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
        # Flax's scale and bias are per channel, as ours; its statistics per example and group
        ref = nn.GroupNorm(num_groups=num_groups, epsilon=1e-5, use_fast_variance=False)
        expected = ref.apply({"params": {"scale": gamma, "bias": beta}}, X)
        assert_close(d2l.group_norm(X, gamma, beta, num_groups), expected)
        layer = d2l.GroupNorm(shape[-1], num_groups)
        variables = layer.init(jax.random.PRNGKey(0), X)
        assert set(variables) == {"params"}  # no running statistics
        assert_close(layer.apply(variables, X), ref.apply(ref.init(jax.random.PRNGKey(0), X), X))


def test_layer_norm_matches_flax():
    rng = np.random.default_rng(11)
    for shape in [(8, 20), (4, 7, 7, 3)]:
        X = shifted_batch(shape, rng)
        gamma = jnp.asarray(rng.standard_normal(shape[1:]), jnp.float32)
        beta = jnp.asarray(rng.standard_normal(shape[1:]), jnp.float32)
        # Flax normalizes over the last axis by default: all non-batch axes, for statistics and
        # for the learned scale and bias alike, are what layer normalization means.
        axes = tuple(range(1, len(shape)))
        ref = nn.LayerNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes,
                           use_fast_variance=False)
        expected = ref.apply({"params": {"scale": gamma, "bias": beta}}, X)
        assert_close(d2l.layer_norm(X, gamma, beta), expected)
    # one example alone is normalized the same way: no dependence on the batch
    assert_close(d2l.layer_norm(X[:1], gamma, beta), expected[:1])


# --- Errors that say what to do ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6,), (4, 5, 6), (2, 3, 3, 3, 6)])
def test_wrong_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=r"2-D .*4-D .*Flatten"):
        d2l.batch_norm(jnp.ones(shape), jnp.ones(6), jnp.zeros(6), jnp.zeros(6), jnp.ones(6),
                       training=True)


def test_wrong_feature_count_is_rejected_also_under_jit():
    layer, variables = scratch_layer((2, 4, 4, 6))
    with pytest.raises(ValueError, match=r"5 features/channels.*num_features=5"):
        layer.init(jax.random.PRNGKey(0), jnp.ones((2, 4, 4, 5)), train=True)
    with pytest.raises(ValueError, match=r"num_dims=4 .*2-D input"):
        layer.apply(variables, jnp.ones((2, 6)), train=False)
    predict = jax.jit(lambda X: layer.apply(variables, X, train=False))
    with pytest.raises(ValueError, match=r"5 features/channels.*num_features=5"):
        predict(jnp.ones((2, 4, 4, 5)))  # shapes are static: checked while tracing


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match=r"X\.astype\(jnp\.float32\)"):
        scratch_layer((4, 3))[0].init(jax.random.PRNGKey(0), jnp.ones((4, 3), jnp.int32),
                                      train=True)
    with pytest.raises(TypeError, match=r"jnp\.asarray"):
        d2l.batch_norm([[1.0, 2.0]], jnp.ones(2), jnp.zeros(2), jnp.zeros(2), jnp.ones(2),
                       training=False)


def test_one_value_per_feature_fails_in_training_only():
    layer, variables = scratch_layer((4, 6))
    with pytest.raises(ValueError, match=r"at least 2.*train=False"):
        train(layer, variables, jnp.ones((1, 6)), train=True)
    assert layer.apply(variables, jnp.ones((1, 6)), train=False).shape == (1, 6)


def test_one_image_is_fine_in_training():
    layer, variables = scratch_layer((1, 4, 4, 3))
    X = shifted_batch((1, 4, 4, 3), np.random.default_rng(12))
    assert train(layer, variables, X, train=True)[0].shape == (1, 4, 4, 3)


@pytest.mark.parametrize("num_dims", [1, 3, 5])
def test_invalid_num_dims(num_dims):
    with pytest.raises(ValueError, match=r"num_dims must be 2 .*or 4"):
        d2l.BatchNorm(6, num_dims=num_dims)


# --- Models --------------------------------------------------------------------------------------

# Parameters, by hand (weights + biases; gamma + beta for each BN), as in tests/test_torch.py:
#   conv 1->6, 5x5: 6*25 + 6 = 156           BN(6):   12
#   conv 6->16, 5x5: 16*6*25 + 16 = 2416     BN(16):  32
#   dense 256->120: 256*120 + 120 = 30840    BN(120): 240
#   dense 120->84: 120*84 + 84 = 10164       BN(84):  168
#   dense 84->10: 84*10 + 10 = 850
#   total 156 + 12 + 2416 + 32 + 30840 + 240 + 10164 + 168 + 850 = 44878
# 256 = 4 * 4 * 16 needs 'VALID' convolutions; Flax's default 'SAME' would give 7 * 7 * 16 = 784.
@pytest.mark.parametrize("cls, bn_params", [(d2l.BNLeNetScratch, {"gamma", "beta"}),
                                            (d2l.BNLeNet, {"scale", "bias"})])
def test_models(cls, bn_params):
    model = cls(lr=0.1)
    X = jnp.asarray(np.random.default_rng(13).random((16, 28, 28, 1), np.float32))
    variables = model.apply_init([X], jax.random.PRNGKey(0))
    assert sum(p.size for p in jax.tree_util.tree_leaves(variables["params"])) == 44878
    assert set(variables["params"]["bn1"]) == bn_params
    assert variables["params"]["fc1"]["kernel"].shape == (256, 120)
    Y, _ = model.apply(variables, X, train=True, mutable=["batch_stats"])
    assert Y.shape == (16, 10)
    assert model.apply(variables, X[:1], train=False).shape == (1, 10)


def test_both_models_keep_the_same_running_averages():
    # BNLeNet's nn.BatchNorm(momentum=0.9) is our momentum=0.1: from the same initial weights
    # (same layer names, same key), one training step gives the same running statistics.
    X = jnp.asarray(np.random.default_rng(14).random((32, 28, 28, 1), np.float32))
    new_stats = []
    for model in (d2l.BNLeNetScratch(), d2l.BNLeNet()):
        variables = model.apply_init([X], jax.random.PRNGKey(0))
        _, updates = model.apply(variables, X, train=True, mutable=["batch_stats"])
        new_stats.append(jax.tree_util.tree_leaves(updates["batch_stats"]["bn1"]))
    (ours_mean, ours_var), (flax_mean, flax_var) = new_stats  # leaves in sorted key order
    assert_close(ours_mean, flax_mean)
    assert not np.allclose(ours_mean, 0.0, atol=1e-2)  # 0.1 of the way to the batch mean
    np.testing.assert_allclose(ours_var, flax_var, rtol=1e-4)  # Flax's fast variance


def test_lenet_without_bn_starts_from_the_weights_of_bn_lenet():
    # The chapter's "Without Batch Normalization" trains NormLeNet(norms=(None,) * 4) with the
    # seed of BNLeNetScratch: Flax draws each layer's initial weights from the key and the
    # layer's name, so the layers the two nets share start equal.
    X = jnp.zeros((1, 28, 28, 1))
    with_bn = d2l.BNLeNetScratch().apply_init([X], jax.random.PRNGKey(0))["params"]
    without = d2l.NormLeNet(norms=(None,) * 4).apply_init([X], jax.random.PRNGKey(0))["params"]
    assert set(without) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    for layer in without:
        jax.tree_util.tree_map(np.testing.assert_array_equal, without[layer], with_bn[layer])


def test_apply_init_uses_xavier_and_keeps_running_stats():
    model = d2l.BNLeNetScratch()
    X = jnp.asarray(np.random.default_rng(15).random((8, 28, 28, 1), np.float32)) * 5
    variables = model.apply_init([X], jax.random.PRNGKey(0))
    kernel = variables["params"]["conv1"]["kernel"]
    bound = (6 / (25 * 1 + 25 * 6)) ** 0.5  # Xavier-uniform bound of the first conv
    assert kernel.shape == (5, 5, 1, 6) and np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.8 * bound  # Xavier, not Flax's LeCun-normal default
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["running_mean"], np.zeros(6))
    again = model.apply_init([X], jax.random.PRNGKey(0))
    np.testing.assert_array_equal(again["params"]["conv1"]["kernel"], kernel)


def test_fashion_mnist_gives_arrays(fashion_mnist_root):
    data = d2l.FashionMNIST(batch_size=32, root=fashion_mnist_root)
    X, y = next(iter(data.train_dataloader()))
    assert isinstance(X, jax.Array) and X.dtype == jnp.float32 and X.shape == (32, 28, 28, 1)
    assert isinstance(y, jax.Array) and y.dtype == jnp.int32 and y.shape == (32,)


# --- Trainer -------------------------------------------------------------------------------------

class Take:
    """The first ``n`` batches of a loader; a new pass at each ``iter()``."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return min(self.n, len(self.loader))


class Slice:
    """A data module serving the first batches of each split of ``data``."""

    def __init__(self, data, num_train: int, num_val: int):
        self.data, self.num_train, self.num_val = data, num_train, num_val

    def train_dataloader(self):
        return Take(self.data.train_dataloader(), self.num_train)

    def val_dataloader(self):
        return Take(self.data.val_dataloader(), self.num_val)

    def get_dataloader(self, train: bool, *, shuffle=None):
        return Take(self.data.get_dataloader(train, shuffle=shuffle),
                    self.num_train if train else self.num_val)


def short_run(root, cls=d2l.BNLeNet, epochs=3, lr=0.5):
    data = Slice(d2l.FashionMNIST(batch_size=64, root=root, seed=0), num_train=40, num_val=20)
    trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1, seed=0, report="none")
    return trainer, trainer.fit(cls(lr=lr), data)


@pytest.mark.parametrize("cls", [d2l.BNLeNet, d2l.BNLeNetScratch])
def test_short_real_run_learns_and_repeats(fashion_mnist_root, cls):
    trainer, history = short_run(fashion_mnist_root, cls)
    assert trainer.device.platform in ("cpu", "gpu")
    assert history is trainer.history and history.epoch == [1, 2, 3]
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_acc) == 3
    assert history.train_loss[-1] < history.train_loss[0] < 2.4  # ln 10 = 2.30 at chance
    assert history.val_loss[-1] < 1.0 and history.val_acc[-1] > 0.65  # chance: 0.1
    assert isinstance(trainer.state, d2l.TrainState) and int(trainer.state.step) == 3 * 40
    assert trainer.state.batch_stats["bn1"]  # the running statistics travel in the state
    _, again = short_run(fashion_mnist_root, cls)
    assert again == history  # seeded CPU runs repeat exactly


def Scripted(num_batches=4, **kwargs):
    """Batches of 64, as in short_run, and models with its lr=0.5: equal models and shapes reuse
    the training step compiled there."""
    return ScriptedData((64, 28, 28, 1), lambda X, y: (jnp.asarray(X), jnp.asarray(y)),
                        label_dtype=np.int32, num_batches=num_batches, **kwargs)


def test_nan_loss_raises_at_the_end_of_that_epoch_and_keeps_history():
    data = Scripted(nan_epoch=2)
    trainer = d2l.Trainer(max_epochs=4, report="none")
    with pytest.raises(TrainingDiverged, match=r"epoch 2.*nan.*learning rate 0\.5.*halve") as info:
        trainer.fit(d2l.BNLeNetScratch(lr=0.5), data)
    assert isinstance(info.value, FloatingPointError)
    assert data.served == [4, 4]  # the bad epoch ran to its end, and no further epoch started
    assert trainer.history.epoch == [1] and info.value.history is trainer.history
    # The NaN reached the weights, but the running statistics kept their last finite values.
    assert not np.isfinite(trainer.state.params["conv1"]["kernel"]).all()
    for leaf in jax.tree_util.tree_leaves(trainer.state.batch_stats):
        assert np.isfinite(leaf).all()


class MLP(d2l.Classifier):
    """A ReLU network without batch normalization: nothing bounds its activations."""

    @nn.compact
    def __call__(self, X, train: bool = True):
        X = X.reshape((X.shape[0], -1))
        X = nn.relu(nn.Dense(64)(X))
        X = nn.relu(nn.Dense(64)(X))
        return nn.Dense(10)(X)


def test_huge_learning_rate_diverges():
    # Not BNLeNet: it stays finite even at lr=1e30 (batch norm and the sigmoids bound every
    # activation, so its loss only grows huge), whereas this MLP overflows float32.
    trainer = d2l.Trainer(max_epochs=5, report="none")
    with pytest.raises(TrainingDiverged, match=r"epoch 1: .* nan at learning rate 1e\+06"):
        trainer.fit(MLP(lr=1e6), Scripted())
    assert len(trainer.history) == 0


def test_keyboard_interrupt_returns_the_history_so_far(capsys):
    data = Scripted(interrupt=(2, 2))
    trainer = d2l.Trainer(max_epochs=3, report="none")
    history = trainer.fit(d2l.BNLeNet(lr=0.5), data)
    assert history.epoch == [1] and trainer.history is history
    assert int(trainer.state.step) == 4  # the state of the completed epoch
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "interrupted at epoch 2 of 3" in out[0] and "kept" in out[0]


def count_host_syncs(monkeypatch, num_batches: int) -> int:
    """Reads of array values by Python (float, int, bool, format, tolist, jax.device_get...)
    during a 2-epoch fit: they all go through the ``_value`` property of JAX's arrays."""
    count = 0
    array_type = type(jnp.zeros(()))
    original = array_type._value

    def counting(self):
        nonlocal count
        count += 1
        return original.fget(self)

    with monkeypatch.context() as patch:
        patch.setattr(array_type, "_value", property(counting))
        d2l.Trainer(max_epochs=2, report="none").fit(d2l.BNLeNet(lr=0.5), Scripted(num_batches))
    return count


def test_host_syncs_do_not_grow_with_the_number_of_steps(monkeypatch):
    few, many = count_host_syncs(monkeypatch, 2), count_host_syncs(monkeypatch, 8)
    assert few == many
    assert 0 < few <= 2 * 3  # per epoch: the training loss, the validation loss and accuracy


SEES_GPU = any(device.platform == "gpu" for device in jax.devices())


def test_num_gpus_0_trains_on_the_cpu():
    assert d2l.Trainer(max_epochs=1, num_gpus=0).device.platform == "cpu"


@pytest.mark.gpu
def test_num_gpus_1_trains_on_the_gpu(fashion_mnist_root):
    trainer, history = short_run(fashion_mnist_root, epochs=1)
    assert trainer.device.platform == "gpu" and len(history) == 1


# --- Recomputed statistics -----------------------------------------------------------------------

class FixedBatches:
    """A data module that serves the same list of batches from each of its loaders."""

    def __init__(self, batches):
        self.batches = batches

    def get_dataloader(self, train: bool, *, shuffle=None):
        return list(self.batches)

    def val_dataloader(self):
        return self.get_dataloader(False)


def perturbed_state(model, X, seed: int = 0) -> d2l.TrainState:
    """A TrainState of ``model`` with parameters away from their initial values (gamma not 1,
    beta not 0) and running statistics of 1000, far from any batch's."""
    variables = model.apply_init([X[:1]], jax.random.PRNGKey(seed))
    leaves, tree = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    noise = [jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    params = jax.tree_util.tree_unflatten(
        tree, [leaf * (1 + 0.3 * z) + 0.1 * z for leaf, z in zip(leaves, noise)])
    batch_stats = jax.tree_util.tree_map(lambda leaf: jnp.full_like(leaf, 1e3),
                                         variables["batch_stats"])
    return d2l.TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                                 tx=model.configure_optimizers())


def bright_batches(num_batches: int, batch_size: int = 16) -> list:
    """Random images, batch k (from 0) scaled by 1 + k: every batch has other statistics."""
    rng = np.random.default_rng(20)
    return [(jnp.asarray(rng.random((batch_size, 28, 28, 1), np.float32) * (1 + k)),
             jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32))
            for k in range(num_batches)]


# Each BatchNorm of BNLeNetScratch and the layer whose output it normalizes.
BN_INPUTS = {"bn1": "conv1", "bn2": "conv2", "bn3": "fc1", "bn4": "fc2"}


def batch_statistics(model, state, X) -> dict:
    """Each BatchNorm's per-channel mean and biased variance of ``X``'s batch, in float64, from
    its input in training mode (the output of the layer before it)."""
    _, out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, X,
                         train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"])
    statistics = {}
    for bn, layer in BN_INPUTS.items():
        Z = np.asarray(out["intermediates"][layer]["__call__"][0], np.float64)
        axes = tuple(range(Z.ndim - 1))  # every axis but the channels
        statistics[bn] = (Z.mean(axis=axes), Z.var(axis=axes))
    return statistics


def test_recomputed_statistics_are_the_mean_of_the_batch_statistics():
    model = d2l.BNLeNetScratch(lr=0.1)
    batches = bright_batches(6)
    state = perturbed_state(model, batches[0][0])
    recomputed = d2l.recompute_statistics(model, state, FixedBatches(batches), num_batches=4)
    per_batch = [batch_statistics(model, state, X) for X, _ in batches[:4]]  # the first 4 only
    for bn in BN_INPUTS:
        mean = np.mean([statistics[bn][0] for statistics in per_batch], axis=0)
        var = np.mean([statistics[bn][1] for statistics in per_batch], axis=0)
        # the batches differ: a moving average, or the last batch alone, would not pass
        assert np.abs(per_batch[-1][bn][1] - var).max() > 0.01 * var.max()
        # (and the initial 1000s leave no trace: momentum 1 at the first batch)
        got = recomputed.batch_stats[bn]
        np.testing.assert_allclose(got["running_mean"], mean, rtol=1e-5,
                                   atol=1e-6 * np.abs(mean).max())
        np.testing.assert_allclose(got["running_var"], var, rtol=1e-5, atol=0)
    # Training mode without an update: the parameters and the step are the state's own.
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: a is b, recomputed.params, state.params))
    assert recomputed.step is state.step and recomputed.opt_state is state.opt_state
    # The state itself is unchanged (a new one is returned).
    assert float(state.batch_stats["bn1"]["running_mean"][0]) == 1e3


def short_fit(root, *, after_epoch=None, epochs=2):
    data = Slice(d2l.FashionMNIST(batch_size=64, root=root, seed=0), num_train=40, num_val=20)
    trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1, seed=0, report="none")
    model = d2l.BNLeNetScratch(lr=0.5)
    if after_epoch is not None:
        after_epoch = partial(after_epoch, trainer, model, data)
    return trainer, trainer.fit(model, data, after_epoch=after_epoch)


def test_recomputed_val_accuracy_changes_nothing(fashion_mnist_root):
    trainer, _ = short_fit(fashion_mnist_root, epochs=1)
    state = trainer.state
    # copies (on the CPU a device_get may share the array's buffer)
    before = jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True),
                                    (state.params, state.batch_stats, state.opt_state, state.step))
    data = FixedBatches(bright_batches(3, batch_size=64))
    accuracy = d2l.recomputed_val_accuracy(trainer, d2l.BNLeNetScratch(lr=0.5), data,
                                           num_batches=3)
    assert trainer.state is state
    after = (state.params, state.batch_stats, state.opt_state, state.step)
    jax.tree_util.tree_map(np.testing.assert_array_equal, after, before)  # bit for bit
    # It is the accuracy with the recomputed statistics, not with the running ones.
    expected = d2l.recompute_statistics(d2l.BNLeNetScratch(lr=0.5), state, data, 3)
    assert accuracy == d2l.evaluate(d2l.BNLeNetScratch(lr=0.5), expected, data.val_dataloader())[1]
    assert 0 <= accuracy <= 1


def test_recording_recomputed_accuracy_leaves_the_training_run_as_it_was(fashion_mnist_root):
    recorded = []

    def record(trainer, model, data, epoch):
        recorded.append(d2l.recomputed_val_accuracy(trainer, model, data, num_batches=5))

    trainer, history = short_fit(fashion_mnist_root, after_epoch=record)
    plain_trainer, plain = short_fit(fashion_mnist_root)
    assert history == plain and len(recorded) == 2  # same shuffling, same updates
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(trainer.state.params),
                           jax.device_get(plain_trainer.state.params))
    # the measurement measured something: above chance, and not the running statistics' accuracy
    assert min(recorded) > 0.3 and recorded != history.val_acc


def test_recomputed_val_accuracy_needs_a_momentum_field_and_a_state():
    data = FixedBatches(bright_batches(2))
    with pytest.raises(ValueError, match="trainer.fit"):
        d2l.recomputed_val_accuracy(d2l.Trainer(max_epochs=1), d2l.BNLeNetScratch(), data)
    trainer = d2l.Trainer(max_epochs=1, report="none")
    trainer.fit(d2l.BNLeNet(lr=0.5), Scripted())
    with pytest.raises(TypeError, match="BNLeNet has no momentum field"):
        d2l.recomputed_val_accuracy(trainer, d2l.BNLeNet(lr=0.5), data)
    with pytest.raises(ValueError, match="num_batches must be a positive int"):
        d2l.recomputed_val_accuracy(trainer, d2l.BNLeNetScratch(lr=0.5), data, num_batches=0)


def test_recomputed_val_accuracy_refuses_a_model_without_batch_norm():
    trainer = d2l.Trainer(max_epochs=1, report="none")
    model = d2l.NormLeNet(lr=0.5, norms=(None,) * 4)
    trainer.fit(model, Scripted())
    with pytest.raises(ValueError, match="NormLeNet has no batch-normalization layer with running "
                                         "statistics: nothing to recompute"):
        d2l.recomputed_val_accuracy(trainer, model, FixedBatches(bright_batches(2)))


def test_fit_calls_after_epoch_once_per_epoch_with_the_current_state():
    data = Scripted()
    trainer = d2l.Trainer(max_epochs=3, report="none")
    seen = []
    history = trainer.fit(d2l.BNLeNetScratch(lr=0.5), data, after_epoch=lambda epoch: seen.append(
        (epoch, len(trainer.history), int(trainer.state.step))))
    assert seen == [(1, 1, 4), (2, 2, 8), (3, 3, 12)]  # 4 batches per epoch
    assert len(history) == 3
