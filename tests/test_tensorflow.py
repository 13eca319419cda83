"""d2l_bn.tensorflow: the scratch layer's statistics, its input checks, the models and the Trainer
(a short run on real Fashion-MNIST, seeding, divergence, Ctrl-C, host syncs), and the regression
test for d2l's TensorFlow trainer, which never passed ``training=True``. The equivalence with the
built-in layer and the float64 reference is in test_equivalence_*.py."""

import itertools
from functools import partial

import keras
import numpy as np
import pytest

from scripted_data import ScriptedData
import tensorflow as tf
from keras import layers
from tensorflow.python.framework import ops as tf_ops

from d2l_bn import tensorflow as d2l
from d2l_bn.training import TrainingDiverged

EPS32 = np.finfo(np.float32).eps  # 1.19e-7


def assert_close(actual, expected, atol=None) -> None:
    # rtol 1e-5, plus by default an atol of 16 float32 ulps of the largest |expected|: the two
    # implementations compute in different orders (Keras' tf.nn.batch_normalization computes
    # x * scale + (beta - mean * scale), we (x - mean) / sqrt(var + eps) * gamma + beta), so
    # entries near zero differ by a few ulps of the terms combined rather than of their own size.
    actual, expected = np.asarray(actual), np.asarray(expected)
    if atol is None:
        atol = 16 * EPS32 * np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


def shifted_batch(shape: tuple, rng: np.random.Generator) -> tf.Tensor:
    """Random input whose features/channels (last axis) have means in [2, 4], scales in [0.5, 5]."""
    mean = rng.uniform(2, 4, size=shape[-1])
    std = rng.uniform(0.5, 5, size=shape[-1])
    return tf.constant(rng.standard_normal(shape) * std + mean, dtype=tf.float32)


SHAPES = [(32, 12), (8, 10, 10, 6)]  # dense (batch, features); conv (N, H, W, C)


def reduce_axes(X) -> tuple:
    return (0,) if len(X.shape) == 2 else (0, 1, 2)


def randomize(layer, rng: np.random.Generator) -> None:
    layer.gamma.assign(rng.uniform(0.5, 2, size=layer.gamma.shape))
    layer.beta.assign(rng.standard_normal(layer.beta.shape))


# --- The scratch layer on its own ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_training_output_is_standardized_per_channel(shape):
    rng = np.random.default_rng(0)
    layer = d2l.BatchNorm(shape[-1], num_dims=len(shape))
    randomize(layer, rng)
    X = shifted_batch(shape, rng)
    Y = layer(X, training=True)
    assert Y.shape == X.shape
    Z = ((Y - layer.beta) / layer.gamma).numpy()  # undo gamma and beta
    axes = reduce_axes(X)
    np.testing.assert_allclose(Z.mean(axis=axes), np.zeros(shape[-1]), rtol=0, atol=1e-5)
    # eps shrinks the std by sqrt(var / (var + eps)), at most 1e-5 relative for var >= 0.25
    np.testing.assert_allclose(Z.std(axis=axes), np.ones(shape[-1]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_running_stats_follow_the_momentum_formula(shape):
    rng = np.random.default_rng(1)
    layer = d2l.BatchNorm(shape[-1], num_dims=len(shape), momentum=0.3)
    mean, var = np.zeros(shape[-1]), np.ones(shape[-1])
    for _ in range(4):
        X = shifted_batch(shape, rng)
        layer(X, training=True)
        X64, axes = X.numpy().astype(np.float64), reduce_axes(X)
        mean = 0.7 * mean + 0.3 * X64.mean(axis=axes)
        var = 0.7 * var + 0.3 * X64.var(axis=axes)  # biased, by default
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_prediction_uses_the_running_stats(shape):
    rng = np.random.default_rng(2)
    layer = d2l.BatchNorm(shape[-1], num_dims=len(shape))
    randomize(layer, rng)
    for _ in range(3):
        layer(shifted_batch(shape, rng), training=True)
    X = shifted_batch(shape, rng)
    before = layer.running_mean.numpy(), layer.running_var.numpy()
    expected = ((X - layer.running_mean) / tf.sqrt(layer.running_var + layer.eps) * layer.gamma
                + layer.beta)
    np.testing.assert_allclose(layer(X, training=False), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer(X), expected, rtol=1e-6, atol=1e-6)  # None: prediction
    assert np.array_equal(layer.running_mean.numpy(), before[0])
    assert np.array_equal(layer.running_var.numpy(), before[1])


def test_with_momentum_one_prediction_equals_training_on_the_same_batch():
    # momentum=1 keeps only the last batch's statistics (Keras' momentum=0): predicting on that
    # batch must then give the training output.
    layer = d2l.BatchNorm(6, num_dims=4, momentum=1.0)
    X = shifted_batch((8, 5, 5, 6), np.random.default_rng(3))
    Y_train = layer(X, training=True)
    np.testing.assert_allclose(layer(X, training=False), Y_train, rtol=1e-5, atol=1e-5)


def test_batch_norm_is_pure_and_keeps_running_stats_out_of_the_gradient():
    X = tf.random.stateless_normal((4, 3), seed=(0, 0))
    gamma, beta = tf.Variable(tf.ones(3)), tf.Variable(tf.zeros(3))
    mean, var = tf.zeros(3), tf.ones(3)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(X)
        Y, new_mean, new_var = d2l.batch_norm(X, gamma, beta, mean, var, training=True)
    assert np.array_equal(mean, np.zeros(3)) and np.array_equal(var, np.ones(3))
    assert all(g is not None for g in tape.gradient(Y, [X, gamma, beta]))
    assert tape.gradient(new_mean, X) is None and tape.gradient(new_var, X) is None
    _, same_mean, same_var = d2l.batch_norm(X, gamma, beta, mean, var, training=False)
    assert same_mean is mean and same_var is var


def test_running_stats_are_non_trainable_weights():
    layer = d2l.BatchNorm(5, num_dims=2)
    names = lambda weights: {w.path.split("/")[-1] for w in weights}  # noqa: E731
    assert names(layer.trainable_weights) == {"gamma", "beta"}
    assert names(layer.non_trainable_weights) == {"running_mean", "running_var"}
    assert [tuple(w.shape) for w in layer.weights] == [(5,)] * 4  # created with the layer
    double = d2l.BatchNorm(5, num_dims=2, dtype="float64")  # Keras' dtype policy, like .double()
    assert double.running_var.dtype == "float64"
    assert double(tf.random.normal((4, 5), dtype=tf.float64), training=True).dtype == tf.float64
    config = layer.get_config()
    expected = {"num_features": 5, "num_dims": 2, "momentum": 0.1, "eps": 1e-5}
    assert expected.items() <= config.items()
    assert d2l.BatchNorm.from_config(config).num_features == 5


# --- Equivalence with Keras' own layer -----------------------------------------------------------

def test_group_norm_matches_keras():
    rng = np.random.default_rng(0)
    for shape, num_groups in [((8, 12), 4), ((4, 5, 5, 6), 3)]:
        X = tf.constant(rng.standard_normal(shape) * 3 + 2, dtype=tf.float32)
        gamma = tf.constant(rng.uniform(0.5, 1.5, shape[-1]), dtype=tf.float32)
        beta = tf.constant(rng.standard_normal(shape[-1]), dtype=tf.float32)
        ref = layers.GroupNormalization(groups=num_groups, axis=-1, epsilon=1e-5)
        ref.build(shape)
        ref.gamma.assign(gamma)
        ref.beta.assign(beta)
        assert_close(d2l.group_norm(X, gamma, beta, num_groups), ref(X))
        layer = d2l.GroupNorm(shape[-1], num_groups)
        plain = layers.GroupNormalization(groups=num_groups, axis=-1, epsilon=1e-5)
        assert_close(layer(X), plain(X))


def test_layer_norm_matches_keras():
    rng = np.random.default_rng(7)
    for shape, axis in [((8, 20), -1), ((4, 7, 7, 3), [1, 2, 3])]:
        X = shifted_batch(shape, rng)
        gamma = tf.constant(rng.standard_normal(shape[1:]), dtype=tf.float32)
        beta = tf.constant(rng.standard_normal(shape[1:]), dtype=tf.float32)
        ref = layers.LayerNormalization(axis=axis, epsilon=1e-5)
        ref.build(shape)
        ref.gamma.assign(gamma)
        ref.beta.assign(beta)
        expected = ref(X)
        assert_close(d2l.layer_norm(X, gamma, beta), expected)
    # one example alone is normalized the same way: no dependence on the batch
    assert_close(d2l.layer_norm(X[:1], gamma, beta), expected[:1])


# --- Errors that say what to do ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12,), (4, 5, 6), (2, 3, 3, 3, 6)])
def test_wrong_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=r"2-D .*4-D .*Flatten"):
        d2l.batch_norm(tf.zeros(shape), tf.ones(6), tf.zeros(6), tf.zeros(6), tf.ones(6),
                       training=True)


def test_wrong_feature_count_is_rejected():
    layer = d2l.BatchNorm(6, num_dims=4)
    with pytest.raises(ValueError, match=r"5 features/channels.*num_features=5"):
        layer(tf.zeros((2, 4, 4, 5)), training=True)
    with pytest.raises(ValueError, match=r"num_dims=4 .*2-D input"):
        layer(tf.zeros((2, 6)), training=True)


def test_integer_and_numpy_inputs_are_rejected():
    with pytest.raises(TypeError, match=r"tf\.cast\(X, tf\.float32\)"):
        d2l.BatchNorm(3, num_dims=2)(tf.ones((4, 3), dtype=tf.int64), training=True)
    with pytest.raises(TypeError, match=r"tf\.convert_to_tensor"):
        d2l.batch_norm(np.ones((4, 3), np.float32), tf.ones(3), tf.zeros(3), tf.zeros(3),
                       tf.ones(3), training=True)


def test_one_value_per_feature_fails_in_training_only():
    layer = d2l.BatchNorm(6, num_dims=2)
    with pytest.raises(ValueError, match=r"at least 2.*training=False"):
        layer(tf.zeros((1, 6)), training=True)
    assert layer(tf.zeros((1, 6)), training=False).shape == (1, 6)


def test_one_image_is_fine_in_training():
    layer = d2l.BatchNorm(3, num_dims=4)
    assert layer(tf.random.normal((1, 4, 4, 3)), training=True).shape == (1, 4, 4, 3)


@pytest.mark.parametrize("num_dims", [1, 3, 5])
def test_invalid_num_dims(num_dims):
    with pytest.raises(ValueError, match=r"num_dims must be 2 .*or 4"):
        d2l.BatchNorm(6, num_dims=num_dims)


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"at least 2-D.*X\[None\]"):
        d2l.layer_norm(tf.zeros(5), tf.ones(5), tf.zeros(5))
    with pytest.raises(ValueError, match=r"shape of one example, \(5,\)"):
        d2l.layer_norm(tf.zeros((2, 5)), tf.ones(4), tf.zeros(5))


# --- Models --------------------------------------------------------------------------------------

# Parameters, by hand (weights + biases; gamma + beta for each BN):
#   conv 1->6, 5x5: 25*6 + 6 = 156           BN(6):   12
#   conv 6->16, 5x5: 25*6*16 + 16 = 2416     BN(16):  32
#   dense 256->120: 256*120 + 120 = 30840    BN(120): 240
#   dense 120->84: 120*84 + 84 = 10164       BN(84):  168
#   dense 84->10: 84*10 + 10 = 850
#   trainable 156 + 12 + 2416 + 32 + 30840 + 240 + 10164 + 168 + 850 = 44878, as in PyTorch;
#   non-trainable: running mean and variance, 2 * (6 + 16 + 120 + 84) = 452
def count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.mark.parametrize("cls, bn", [(d2l.BNLeNetScratch, d2l.BatchNorm),
                                     (d2l.BNLeNet, layers.BatchNormalization)])
def test_models(cls, bn):
    keras.utils.set_random_seed(0)
    model = cls(lr=0.1)  # built on construction: keras.Input gives the input shape
    assert count(model.trainable_weights) == 44878
    assert count(model.non_trainable_weights) == 452
    assert isinstance(model.net.layers[1], bn)
    if bn is layers.BatchNormalization:
        assert (model.net.layers[1].momentum, model.net.layers[1].epsilon) == (0.9, 1e-5)
    X = tf.random.uniform((16, 28, 28, 1))
    assert model(X, training=True).shape == (16, 10)
    assert model(X[:1], training=False).shape == (1, 10)


def test_construction_is_seeded_and_xavier_uniform():
    # What d2l_bn.torch's init_cnn does, Keras' defaults already do: glorot_uniform kernels.
    keras.utils.set_random_seed(0)
    a = d2l.BNLeNetScratch()
    keras.utils.set_random_seed(0)
    b = d2l.BNLeNetScratch()
    assert all(np.array_equal(v, w) for v, w in zip(a.weights, b.weights))
    kernel, bias = a.net.layers[0].kernel.numpy(), a.net.layers[0].bias.numpy()
    bound = (6 / (25 * 1 + 25 * 6)) ** 0.5  # Xavier-uniform bound of the first conv
    assert kernel.shape == (5, 5, 1, 6) and np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound and not bias.any()


def test_fashion_mnist_gives_tensors(fashion_mnist_root):
    data = d2l.FashionMNIST(batch_size=32, root=fashion_mnist_root)
    X, y = next(iter(data.train_dataloader()))
    assert isinstance(X, tf.Tensor) and X.dtype == tf.float32 and X.shape == (32, 28, 28, 1)
    assert isinstance(y, tf.Tensor) and y.dtype == tf.int64 and y.shape == (32,)


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
    keras.utils.set_random_seed(0)  # the initial weights
    model = cls(lr=lr)
    data = Slice(d2l.FashionMNIST(batch_size=64, root=root, seed=0), num_train=30, num_val=10)
    trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1, seed=0, report="none")
    return trainer, trainer.fit(model, data)


@pytest.mark.parametrize("cls", [d2l.BNLeNet, d2l.BNLeNetScratch])
def test_short_real_run_learns_and_repeats(fashion_mnist_root, cls):
    trainer, history = short_run(fashion_mnist_root, cls)
    assert trainer.device in ("/CPU:0", "/GPU:0")
    assert history is trainer.history and history.epoch == [1, 2, 3]
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_acc) == 3
    assert history.train_loss[-1] < history.train_loss[0] < 2.4  # ln 10 = 2.30 at chance
    assert history.val_loss[-1] < 1.0 and history.val_acc[-1] > 0.65  # chance: 0.1
    _, again = short_run(fashion_mnist_root, cls)
    assert again == history  # seeded runs repeat exactly


def Scripted(num_batches=4, **kwargs):
    return ScriptedData((16, 28, 28, 1), lambda X, y: (tf.constant(X), tf.constant(y)),
                        num_batches=num_batches, **kwargs)


def test_jit_compile_off_trains_the_same_without_xla(monkeypatch):
    asked = []
    tf_function = tf.function

    def recording_function(*args, **kwargs):
        if args and isinstance(args[0], partial):  # the Trainer's steps; not Keras' own
            asked.append(kwargs.get("jit_compile"))
        return tf_function(*args, **kwargs)

    monkeypatch.setattr(tf, "function", recording_function)
    histories = {}
    for jit_compile in (True, False):
        keras.utils.set_random_seed(0)
        model = d2l.BNLeNetScratch(lr=0.1)
        trainer = d2l.Trainer(max_epochs=2, report="none", jit_compile=jit_compile)
        histories[jit_compile] = trainer.fit(model, Scripted())
        trainer.evaluate(model, Scripted().val_dataloader())
    assert asked == [True] * 3 + [False] * 3  # training step, evaluation step, evaluate()
    for field in ("train_loss", "val_loss", "val_acc"):  # XLA sums in another order
        np.testing.assert_allclose(getattr(histories[False], field),
                                   getattr(histories[True], field), rtol=1e-4)


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
        self.net = keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Flatten(),
                                     layers.Dense(64, activation="relu"),
                                     layers.Dense(64, activation="relu"), layers.Dense(10)])


def test_huge_learning_rate_diverges():
    # Not BNLeNet: it stays finite even at lr=1e30 (batch norm and the sigmoids bound every
    # activation, so its loss only grows huge), whereas this MLP overflows float32.
    trainer = d2l.Trainer(max_epochs=5, report="none")
    keras.utils.set_random_seed(0)
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
    """Reads of eager tensor values into Python (numpy, float, int, bool, ...: all go through
    ``_numpy``) during a 2-epoch fit."""
    count = 0
    original = tf_ops._EagerTensorBase._numpy

    def counting(self):
        nonlocal count
        count += 1
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(tf_ops._EagerTensorBase, "_numpy", counting)
        keras.utils.set_random_seed(0)
        d2l.Trainer(max_epochs=2, report="none").fit(d2l.BNLeNet(), Scripted(num_batches))
    return count


def test_host_syncs_do_not_grow_with_the_number_of_steps(monkeypatch):
    few, many = count_host_syncs(monkeypatch, 2), count_host_syncs(monkeypatch, 8)
    assert few == many
    assert 0 < few <= 2 * 2  # per epoch: the training loss, the validation results


# --- The regression test: d2l's TensorFlow trainer never trained batch normalization --------------

def running_stats(bn) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(bn, d2l.BatchNorm):
        return bn.running_mean.numpy(), bn.running_var.numpy()
    return bn.moving_mean.numpy(), bn.moving_variance.numpy()


def first_bn_output(model, X, training: bool) -> np.ndarray:
    """The first batch-normalization layer's output on ``X``, gamma and beta undone."""
    bn = model.net.layers[1]
    Y = bn(model.net.layers[0](X), training=training)
    return ((Y - bn.beta) / bn.gamma).numpy()


@pytest.mark.parametrize("cls", [d2l.BNLeNetScratch, d2l.BNLeNet])
def test_regression_trainer_puts_batch_norm_in_training_mode(cls):
    """d2l's TensorFlow trainer computes the loss as ``model.loss(model(X), y)``: no
    ``training=True``, so Keras runs both its layer and d2l's scratch layer in inference mode during
    training. The outputs are then not standardized, and the moving statistics stay at 0 and 1
    for good. d2l_bn's Trainer passes ``training=True``."""
    data = Scripted(num_batches=3)
    X, y = next(iter(data))

    # d2l's training step, reproduced: the layers never leave inference mode.
    keras.utils.set_random_seed(0)
    model = cls(lr=0.1)
    optimizer = model.configure_optimizers()
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = model.loss(model(X), y)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    mean, var = running_stats(model.net.layers[1])
    assert not mean.any() and np.array_equal(var, np.ones(6))
    Z = first_bn_output(model, X, training=False)  # what that training step normalized with
    assert np.abs(Z.std(axis=(0, 1, 2)) - 1).max() > 0.3  # far from standardized

    # d2l_bn's Trainer: three training steps, each in training mode.
    keras.utils.set_random_seed(0)
    model = cls(lr=0.1)
    d2l.Trainer(max_epochs=1, report="none").fit(model, Scripted(num_batches=3))
    mean, var = running_stats(model.net.layers[1])
    assert np.abs(mean).min() > 1e-4 and np.abs(var - 1).min() > 1e-4  # every channel moved
    Z = first_bn_output(model, X, training=True)
    np.testing.assert_allclose(Z.mean(axis=(0, 1, 2)), np.zeros(6), rtol=0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=(0, 1, 2)), np.ones(6), rtol=0, atol=1e-3)
    # and its evaluation runs in prediction mode, which leaves the running statistics alone
    before = running_stats(model.net.layers[1])  # (the call just above updated them)
    d2l.evaluate(tf.function(partial(d2l.eval_step, model)), data.val_dataloader())
    after = running_stats(model.net.layers[1])
    assert np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])


def test_an_integer_learning_rate_is_accepted():
    """Keras' SGD refuses learning_rate=1; the other frameworks take it, so ours does too."""
    optimizer = d2l.BNLeNet(lr=1).configure_optimizers()
    assert float(optimizer.learning_rate) == 1.0


SEES_GPU = bool(tf.config.list_physical_devices("GPU"))


def test_num_gpus_0_trains_on_the_cpu():
    assert d2l.Trainer(max_epochs=1, num_gpus=0).device == "/CPU:0"


@pytest.mark.gpu
def test_num_gpus_1_trains_on_the_gpu(fashion_mnist_root):
    trainer, history = short_run(fashion_mnist_root, epochs=1)
    assert trainer.device == "/GPU:0" and len(history) == 1


# --- Recomputed statistics -----------------------------------------------------------------------

class ScriptedWithLoader(ScriptedData):
    """ScriptedData with the loader recompute_statistics asks for: the same batches, in order."""

    def get_dataloader(self, train: bool, *, shuffle=None):
        assert train and shuffle is False  # training batches that draw nothing from a generator
        return self.val_dataloader()


def scripted_with_loader(num_batches=4):
    return ScriptedWithLoader((16, 28, 28, 1), lambda X, y: (tf.constant(X), tf.constant(y)),
                              num_batches=num_batches)


def scratch_bns(model) -> list:
    return [layer for layer in model.net.layers if isinstance(layer, d2l.BatchNorm)]


def test_recompute_statistics_averages_the_batch_statistics():
    keras.utils.set_random_seed(0)
    model, data = d2l.BNLeNetScratch(), scripted_with_loader(num_batches=4)
    rng = np.random.default_rng(0)
    for bn in scratch_bns(model):  # garbage that the recomputation must discard
        randomize(bn, rng)
        bn.running_mean.assign(rng.standard_normal(bn.running_mean.shape) * 10)
        bn.running_var.assign(rng.uniform(5, 10, size=bn.running_var.shape))
    # Expected: each layer's input, batch by batch, through the layers in training mode
    # (which the batch statistics, not the running ones, normalize), in float64.
    means, variances = [], []
    for X, _ in list(data.get_dataloader(train=True, shuffle=False))[:3]:
        means.append([]), variances.append([])
        for layer in model.net.layers:
            if isinstance(layer, d2l.BatchNorm):
                X64, axes = X.numpy().astype(np.float64), reduce_axes(X)
                means[-1].append(X64.mean(axis=axes))
                variances[-1].append(X64.var(axis=axes))
            X = layer(X, training=True)
    d2l.recompute_statistics(model, data, num_batches=3)  # of 4 batches: the first 3
    for i, bn in enumerate(scratch_bns(model)):
        expected_mean = np.mean([batch[i] for batch in means], axis=0)
        expected_var = np.mean([batch[i] for batch in variances], axis=0)
        assert_close(bn.running_mean.numpy(), expected_mean, atol=1e-6)
        assert_close(bn.running_var.numpy(), expected_var, atol=1e-6)
        assert bn.momentum == 0.1  # put back


def weights_of(model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.weights]


def test_recomputed_val_accuracy_leaves_the_model_as_it_was():
    keras.utils.set_random_seed(0)
    model, data = d2l.BNLeNetScratch(lr=0.5), scripted_with_loader(num_batches=4)
    trainer = d2l.Trainer(max_epochs=2, report="none")
    trainer.fit(model, data)  # running statistics away from 0 and 1
    before = weights_of(model)
    accuracy = d2l.recomputed_val_accuracy(trainer, model, data, num_batches=3)
    after = weights_of(model)
    assert len(after) == len(before) == 5 * 2 + 4 * 4  # kernel, bias; gamma, beta, mean, var
    assert all(np.array_equal(a, b) for a, b in zip(after, before))  # bit for bit
    assert [bn.momentum for bn in scratch_bns(model)] == [0.1] * 4
    # and the accuracy is the one of the model with its statistics recomputed
    first_mean = scratch_bns(model)[0].running_mean
    old_mean = first_mean.numpy().copy()
    d2l.recompute_statistics(model, data, num_batches=3)
    assert np.abs(first_mean.numpy() - old_mean).min() > 1e-6  # every channel changed
    assert accuracy == trainer.evaluate(model, data.val_dataloader())[1]


def test_recomputed_val_accuracy_refuses_a_model_without_batch_norm_or_batches():
    data, trainer = scripted_with_loader(num_batches=2), d2l.Trainer(max_epochs=1, report="none")
    with pytest.raises(ValueError, match="no batch-normalization layer with running statistics"):
        d2l.recomputed_val_accuracy(trainer, d2l.NormLeNet(norms=(None,) * 4), data)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_batches must be a positive int"):
            d2l.recomputed_val_accuracy(trainer, d2l.BNLeNetScratch(), data, num_batches=bad)


class SliceWithLoader(Slice):
    """Slice, with ``get_dataloader`` as the real data module has it (the first batches)."""

    def get_dataloader(self, train: bool, *, shuffle=None):
        return Take(self.data.get_dataloader(train, shuffle=shuffle), self.num_train)


def fit_recording(root, record: bool) -> tuple:
    """A short seeded run of the chapter's scratch model that records, if ``record``, the
    recomputed validation accuracy after each epoch; returns the history, the recorded
    accuracies and the final weights."""
    keras.utils.set_random_seed(0)
    model = d2l.BNLeNetScratch(lr=0.5)
    data = SliceWithLoader(d2l.FashionMNIST(batch_size=64, root=root, seed=0), 20, 5)
    trainer = d2l.Trainer(max_epochs=2, report="none")
    recorded = []
    after_epoch = (lambda epoch: recorded.append(
        d2l.recomputed_val_accuracy(trainer, model, data, num_batches=10))) if record else None
    history = trainer.fit(model, data, after_epoch=after_epoch)
    return history, recorded, weights_of(model)


def test_recording_recomputed_accuracy_leaves_the_training_run_as_it_was(fashion_mnist_root):
    plain, _, plain_weights = fit_recording(fashion_mnist_root, record=False)
    history, recorded, weights = fit_recording(fashion_mnist_root, record=True)
    assert history == plain  # the shuffling (data.rng), the weights and the statistics
    assert all(np.array_equal(a, b) for a, b in zip(weights, plain_weights))
    assert len(recorded) == 2 and all(0 <= a <= 1 for a in recorded)


def test_fit_calls_after_epoch_once_per_epoch_after_recording_it():
    trainer = d2l.Trainer(max_epochs=3, report="none")
    calls = []
    history = trainer.fit(d2l.BNLeNet(), Scripted(num_batches=2),
                          after_epoch=lambda epoch: calls.append((epoch, len(trainer.history))))
    assert calls == [(1, 1), (2, 2), (3, 3)] and history.epoch == [1, 2, 3]
