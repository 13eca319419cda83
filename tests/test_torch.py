"""d2l_bn.torch: the scratch layer's statistics, its input checks, the models
and the Trainer (a short run on real Fashion-MNIST, seeding, divergence, Ctrl-C, host syncs).
The equivalence with the built-in layer and the float64 reference is in test_equivalence_*.py."""

import itertools

import pytest

from scripted_data import ScriptedData
import torch
import torch.nn.functional as F
from torch import nn

from d2l_bn import torch as d2l
from d2l_bn.training import TrainingDiverged

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are tiny, and OpenMP threads that spin-wait for each other slow torch down
    # some 30-fold when other processes share the cores (measured on 2 cores: 11 s -> 226 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # rtol 1e-5, plus an atol of 16 float32 ulps of the largest |expected|: the two
    # implementations sum in different orders (PyTorch's kernel vs our two-pass mean), so entries
    # near zero, e.g. gradients that are sums of terms of either sign, differ by a few ulps of
    # the terms summed rather than of their own size.
    atol = 16 * EPS32 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)


def shifted_batch(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Random input whose features/channels have means in [2, 4] and scales in [0.5, 5]."""
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    mean = torch.empty(per_channel).uniform_(2, 4, generator=generator)
    std = torch.empty(per_channel).uniform_(0.5, 5, generator=generator)
    return torch.randn(shape, generator=generator) * std + mean


SHAPES = [(32, 12), (8, 6, 10, 10)]  # fully connected (batch, features); conv (N, C, H, W)


def reduce_axes(X: torch.Tensor) -> tuple:
    return (0,) if X.ndim == 2 else (0, 2, 3)


# --- The scratch layer on its own ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_training_output_is_standardized_per_channel(shape):
    g = torch.Generator().manual_seed(0)
    layer = d2l.BatchNorm(shape[1], num_dims=len(shape))
    with torch.no_grad():
        layer.gamma.uniform_(0.5, 2, generator=g)
        layer.beta.normal_(generator=g)
    X = shifted_batch(shape, g)
    Y = layer(X)
    assert Y.shape == X.shape
    bc = (1, -1) + (1,) * (len(shape) - 2)
    Z = (Y - layer.beta.reshape(bc)) / layer.gamma.reshape(bc)  # undo gamma and beta
    axes = reduce_axes(X)
    torch.testing.assert_close(Z.mean(dim=axes), torch.zeros(shape[1]), rtol=0, atol=1e-5)
    # eps shrinks the std by sqrt(var / (var + eps)), at most 1e-5 relative for var >= 0.25
    torch.testing.assert_close(Z.std(dim=axes, correction=0), torch.ones(shape[1]),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_running_stats_follow_the_momentum_formula(shape):
    g = torch.Generator().manual_seed(1)
    layer = d2l.BatchNorm(shape[1], num_dims=len(shape), momentum=0.3)
    mean = torch.zeros(shape[1], dtype=torch.float64)
    var = torch.ones(shape[1], dtype=torch.float64)
    for _ in range(4):
        X = shifted_batch(shape, g)
        layer(X)
        X64, axes = X.double(), reduce_axes(X)
        mean = 0.7 * mean + 0.3 * X64.mean(dim=axes)
        var = 0.7 * var + 0.3 * X64.var(dim=axes, correction=0)  # biased, by default
    torch.testing.assert_close(layer.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, var.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_prediction_uses_the_running_stats(shape):
    g = torch.Generator().manual_seed(2)
    layer = d2l.BatchNorm(shape[1], num_dims=len(shape))
    with torch.no_grad():
        layer.gamma.uniform_(0.5, 2, generator=g)
        layer.beta.normal_(generator=g)
    for _ in range(3):
        layer(shifted_batch(shape, g))
    layer.eval()
    X = shifted_batch(shape, g)
    before = layer.running_mean.clone(), layer.running_var.clone()
    bc = (1, -1) + (1,) * (len(shape) - 2)
    expected = ((X - layer.running_mean.reshape(bc)) / torch.sqrt(layer.running_var.reshape(bc)
                + layer.eps) * layer.gamma.reshape(bc) + layer.beta.reshape(bc))
    torch.testing.assert_close(layer(X), expected)
    torch.testing.assert_close((layer.running_mean, layer.running_var), before, rtol=0, atol=0)


def test_with_momentum_one_prediction_equals_training_on_the_same_batch():
    # momentum=1 keeps only the last batch's statistics (Keras' momentum=0): evaluating that
    # batch must then give the training output.
    g = torch.Generator().manual_seed(3)
    layer = d2l.BatchNorm(6, num_dims=4, momentum=1.0)
    X = shifted_batch((8, 6, 5, 5), g)
    Y_train = layer(X)
    layer.eval()
    torch.testing.assert_close(layer(X), Y_train, rtol=1e-5, atol=1e-5)


def test_batch_norm_is_pure_and_keeps_running_stats_out_of_autograd():
    X = torch.randn(4, 3, requires_grad=True)
    gamma, beta = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    mean, var = torch.zeros(3), torch.ones(3)
    Y, new_mean, new_var = d2l.batch_norm(X, gamma, beta, mean, var, training=True)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(var, torch.ones(3))
    assert Y.requires_grad and not new_mean.requires_grad and not new_var.requires_grad
    _, same_mean, same_var = d2l.batch_norm(X, gamma, beta, mean, var, training=False)
    assert same_mean is mean and same_var is var


def test_running_stats_are_buffers():
    layer = d2l.BatchNorm(5, num_dims=2)
    assert set(layer.state_dict()) == {"gamma", "beta", "running_mean", "running_var"}
    assert {name for name, _ in layer.named_parameters()} == {"gamma", "beta"}
    layer.double()  # like .to(device): buffers follow the module
    assert layer.running_var.dtype == torch.float64
    assert layer(torch.randn(4, 5, dtype=torch.float64)).dtype == torch.float64
    assert "5, num_dims=2, momentum=0.1" in repr(layer)


# --- Equivalence with PyTorch's own layer --------------------------------------------------------

def test_group_norm_matches_torch():
    torch.manual_seed(0)
    for shape, num_groups in [((8, 12), 4), ((4, 6, 5, 5), 3)]:
        X = torch.randn(shape) * 3 + 2
        gamma, beta = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
        expected = F.group_norm(X, num_groups, gamma, beta, eps=1e-5)
        assert_close(d2l.group_norm(X, gamma, beta, num_groups), expected)
        layer = d2l.GroupNorm(shape[1], num_groups)
        assert_close(layer(X), F.group_norm(X, num_groups, eps=1e-5))


def test_layer_norm_matches_torch():
    g = torch.Generator().manual_seed(6)
    for shape in [(8, 20), (4, 3, 7, 7)]:
        X = shifted_batch(shape, g)
        gamma, beta = torch.randn(shape[1:], generator=g), torch.randn(shape[1:], generator=g)
        expected = F.layer_norm(X, shape[1:], gamma, beta, eps=1e-5)
        assert_close(d2l.layer_norm(X, gamma, beta), expected)
    # one example alone is normalized the same way: no dependence on the batch
    assert_close(d2l.layer_norm(X[:1], gamma, beta), expected[:1])


# --- Errors that say what to do ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12,), (4, 6, 5), (2, 6, 3, 3, 3)])
def test_wrong_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=r"2-D .*4-D .*Flatten"):
        d2l.batch_norm(torch.randn(shape), torch.ones(6), torch.zeros(6), torch.zeros(6),
                       torch.ones(6), training=True)


def test_wrong_feature_count_is_rejected():
    layer = d2l.BatchNorm(6, num_dims=4)
    with pytest.raises(ValueError, match=r"5 features/channels.*num_features=5"):
        layer(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"num_dims=4 .*2-D input"):
        layer(torch.randn(2, 6))


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match=r"X\.float\(\)"):
        d2l.BatchNorm(3, num_dims=2)(torch.ones(4, 3, dtype=torch.int64))


def test_one_value_per_feature_fails_in_training_only():
    layer = d2l.BatchNorm(6, num_dims=2)
    with pytest.raises(ValueError, match=r"at least 2.*eval"):
        layer(torch.randn(1, 6))
    layer.eval()
    assert layer(torch.randn(1, 6)).shape == (1, 6)


def test_one_image_is_fine_in_training():
    layer = d2l.BatchNorm(3, num_dims=4)
    assert layer(torch.randn(1, 3, 4, 4)).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("num_dims", [1, 3, 5])
def test_invalid_num_dims(num_dims):
    with pytest.raises(ValueError, match=r"num_dims must be 2 .*or 4"):
        d2l.BatchNorm(6, num_dims=num_dims)


# --- Models --------------------------------------------------------------------------------------

# Parameters, by hand (weights + biases; gamma + beta for each BN):
#   conv 1->6, 5x5: 6*25 + 6 = 156           BN(6):   12
#   conv 6->16, 5x5: 16*6*25 + 16 = 2416     BN(16):  32
#   linear 256->120: 256*120 + 120 = 30840   BN(120): 240
#   linear 120->84: 120*84 + 84 = 10164      BN(84):  168
#   linear 84->10: 84*10 + 10 = 850
#   total 156 + 12 + 2416 + 32 + 30840 + 240 + 10164 + 168 + 850 = 44878
@pytest.mark.parametrize("cls, bn", [(d2l.BNLeNetScratch, d2l.BatchNorm),
                                     (d2l.BNLeNet, nn.BatchNorm2d)])
def test_models(cls, bn):
    torch.manual_seed(0)
    model = cls(lr=0.1)
    assert sum(p.numel() for p in model.parameters()) == 44878
    assert isinstance(model.net[1], bn)
    X = torch.rand(16, 1, 28, 28)
    model.apply_init([X], d2l.init_cnn)
    assert model.training  # apply_init restores the mode
    assert model(X).shape == (16, 10)
    model.eval()
    with torch.no_grad():
        assert model(X[:1]).shape == (1, 10)


def test_apply_init_changes_weights_but_not_running_stats():
    torch.manual_seed(0)
    model = d2l.BNLeNetScratch()
    conv_before = model.net[0].weight.clone()
    model.apply_init([torch.rand(8, 1, 28, 28) * 5], d2l.init_cnn)
    assert not torch.equal(model.net[0].weight, conv_before)
    bound = (6 / (25 * 1 + 25 * 6)) ** 0.5  # Xavier-uniform bound of the first conv
    assert model.net[0].weight.abs().max() <= bound
    assert torch.equal(model.net[1].running_mean, torch.zeros(6))


def test_fashion_mnist_gives_tensors(fashion_mnist_root):
    data = d2l.FashionMNIST(batch_size=32, root=fashion_mnist_root)
    X, y = next(iter(data.train_dataloader()))
    assert isinstance(X, torch.Tensor) and X.dtype == torch.float32 and X.shape == (32, 1, 28, 28)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (32,)


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
    torch.manual_seed(0)  # the initial weights
    model = cls(lr=lr)
    data = Slice(d2l.FashionMNIST(batch_size=64, root=root, seed=0), num_train=40, num_val=20)
    model.apply_init([next(iter(data.train_dataloader()))[0]], d2l.init_cnn)
    trainer = d2l.Trainer(max_epochs=epochs, num_gpus=1, seed=0, report="none")
    return trainer, trainer.fit(model, data)


@pytest.mark.parametrize("cls", [d2l.BNLeNet, d2l.BNLeNetScratch])
def test_short_real_run_learns_and_repeats(fashion_mnist_root, cls):
    trainer, history = short_run(fashion_mnist_root, cls)
    assert trainer.device.type in ("cpu", "cuda")
    assert history is trainer.history and history.epoch == [1, 2, 3]
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_acc) == 3
    assert history.train_loss[-1] < history.train_loss[0] < 2.4  # ln 10 = 2.30 at chance
    assert history.val_loss[-1] < 1.0 and history.val_acc[-1] > 0.65  # chance: 0.1
    _, again = short_run(fashion_mnist_root, cls)
    assert again == history  # seeded CPU runs repeat exactly


def Scripted(num_batches=4, **kwargs):
    return ScriptedData((16, 1, 28, 28), lambda X, y: (torch.from_numpy(X), torch.from_numpy(y)),
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
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(),
                                 nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_huge_learning_rate_diverges():
    # Not BNLeNet: it stays finite even at lr=1e30 (batch norm and the sigmoids bound every
    # activation, so its loss only grows huge), whereas this MLP overflows float32.
    trainer = d2l.Trainer(max_epochs=5, report="none")
    torch.manual_seed(0)
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
    """Python-level reads of tensor values (item, float, bool, tolist, ...) during a 2-epoch fit."""
    count = 0

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            nonlocal count
            count += 1
            return original(self, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
            patch.setattr(torch.Tensor, name, counting(name))
        torch.manual_seed(0)
        d2l.Trainer(max_epochs=2, report="none").fit(d2l.BNLeNet(), Scripted(num_batches))
    return count


def test_host_syncs_do_not_grow_with_the_number_of_steps(monkeypatch):
    few, many = count_host_syncs(monkeypatch, 2), count_host_syncs(monkeypatch, 8)
    assert few == many
    assert 0 < few <= 2 * 2  # per epoch: the training loss, the validation results


# --- Statistics recomputed from training batches ------------------------------------------------

class InOrder:
    """Scripted data that also serves its training batches in stored order, as
    ``FashionMNIST.get_dataloader(train=True, shuffle=False)`` does."""

    def __init__(self, num_batches: int):
        self.scripted = Scripted(num_batches)
        self.val_dataloader = self.scripted.val_dataloader

    def get_dataloader(self, train: bool, *, shuffle=None):
        assert train and shuffle is False, "recompute_statistics asks for training batches in order"
        return [self.scripted.to_tensors(X, y) for X, y in self.scripted.batches]


def trained_a_little(cls, data):
    """A model whose running statistics are neither their initial values nor an average."""
    torch.manual_seed(0)
    model = cls(lr=0.5)
    d2l.Trainer(max_epochs=2, report="none").fit(model, data.scripted)
    for bn in bn_layers(model):
        bn.running_mean.fill_(7.0)  # must be replaced entirely, not averaged with
        bn.running_var.fill_(7.0)
    return model


def bn_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, (d2l.BatchNorm, nn.BatchNorm2d,
                                                         nn.BatchNorm1d))]


@pytest.mark.parametrize("cls", [d2l.BNLeNetScratch, d2l.BNLeNet])
def test_recomputed_statistics_are_the_mean_of_the_batch_statistics(cls):
    data = InOrder(num_batches=6)
    model = trained_a_little(cls, data)
    model.eval()
    params = {name: p.clone() for name, p in model.named_parameters()}
    layers = bn_layers(model)
    momenta = [bn.momentum for bn in layers]
    # Expected, independently: each layer's input in a training-mode pass over the first 4
    # batches (its input depends on the parameters and the batch only), its batch statistics,
    # and their plain mean over the batches.
    inputs = {i: [] for i in range(len(layers))}
    reference = type(model)(lr=0.5)
    reference.load_state_dict(model.state_dict())
    reference.train()
    hooks = [bn.register_forward_hook(lambda m, args, out, i=i: inputs[i].append(args[0]))
             for i, bn in enumerate(bn_layers(reference))]
    with torch.no_grad():
        for X, _ in data.get_dataloader(True, shuffle=False)[:4]:
            reference(X)
    for hook in hooks:
        hook.remove()
    d2l.recompute_statistics(model, data, num_batches=4)
    for i, bn in enumerate(layers):
        assert len(inputs[i]) == 4
        means = [X.mean(dim=reduce_axes(X)) for X in inputs[i]]
        # nn.BatchNorm*d records the unbiased variance, our layer the biased one
        variances = [X.var(dim=reduce_axes(X), unbiased=cls is d2l.BNLeNet)
                     for X in inputs[i]]
        assert_close(bn.running_mean, torch.stack(means).mean(dim=0))
        assert_close(bn.running_var, torch.stack(variances).mean(dim=0))
    assert not model.training  # the mode it was in
    assert [bn.momentum for bn in layers] == momenta  # restored
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name


def test_recomputed_val_accuracy_leaves_the_model_as_it_was():
    data = InOrder(num_batches=6)
    model = trained_a_little(d2l.BNLeNetScratch, data)
    model.train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    trainer = d2l.Trainer(max_epochs=1, report="none")
    accuracy = d2l.recomputed_val_accuracy(trainer, model, data, num_batches=4)
    assert isinstance(accuracy, float) and 0 <= accuracy <= 1
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, t in before.items():
        assert torch.equal(after[name], t), name  # bit for bit, running statistics included
    assert model.training and [bn.momentum for bn in bn_layers(model)] == [0.1] * 4
    # It is the accuracy with recomputed statistics, not with the model's own (all 7.0)
    with_own = trainer.evaluate(model, data.val_dataloader())[1]
    d2l.recompute_statistics(model, data, num_batches=4)
    assert trainer.evaluate(model, data.val_dataloader())[1] == accuracy != with_own


def test_recomputed_val_accuracy_refuses_a_model_without_batch_norm_or_batches():
    data, trainer = InOrder(num_batches=2), d2l.Trainer(max_epochs=1, report="none")
    with pytest.raises(ValueError, match="no batch-normalization layer with running statistics"):
        d2l.recomputed_val_accuracy(trainer, d2l.NormLeNet(norms=(None,) * 4), data)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_batches must be a positive int"):
            d2l.recomputed_val_accuracy(trainer, d2l.BNLeNetScratch(), data, num_batches=bad)


def recorded_run(root, record: bool):
    torch.manual_seed(0)
    model = d2l.BNLeNetScratch(lr=0.5)
    real = d2l.FashionMNIST(batch_size=32, root=root, seed=0)
    data = Slice(real, num_train=12, num_val=4)
    data.get_dataloader = lambda train, shuffle=None: Take(
        real.get_dataloader(train, shuffle=shuffle), 3)
    trainer = d2l.Trainer(max_epochs=3, report="none")
    recorded = []
    after_epoch = (lambda epoch: recorded.append(
        d2l.recomputed_val_accuracy(trainer, model, data, num_batches=3))) if record else None
    history = trainer.fit(model, data, after_epoch=after_epoch)
    return history, recorded, model.state_dict()


def test_recording_recomputed_accuracy_leaves_the_training_run_as_it_was(fashion_mnist_root):
    # Real data, shuffled anew each epoch from data.rng: a recording that drew from the
    # generator, or changed the model, would change the later epochs.
    plain, nothing, state = recorded_run(fashion_mnist_root, record=False)
    history, recorded, recorded_state = recorded_run(fashion_mnist_root, record=True)
    assert nothing == [] and len(recorded) == 3
    assert history == plain
    for name, t in state.items():
        assert torch.equal(recorded_state[name], t), name


def test_fit_calls_after_epoch_once_per_epoch_after_recording_it():
    trainer = d2l.Trainer(max_epochs=3, report="none")
    calls = []
    torch.manual_seed(0)
    history = trainer.fit(d2l.BNLeNet(), Scripted(),
                          after_epoch=lambda epoch: calls.append((epoch, len(trainer.history))))
    assert calls == [(1, 1), (2, 2), (3, 3)] and len(history) == 3


SEES_GPU = torch.cuda.is_available()


def test_num_gpus_0_trains_on_the_cpu():
    assert d2l.Trainer(max_epochs=1, num_gpus=0).device.type == "cpu"


@pytest.mark.gpu
def test_num_gpus_1_trains_on_the_gpu(fashion_mnist_root):
    trainer, history = short_run(fashion_mnist_root, epochs=1)
    assert trainer.device.type == "cuda" and len(history) == 1
