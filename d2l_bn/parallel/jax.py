"""JAX across CPU devices: one process, a ``Mesh`` of devices and ``jax.shard_map``.

JAX starts no worker processes: one program runs on every device of a mesh at once, each device
on its own slice of the batch, and collectives such as ``jax.lax.pmean`` over the mesh's axis,
named ``"batch"`` (:data:`AXIS`), combine what the devices hold: each device takes the gradient
of its own slice's loss, and ``pmean`` averages them, as ``DistributedDataParallel`` does.

Flax's ``nn.BatchNorm(axis_name="batch")`` is the synchronized layer: it averages its batch
statistics over that axis with ``pmean``, and as the collectives are differentiable, the gradients
flow back through the other devices' statistics too. ``BNLeNet(axis_name=AXIS)`` builds its four
layers so; without an axis name each device normalizes with its own slice's statistics.

JAX gives a CPU one device unless it is told otherwise before its backend starts, at the first
JAX computation: call :func:`cpu_devices` right after the imports (in a notebook, in its first
cell). Everything here runs on CPU devices, also on a machine with a GPU.
"""

from .._require import require

require("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

from . import ShardedBatches  # noqa: E402
from .. import jax as d2l  # noqa: E402

__all__ = ["AXIS", "cpu_devices", "data_parallel_step", "train_data_parallel"]

AXIS = "batch"  # the mesh's one axis: the devices, each holding a slice of the batch


# --- The devices ---------------------------------------------------------------------------------

def cpu_devices(num_devices: int = 2) -> list[jax.Device]:
    """The first ``num_devices`` of JAX's CPU devices, after asking for that many if JAX has not
    started its backend yet (``jax_num_cpu_devices``). Once it has, their number is fixed: with
    fewer, this raises RuntimeError."""
    if num_devices < 1:
        raise ValueError(f"num_devices must be positive, got {num_devices}")
    if jax.config.jax_num_cpu_devices < num_devices:
        try:
            jax.config.update("jax_num_cpu_devices", num_devices)
        except RuntimeError:  # the backend has started: the devices are what they are
            pass
    devices = jax.devices("cpu")
    if len(devices) < num_devices:
        raise RuntimeError(
            f"JAX started its CPU backend with {len(devices)} device(s), and their number cannot "
            f"change in a running process. Restart the kernel (or the Python process) and call "
            f"cpu_devices({num_devices}) right after the imports, before any JAX computation.")
    return devices[:num_devices]


def _mesh(devices: list[jax.Device]) -> Mesh:
    return Mesh(np.array(devices), (AXIS,))


def _shard_map(f, mesh: Mesh, in_specs, out_specs):
    # check_vma=False keeps pmap's semantics: the gradient with respect to the replicated
    # parameters is each device's own, which _loss_and_grads averages with pmean as DDP does
    # (with check_vma=True JAX would already sum it over the devices, and pmean of that sum is
    # twice DDP's gradient on two devices). Nor does JAX check that the outputs given as P() are
    # equal on every device: they come out of pmean, or from parameters updated with its result.
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=False))


# --- What the devices do -------------------------------------------------------------------------

def _model(synchronized: bool, seed: int, lr: float = 0.1) -> tuple[d2l.BNLeNet, dict]:
    # Every device starts from the same weights, initialized as d2l.Trainer does (one image's
    # shape, PRNGKey(seed), train=False).
    model = d2l.BNLeNet(lr, axis_name=AXIS if synchronized else None)
    return model, model.apply_init([jnp.zeros((1, 28, 28, 1))], jax.random.PRNGKey(seed))


def _per_device(tree, num_devices: int):
    """``tree`` with a leading device axis: one copy per device, for in_specs P(AXIS)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_devices, *a.shape)), tree)


def _loss_and_grads(model: d2l.BNLeNet, params, batch_stats, X, y, **apply_kwargs):
    """On one device: its slice's mean loss and the gradient of it, both averaged over the
    devices, its logits and the updated collections (``batch_stats`` and any in ``mutable``)."""
    mutable = ["batch_stats", *apply_kwargs.pop("mutable", [])]

    def loss_fn(params):
        Y_hat, updates = model.apply({"params": params, "batch_stats": batch_stats}, X,
                                     train=True, mutable=mutable, **apply_kwargs)
        return model.loss(Y_hat, y), (Y_hat, updates)

    (loss, (Y_hat, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS), Y_hat, updates


def _step_on_device(model: d2l.BNLeNet, params, batch_stats, X, y) -> dict:
    batch_stats = jax.tree.map(lambda a: a[0], batch_stats)  # this device's, without the axis
    _, grads, Y_hat, updates = _loss_and_grads(
        model, params, batch_stats, X, y, mutable=["intermediates"],
        capture_intermediates=lambda module, method: module.name == "conv1")
    conv_output = updates["intermediates"]["conv1"]["__call__"][0]  # the first BN's input
    mean = conv_output.mean(axis=(0, 1, 2))
    return {"outputs": Y_hat,
            "batch_mean": mean[None],
            "batch_var": ((conv_output - mean) ** 2).mean(axis=(0, 1, 2))[None],
            "grad": grads["conv1"]["kernel"],
            "running_mean": updates["batch_stats"]["bn1"]["mean"][None]}


def data_parallel_step(X: np.ndarray, y: np.ndarray, *, synchronized: bool, num_devices: int = 2,
                       seed: int = 0) -> dict:
    """One training-mode forward and backward pass of a fresh ``BNLeNet`` (seed ``seed``) on the
    global batch ``X, y`` (NHWC) split over ``num_devices`` CPU devices, device ``k`` taking the
    ``k``-th equal slice.

    Returns numpy arrays: ``outputs``, the logits in the batch's order; ``grad``, the first
    convolution's kernel gradient after the devices averaged it; and per device (first axis),
    ``batch_mean`` and ``batch_var``, the statistics of the first BN layer's input on its slice,
    and ``running_mean``, that layer's running mean after the step."""
    if len(X) % num_devices:
        raise ValueError(f"a batch of {len(X)} does not split evenly over {num_devices} devices")
    devices = cpu_devices(num_devices)
    with jax.default_device(devices[0]):
        model, variables = _model(synchronized, seed)
        step = _shard_map(lambda *args: _step_on_device(model, *args), _mesh(devices),
                          in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                          out_specs={"outputs": P(AXIS), "grad": P(), "batch_mean": P(AXIS),
                                     "batch_var": P(AXIS), "running_mean": P(AXIS)})
        result = step(variables["params"], _per_device(variables["batch_stats"], num_devices),
                      X, y.astype(np.int32))
    return {key: np.asarray(value) for key, value in result.items()}


def _train_step_on_device(model: d2l.BNLeNet, state: d2l.TrainState, X, y):
    batch_stats = jax.tree.map(lambda a: a[0], state.batch_stats)
    loss, grads, _, updates = _loss_and_grads(model, state.params, batch_stats, X, y)
    batch_stats = jax.tree.map(lambda a: a[None], updates["batch_stats"])
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss


def train_data_parallel(*, per_device: int, num_steps: int, skewed: bool, synchronized: bool,
                        num_devices: int = 2, seed: int = 0, lr: float = 0.1) -> dict:
    """Train a fresh ``BNLeNet`` for ``num_steps`` SGD steps on Fashion-MNIST, each device taking
    ``per_device`` examples per step from its own shard (class-skewed or a random split), with
    per-device (``synchronized=False``) or global batch statistics. Returns the mean training
    loss (of the global batches), and the validation loss and accuracy in eval mode, on one
    device, of the parameters with device 0's running statistics, the copy that
    ``flax.jax_utils.unreplicate`` keeps. The devices keep their own running statistics (with
    ``synchronized=True`` they are all equal)."""
    devices = cpu_devices(num_devices)
    data = d2l.FashionMNIST(batch_size=256)
    with jax.default_device(devices[0]):
        model, variables = _model(synchronized, seed, lr)
        state = d2l.TrainState.create(
            apply_fn=model.apply, params=variables["params"], tx=optax.sgd(lr),
            batch_stats=_per_device(variables["batch_stats"], num_devices))
        specs = state.replace(step=P(), params=P(), opt_state=P(), batch_stats=P(AXIS))
        step = _shard_map(lambda *args: _train_step_on_device(model, *args), _mesh(devices),
                          in_specs=(specs, P(AXIS), P(AXIS)), out_specs=(specs, P()))
        batches = ShardedBatches(*data.train, per_device=per_device, num_devices=num_devices,
                                 num_steps=num_steps, skewed=skewed, layout="NHWC", seed=seed)
        total = jnp.zeros(())
        for X, y in batches:
            state, loss = step(state, X, y.astype(np.int32))
            # One step at a time: with later steps already dispatched (JAX's asynchronous
            # dispatch), XLA's in-process all-reduce between CPU devices can wait for a device
            # that never arrives, and XLA then aborts the whole process after 40 s.
            total += loss.block_until_ready()
        # Evaluated on one device with the running statistics device 0 holds, as a saved model
        # would be.
        state = jax.device_put(state.replace(batch_stats=jax.tree.map(lambda a: a[0],
                                                                      state.batch_stats)),
                               devices[0])
        val_loss, val_acc = d2l.evaluate(model, state, data.val_dataloader())
    return {"train_loss": float(total) / num_steps, "val_loss": val_loss, "val_acc": val_acc}
