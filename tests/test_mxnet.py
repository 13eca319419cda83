"""d2l_bn.mxnet: the scratch layer's statistics, its input checks, the models and the Trainer (a
short run on real Fashion-MNIST, seeding, divergence, Ctrl-C, host syncs). The equivalence with the
built-in layer and the float64 reference is in test_equivalence_*.py."""

import itertools

import mxnet as mx
import numpy as onp
import pytest

from scripted_data import ScriptedData
from mxnet import autograd, gluon, np, npx
from mxnet.gluon import nn

from d2l_bn import mxnet as d2l
from d2l_bn.training import TrainingDiverged

EPS32 = onp.finfo(onp.float32).eps  # 1.19e-7


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5, atol=None) -> None:
    # rtol 1e-5, plus an atol of 16 float32 ulps of the largest |expected|: the two
    # implementations sum in different orders (Gluon's kernel vs our two-pass mean), so entries
    # near zero, e.g. gradients that are sums of terms of either sign, differ by a few ulps of
    # the terms summed rather than of their own size.
    expected = expected.asnumpy() if isinstance(expected, np.ndarray) else onp.asarray(expected)
    actual = actual.asnumpy() if isinstance(actual, np.ndarray) else onp.asarray(actual)
    if atol is None:
        atol = 16 * EPS32 * onp.abs(expected).max()
    assert actual.shape == expected.shape
    onp.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def shifted_batch(shape: tuple, rng: onp.random.Generator) -> np.ndarray:
    """Random input whose features/channels have means in [2, 4] and scales in [0.5, 5]."""
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    mean = rng.uniform(2, 4, per_channel)
    std = rng.uniform(0.5, 5, per_channel)
    return np.array(rng.standard_normal(shape) * std + mean, dtype="float32")


SHAPES = [(32, 12), (8, 6, 10, 10)]  # fully connected (batch, features); conv (N, C, H, W)


def reduce_axes(X) -> tuple:
    return (0,) if X.ndim == 2 else (0, 2, 3)


def train_step(layer, X):
    """A forward pass in training mode: Gluon's mode is autograd's."""
    with autograd.record():
        return layer(X)


def scratch_layer(shape, rng=None, **kwargs) -> d2l.BatchNorm:
    layer = d2l.BatchNorm(shape[1], num_dims=len(shape), **kwargs)
    layer.initialize()
    if rng is not None:
        layer.gamma.set_data(np.array(rng.uniform(0.5, 2, shape[1]), dtype="float32"))
        layer.beta.set_data(np.array(rng.standard_normal(shape[1]), dtype="float32"))
    return layer


# --- The scratch layer on its own ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_training_output_is_standardized_per_channel(shape):
    rng = onp.random.default_rng(0)
    layer = scratch_layer(shape, rng)
    X = shifted_batch(shape, rng)
    Y = train_step(layer, X)
    assert Y.shape == X.shape
    bc = (1, -1) + (1,) * (len(shape) - 2)
    Z = (Y.asnumpy().astype(onp.float64) - layer.beta.data().asnumpy().reshape(bc)) \
        / layer.gamma.data().asnumpy().reshape(bc)  # undo gamma and beta
    axes = reduce_axes(X)
    onp.testing.assert_allclose(Z.mean(axis=axes), onp.zeros(shape[1]), rtol=0, atol=1e-5)
    # eps shrinks the std by sqrt(var / (var + eps)), at most 1e-5 relative for var >= 0.25
    onp.testing.assert_allclose(Z.std(axis=axes), onp.ones(shape[1]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_running_stats_follow_the_momentum_formula(shape):
    rng = onp.random.default_rng(1)
    layer = scratch_layer(shape, momentum=0.3)
    mean, var = onp.zeros(shape[1]), onp.ones(shape[1])
    for _ in range(4):
        X = shifted_batch(shape, rng)
        train_step(layer, X)
        X64, axes = X.asnumpy().astype(onp.float64), reduce_axes(X)
        mean = 0.7 * mean + 0.3 * X64.mean(axis=axes)
        var = 0.7 * var + 0.3 * X64.var(axis=axes)  # biased
    assert_close(layer.running_mean.data(), mean, atol=1e-6)
    assert_close(layer.running_var.data(), var, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_prediction_uses_the_running_stats(shape):
    rng = onp.random.default_rng(2)
    layer = scratch_layer(shape, rng)
    for _ in range(3):
        train_step(layer, shifted_batch(shape, rng))
    X = shifted_batch(shape, rng)
    before = layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy()
    bc = (1, -1) + (1,) * (len(shape) - 2)
    p = {name: getattr(layer, name).data().reshape(bc)
         for name in ("gamma", "beta", "running_mean", "running_var")}
    expected = ((X - p["running_mean"]) / np.sqrt(p["running_var"] + layer.eps) * p["gamma"]
                + p["beta"])
    assert_close(layer(X), expected)  # outside autograd.record(): prediction mode
    with autograd.record(train_mode=False):  # recording does not decide, the mode does
        assert_close(layer(X), expected)
    assert onp.array_equal(layer.running_mean.data().asnumpy(), before[0])
    assert onp.array_equal(layer.running_var.data().asnumpy(), before[1])


def test_with_momentum_one_prediction_equals_training_on_the_same_batch():
    # momentum=1 keeps only the last batch's statistics (Keras' momentum=0): evaluating that
    # batch must then give the training output.
    rng = onp.random.default_rng(3)
    layer = scratch_layer((8, 6, 5, 5), momentum=1.0)
    X = shifted_batch((8, 6, 5, 5), rng)
    Y_train = train_step(layer, X)
    assert_close(layer(X), Y_train, atol=1e-5)


def test_batch_norm_is_pure_and_the_layer_keeps_running_stats_out_of_autograd():
    X = np.array(onp.random.default_rng(4).standard_normal((4, 3)), dtype="float32")
    gamma, beta = np.ones(3), np.zeros(3)
    for a in (X, gamma, beta):
        a.attach_grad()
    mean, var = np.zeros(3), np.ones(3)
    with autograd.record():
        Y, new_mean, new_var = d2l.batch_norm(mx.nd, X, gamma, beta, mean, var, training=True)
        loss = (Y * np.arange(12).reshape(4, 3)).sum()
    assert onp.array_equal(mean.asnumpy(), onp.zeros(3))
    assert onp.array_equal(var.asnumpy(), onp.ones(3))
    loss.backward()  # Y is in the graph
    assert onp.abs(X.grad.asnumpy()).max() > 0
    _, same_mean, same_var = d2l.batch_norm(mx.nd, X, gamma, beta, mean, var, training=False)
    assert same_mean is mean and same_var is var
    # The layer's running statistics are not in a graph: a second recorded step may
    # overwrite them in place
    layer = scratch_layer((4, 3))
    for _ in range(2):
        train_step(layer, X)
    for stat in (layer.running_mean.data(), layer.running_var.data()):
        with pytest.raises(mx.MXNetError, match="not in a computational graph"):
            stat.backward()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_the_compiled_graph_computes_what_batch_norm_computes_as_written(shape, unbiased):
    """The layer runs batch_norm hybridized; with hybridize(active=False) the same function runs
    operation by operation on mxnet.ndarray. Both give the same outputs, gradients and running
    statistics, over steps of two batch sizes and in prediction."""
    rng = onp.random.default_rng(7)
    layers = [scratch_layer(shape, onp.random.default_rng(8), unbiased_running_var=unbiased)
              for _ in range(2)]
    layers[1].hybridize(active=False)
    for batch in (shape, (shape[0] // 2,) + shape[1:], shape):
        X = np.array(rng.normal(2, 3, batch), dtype="float32")
        results = []
        for layer in layers:
            X_ = X.copy()
            X_.attach_grad()
            with autograd.record():
                Y = layer(X_)
                loss = (Y * Y * Y).sum()
            loss.backward()
            results.append([Y, X_.grad, layer.gamma.grad(), layer.running_mean.data(),
                            layer.running_var.data(), layer(X)])
        for compiled, as_written in zip(*results):
            assert_close(compiled, as_written, atol=1e-4)
    # (Gluon's private state: the first layer ran a cached graph, the second did not)
    assert layers[0].train_graph._cached_op is not None
    assert layers[1].train_graph._cached_op is None


def test_running_stats_are_parameters_that_are_not_trained(tmp_path):
    layer = scratch_layer((4, 5))
    params = layer.collect_params()
    assert sorted(name.split("_", 1)[1] for name in params.keys()) == \
        ["beta", "gamma", "running_mean", "running_var"]
    assert {name.split("_", 1)[1]: p.grad_req for name, p in params.items()} == \
        {"gamma": "write", "beta": "write", "running_mean": "null", "running_var": "null"}
    train_step(layer, np.array(onp.random.default_rng(5).standard_normal((4, 5)) + 3,
                               dtype="float32"))
    layer.save_parameters(str(tmp_path / "bn.params"))  # saved with the layer ...
    loaded = d2l.BatchNorm(5, num_dims=2)
    loaded.load_parameters(str(tmp_path / "bn.params"))  # ... and loaded back
    assert onp.array_equal(loaded.running_mean.data().asnumpy(),
                           layer.running_mean.data().asnumpy())
    assert onp.abs(loaded.running_mean.data().asnumpy()).min() > 0.1
    layer.cast("float64")  # like reset_ctx: the running statistics follow the block
    assert layer.running_var.data().dtype == onp.float64
    assert train_step(layer, np.ones((4, 5), dtype="float64")).dtype == onp.float64
    assert "(train_graph): Hybridized(batch_norm, True, eps=1e-05)" in repr(layer)


# --- Equivalence with Gluon's own layer ----------------------------------------------------------

def mxnet_group_norm(X: np.ndarray, gamma, beta, num_groups: int) -> np.ndarray:
    """MXNet 1.9's own group normalization, nd.GroupNorm (there is no npx.group_norm, and Gluon's
    nn.GroupNorm takes no mxnet.np arrays). Its gamma and beta are per GROUP, (num_groups,), and
    it needs at least 3 axes: a 2-D batch gets a trailing one."""
    shape = X.shape
    Y = mx.nd.GroupNorm(X.reshape(shape + (1,) * (3 - X.ndim)).as_nd_ndarray(),
                        mx.nd.array(gamma), mx.nd.array(beta), num_groups=num_groups, eps=1e-5)
    return Y.as_np_ndarray().reshape(shape)


def test_group_norm_matches_mxnet():
    # MXNet's gamma and beta are per group, ours per channel: compared with gamma ones and beta
    # zeros (either way the same), then with per-group values repeated over each group's channels
    rng = onp.random.default_rng(0)
    for shape, num_groups in [((8, 12), 4), ((4, 6, 5, 5), 3)]:
        X = np.array(rng.standard_normal(shape) * 3 + 2, dtype="float32")
        C, per_group = shape[1], shape[1] // num_groups
        expected = mxnet_group_norm(X, onp.ones(num_groups), onp.zeros(num_groups), num_groups)
        assert_close(d2l.group_norm(X, np.ones(C), np.zeros(C), num_groups), expected)
        layer = d2l.GroupNorm(C, num_groups)
        layer.initialize()
        assert_close(layer(X), expected)
        gamma, beta = rng.uniform(0.5, 1.5, num_groups), rng.standard_normal(num_groups)
        assert_close(d2l.group_norm(X, np.array(onp.repeat(gamma, per_group), dtype="float32"),
                                    np.array(onp.repeat(beta, per_group), dtype="float32"),
                                    num_groups),
                     mxnet_group_norm(X, gamma, beta, num_groups))


def test_layer_norm_matches_mxnet():
    rng = onp.random.default_rng(8)
    for shape in [(8, 20), (4, 3, 7, 7)]:
        X = shifted_batch(shape, rng)
        gamma = np.array(rng.standard_normal(shape[1:]), dtype="float32")
        beta = np.array(rng.standard_normal(shape[1:]), dtype="float32")
        # npx.layer_norm normalizes over one axis: flatten each example onto it
        expected = npx.layer_norm(X.reshape(shape[0], -1), gamma.reshape(-1), beta.reshape(-1),
                                  axis=-1, eps=1e-5).reshape(shape)
        assert_close(d2l.layer_norm(X, gamma, beta), expected)
    # one example alone is normalized the same way: no dependence on the batch
    assert_close(d2l.layer_norm(X[:1], gamma, beta), expected[:1])


# --- Errors that say what to do ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12,), (4, 6, 5), (2, 6, 3, 3, 3)])
def test_wrong_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=r"2-D .*4-D .*Flatten"):
        d2l.checked_input(np.ones(shape), np.ones(6), np.zeros(6), np.zeros(6), np.ones(6),
                          training=True)


def test_wrong_feature_count_is_rejected():
    layer = scratch_layer((2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"5 features/channels.*num_features=5"):
        layer(np.ones((2, 5, 4, 4)))
    with pytest.raises(ValueError, match=r"num_dims=4 .*2-D input"):
        layer(np.ones((2, 6)))


def test_integer_and_foreign_inputs_are_rejected():
    layer = scratch_layer((4, 3))
    with pytest.raises(TypeError, match=r"X\.astype\('float32'\)"):
        layer(np.ones((4, 3), dtype="int64"))
    with pytest.raises(TypeError, match=r"mxnet\.np\.array"):
        d2l.checked_input(onp.ones((4, 3)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3),
                          training=True)


def test_one_value_per_feature_fails_in_training_only():
    layer = scratch_layer((1, 6))
    with pytest.raises(ValueError, match=r"at least 2.*prediction mode.*autograd\.record"):
        train_step(layer, np.ones((1, 6)))
    assert layer(np.ones((1, 6))).shape == (1, 6)


def test_one_image_is_fine_in_training():
    layer = scratch_layer((1, 3, 4, 4))
    assert train_step(layer, np.ones((1, 3, 4, 4))).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("num_dims", [1, 3, 5])
def test_invalid_num_dims(num_dims):
    with pytest.raises(ValueError, match=r"num_dims must be 2 .*or 4"):
        d2l.BatchNorm(6, num_dims=num_dims)


# --- Models --------------------------------------------------------------------------------------

def num_trained(model) -> int:
    return sum(p.data().size for p in model.collect_params().values() if p.grad_req != "null")


# Parameters, by hand (weights + biases; gamma + beta for each BN):
#   conv 1->6, 5x5: 6*25 + 6 = 156           BN(6):   12
#   conv 6->16, 5x5: 16*6*25 + 16 = 2416     BN(16):  32
#   dense 256->120: 256*120 + 120 = 30840    BN(120): 240
#   dense 120->84: 120*84 + 84 = 10164       BN(84):  168
#   dense 84->10: 84*10 + 10 = 850
#   total 156 + 12 + 2416 + 32 + 30840 + 240 + 10164 + 168 + 850 = 44878
# plus 2 * (6 + 16 + 120 + 84) = 452 running statistics, which are not trained.
@pytest.mark.parametrize("cls, bn, hybridized", [(d2l.BNLeNetScratch, d2l.BatchNorm, False),
                                                 (d2l.BNLeNet, nn.BatchNorm, True)])
def test_models(cls, bn, hybridized):
    mx.random.seed(0)
    model = cls(lr=0.1)
    assert num_trained(model) == 44878
    assert sum(p.data().size for p in model.collect_params().values()) == 44878 + 452
    assert isinstance(model.net[1], bn)
    assert isinstance(model.net, nn.HybridBlock) == hybridized
    X = np.random.uniform(size=(16, 1, 28, 28))
    model.apply_init([X], d2l.init_cnn)
    assert model(X).shape == (16, 10)
    with autograd.record():
        assert model(X).shape == (16, 10)
    assert model(X[:1]).shape == (1, 10)


@pytest.mark.parametrize("cls", [d2l.BNLeNetScratch, d2l.BNLeNet])
def test_apply_init_changes_weights_but_not_running_stats(cls):
    mx.random.seed(0)
    model = cls()
    conv_before = model.net[0].weight.data().copy()
    model.apply_init([np.random.uniform(size=(8, 1, 28, 28)) * 5], d2l.init_cnn)
    assert not onp.array_equal(model.net[0].weight.data().asnumpy(), conv_before.asnumpy())
    bound = (6 / (25 * 1 + 25 * 6)) ** 0.5  # Xavier-uniform bound of the first conv
    assert onp.abs(model.net[0].weight.data().asnumpy()).max() <= bound
    assert onp.array_equal(model.net[1].running_mean.data().asnumpy(), onp.zeros(6))


def test_fashion_mnist_gives_arrays(fashion_mnist_root):
    data = d2l.FashionMNIST(batch_size=32, root=fashion_mnist_root)
    X, y = next(iter(data.train_dataloader()))
    assert isinstance(X, np.ndarray) and X.dtype == onp.float32 and X.shape == (32, 1, 28, 28)
    assert isinstance(y, np.ndarray) and y.dtype == onp.int64 and y.shape == (32,)


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


def short_run(root, cls=d2l.BNLeNet, epochs=3, lr=0.5):
    mx.random.seed(0)  # the initial weights
    model = cls(lr=lr)
    data = Slice(d2l.FashionMNIST(batch_size=64, root=root, seed=0), num_train=40, num_val=20)
    model.apply_init([next(iter(data.train_dataloader()))[0]], d2l.init_cnn)
    trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1, seed=0, report="none")
    return trainer, trainer.fit(model, data)


@pytest.mark.parametrize("cls", [d2l.BNLeNet, d2l.BNLeNetScratch])
def test_short_real_run_learns_and_repeats(fashion_mnist_root, cls):
    trainer, history = short_run(fashion_mnist_root, cls)
    assert trainer.ctx.device_type in ("cpu", "gpu")
    assert history is trainer.history and history.epoch == [1, 2, 3]
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_acc) == 3
    assert history.train_loss[-1] < history.train_loss[0] < 2.4  # ln 10 = 2.30 at chance
    assert history.val_loss[-1] < 1.0 and history.val_acc[-1] > 0.65  # chance: 0.1
    _, again = short_run(fashion_mnist_root, cls)
    assert again == history  # seeded CPU runs repeat exactly


def Scripted(num_batches=4, **kwargs):
    return ScriptedData((16, 1, 28, 28),
                        lambda X, y: (np.array(X, dtype="float32"), np.array(y, dtype="int64")),
                        num_batches=num_batches, **kwargs)


def test_nan_loss_raises_at_the_end_of_that_epoch_and_keeps_history():
    data = Scripted(nan_epoch=2)
    trainer = d2l.Trainer(max_epochs=4, report="none")
    with pytest.raises(TrainingDiverged, match=r"epoch 2.*nan.*learning rate 0\.1.*halve") as info:
        trainer.fit(d2l.BNLeNet(lr=0.1), data)
    assert isinstance(info.value, FloatingPointError)
    assert data.served == [4, 4]  # the bad epoch ran to its end, and no further epoch started
    assert trainer.history.epoch == [1] and info.value.history is trainer.history


class MLP(d2l.Classifier):
    """A ReLU network without batch normalization: nothing bounds its activations."""

    def __init__(self, lr: float):
        super().__init__(lr)
        self.net = nn.Sequential()
        self.net.add(nn.Flatten(), nn.Dense(64, activation="relu", in_units=28 * 28),
                     nn.Dense(64, activation="relu", in_units=64), nn.Dense(10, in_units=64))
        self.initialize()


def test_huge_learning_rate_diverges():
    # Not BNLeNet: it stays finite even at lr=1e30 (batch norm and the sigmoids bound every
    # activation, so its loss only grows huge), whereas this MLP overflows float32.
    trainer = d2l.Trainer(max_epochs=5, report="none")
    mx.random.seed(0)
    with pytest.raises(TrainingDiverged, match=r"epoch 1: .* nan at learning rate 1e\+06"):
        trainer.fit(MLP(lr=1e6), Scripted())
    assert len(trainer.history) == 0


def test_keyboard_interrupt_returns_the_history_so_far(capsys):
    data = Scripted(interrupt=(2, 2))
    trainer = d2l.Trainer(max_epochs=3, report="none")
    history = trainer.fit(d2l.BNLeNet(), data)
    assert history.epoch == [1] and trainer.history is history
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "interrupted at epoch 2 of 3" in out[0] and "kept" in out[0]


def count_host_syncs(monkeypatch, num_batches: int) -> int:
    """Python-level reads of array values (item, float, bool, tolist, asnumpy, wait_to_read, ...)
    during a 2-epoch fit; a read made inside another (tolist calls asnumpy) counts once."""
    count, depth = 0, 0

    def counting(name):
        original = getattr(np.ndarray, name)

        def wrapper(self, *args, **kwargs):
            nonlocal count, depth
            count += depth == 0
            depth += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth -= 1
        return wrapper

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "asnumpy", "asscalar", "wait_to_read", "__float__",
                     "__int__", "__bool__"):
            patch.setattr(np.ndarray, name, counting(name))
        mx.random.seed(0)
        d2l.Trainer(max_epochs=2, report="none").fit(d2l.BNLeNet(), Scripted(num_batches))
    return count


def test_host_syncs_do_not_grow_with_the_number_of_steps(monkeypatch):
    few, many = count_host_syncs(monkeypatch, 2), count_host_syncs(monkeypatch, 8)
    assert few == many
    assert 0 < few <= 2 * 2  # per epoch: the training loss, the validation results


# --- Recomputed statistics -----------------------------------------------------------------------

class Shifted:
    """A data module of ``num_batches`` fixed training batches whose k-th batch is uniform noise
    plus k (so each batch's statistics differ clearly), and the same batches as validation set."""

    def __init__(self, num_batches: int = 5, batch_size: int = 16):
        rng = onp.random.default_rng(0)
        self.batches = [(np.array(rng.random((batch_size, 1, 28, 28)) + k, dtype="float32"),
                         np.array(rng.integers(0, 10, batch_size), dtype="int64"))
                        for k in range(num_batches)]
        self.shuffles = []  # the `shuffle` of each get_dataloader call

    def get_dataloader(self, train: bool, *, shuffle=None):
        self.shuffles.append(shuffle)
        return list(self.batches)

    def val_dataloader(self):
        return list(self.batches)


def lenet(cls):
    mx.random.seed(0)
    model = cls(lr=0.1) if cls is d2l.BNLeNetScratch else cls(lr=0.1, norms=("batch",) * 4)
    model.apply_init([np.random.uniform(size=(8, 1, 28, 28))], d2l.init_cnn)
    return model


def parameters(model) -> list:
    """Copies of all of the model's parameters, running statistics included, in order (Gluon's
    names carry a process-wide counter, so two models' names differ)."""
    return [p.data().asnumpy().copy() for p in model.collect_params().values()]


# Our layers are found by their momentum, not by class, as the notebook's own BatchNorm class
# must be (NormLeNet's BatchNormVariant is a subclass of d2l_bn's BatchNorm, not of that one).
@pytest.mark.parametrize("cls", [d2l.BNLeNetScratch, d2l.NormLeNet])
def test_recompute_statistics_averages_the_batch_statistics_of_the_first_batches(cls):
    model, data = lenet(cls), Shifted(num_batches=5)
    layers = [block for block in model.net if hasattr(block, "momentum")]
    assert len(layers) == 4
    # Each layer's inputs in training mode (which do not depend on the running statistics),
    # in float64, from a pass of their own
    inputs = {id(layer): [] for layer in layers}
    hooks = [layer.register_forward_pre_hook(
        lambda block, args: inputs[id(block)].append(args[0].asnumpy().astype("float64")))
        for layer in layers]
    with autograd.train_mode():
        for X, _ in data.batches:
            model(X)
    for hook in hooks:
        hook.detach()
    d2l.recompute_statistics(model, data, num_batches=3)
    assert data.shuffles == [False]  # the stored order, which draws nothing from data.rng
    for layer in layers:
        assert layer.momentum == 0.1  # as it was
        per_batch = [(X.mean(axis=reduce_axes(X)), X.var(axis=reduce_axes(X)))
                     for X in inputs[id(layer)]]
        mean = onp.mean([m for m, _ in per_batch[:3]], axis=0)  # the first 3 batches
        var = onp.mean([v for _, v in per_batch[:3]], axis=0)
        assert_close(layer.running_mean.data(), mean)
        assert_close(layer.running_var.data(), var)
        # the batches differ clearly: neither the last one's statistics nor those of all
        # five would pass
        for wrong in (per_batch[2][0], onp.mean([m for m, _ in per_batch], axis=0)):
            assert not onp.allclose(layer.running_mean.data().asnumpy(), wrong, rtol=1e-3)


def test_recomputed_val_accuracy_leaves_the_model_bit_identical():
    model, data = lenet(d2l.BNLeNetScratch), Shifted()
    trainer = d2l.Trainer(max_epochs=1, report="none")
    with autograd.train_mode():  # running statistics that are not the recomputed ones
        for X, _ in data.batches:
            model(X)
    before, mean_before = parameters(model), model.net[1].running_mean.data().asnumpy()
    accuracy = d2l.recomputed_val_accuracy(trainer, model, data, num_batches=3)
    after = parameters(model)
    assert len(before) == len(after) == 10 + 8 + 8  # weights, biases; gamma, beta; statistics
    assert all(onp.array_equal(b, a) for b, a in zip(before, after))
    assert [block.momentum for block in model.net if hasattr(block, "momentum")] == [0.1] * 4
    assert isinstance(accuracy, float) and 0 <= accuracy <= 1
    assert len(trainer.history) == 0
    # what it measured is the model with recomputed statistics
    d2l.recompute_statistics(model, data, num_batches=3)
    assert accuracy == trainer.evaluate(model, data.val_dataloader())[1]
    assert not onp.array_equal(model.net[1].running_mean.data().asnumpy(), mean_before)


def test_recomputed_val_accuracy_refuses_a_model_without_batch_norm_or_batches():
    data, trainer = Shifted(num_batches=2), d2l.Trainer(max_epochs=1, report="none")
    with pytest.raises(ValueError, match="no batch-normalization layer with running "
                                         "statistics: nothing to recompute"):
        d2l.recomputed_val_accuracy(trainer, d2l.NormLeNet(norms=(None,) * 4), data)
    # BNLeNet: Gluon's nn.BatchNorm, which has no momentum of ours to set
    with pytest.raises(ValueError, match="that can be recomputed: Gluon's nn.BatchNorm fixes "
                                         "its momentum.*build the model with our BatchNorm"):
        d2l.recomputed_val_accuracy(trainer, d2l.BNLeNet(), data)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_batches must be a positive int"):
            d2l.recomputed_val_accuracy(trainer, d2l.BNLeNetScratch(), data, num_batches=bad)
    assert data.shuffles == []  # refused before any work


class SliceWithStoredOrder(Slice):
    """Slice, with the first batches of the training split in stored order too."""

    def get_dataloader(self, train: bool, *, shuffle=None):
        return Take(self.data.get_dataloader(train, shuffle=shuffle), self.num_train)


def test_recording_after_each_epoch_leaves_the_training_run_as_it_was(fashion_mnist_root):
    def run(record: bool):
        data = SliceWithStoredOrder(d2l.FashionMNIST(batch_size=32, root=fashion_mnist_root),
                                    num_train=12, num_val=4)
        mx.random.seed(0)
        model = d2l.BNLeNetScratch(lr=0.1)
        model.apply_init([next(iter(data.data.get_dataloader(True)))[0]], d2l.init_cnn)
        trainer = d2l.Trainer(max_epochs=3, report="none")
        recorded = []
        after_epoch = (lambda epoch: recorded.append(
            d2l.recomputed_val_accuracy(trainer, model, data, num_batches=5))
            if record else None)
        history = trainer.fit(model, data, after_epoch=after_epoch)
        return history, parameters(model), recorded

    plain, plain_parameters, _ = run(record=False)
    recorded_history, recorded_parameters, recorded = run(record=True)
    assert recorded_history == plain  # the same losses and accuracies, to the last bit
    assert len(plain_parameters) == len(recorded_parameters)
    assert all(onp.array_equal(p, r) for p, r in zip(plain_parameters, recorded_parameters))
    assert len(recorded) == 3 and all(0 <= accuracy <= 1 for accuracy in recorded)


def test_fit_calls_after_epoch_once_per_epoch_after_recording_it():
    trainer = d2l.Trainer(max_epochs=3, report="none")
    seen = []
    trainer.fit(d2l.BNLeNet(), Scripted(),
                after_epoch=lambda epoch: seen.append((epoch, len(trainer.history))))
    assert seen == [(1, 1), (2, 2), (3, 3)]
