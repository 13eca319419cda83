"""The JAX side of benchmarks/steps.py: staged batches, a bare training epoch, one BN step."""

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from d2l_bn import jax as d2l

FRAMEWORK = "jax"
DEVICE = jax.devices()[0]  # a GPU when this JAX has one
COMPILER = "jax.jit"


def versions() -> dict:
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def device_name() -> str:
    return DEVICE.device_kind if DEVICE.platform != "cpu" else "cpu"


def wait(result) -> None:
    jax.block_until_ready(result)


def stage(loader) -> list:
    """One epoch of the loader's batches, converted and on the device before any timing."""
    return [jax.device_put((X, y), DEVICE) for X, y in loader]


def build(name: str, first_batch) -> d2l.Classifier:
    """The chapter's model ``name`` (a Flax module holds no weights: the Trainer and
    :func:`model_only` initialize them)."""
    return getattr(d2l, name)(lr=0.1)


def model_only(model: d2l.Classifier):
    """One epoch of the jitted training steps over staged batches, then the validation
    forwards; no metrics, no report. Returns a callable that runs it."""
    holder = {}

    def run_epoch(train, val):
        if not holder:
            X, _ = train[0]
            variables = model.apply_init([X[:1]], jax.random.PRNGKey(0))
            holder["state"] = d2l.TrainState.create(
                apply_fn=model.apply, params=variables["params"],
                batch_stats=variables["batch_stats"], tx=model.configure_optimizers())
        state = holder["state"]
        for X, y in train:
            state, _ = d2l.train_step(model, state, X, y)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        outputs = [d2l.eval_step(model, variables, X, y) for X, y in val]
        holder["state"] = state
        wait((state, outputs))

    return run_epoch


def lenet_step(name: str, first_batch, compiled: bool):
    """One SGD step of the chapter's LeNet: the Trainer's jitted step, or the same step run op
    by op under ``jax.disable_jit()``."""
    model = build(name, first_batch)
    variables = model.apply_init([first_batch[0][:1]], jax.random.PRNGKey(0))
    holder = {"state": d2l.TrainState.create(
        apply_fn=model.apply, params=variables["params"],
        batch_stats=variables["batch_stats"], tx=model.configure_optimizers())}

    def step(X, y):
        if compiled:
            holder["state"], loss = d2l.train_step(model, holder["state"], X, y)
        else:
            with jax.disable_jit():
                holder["state"], loss = d2l.train_step(model, holder["state"], X, y)
        return loss

    return step


class BuiltinBN(nn.Module):
    """Flax's layer with our momentum and ε, called like the scratch one."""

    @nn.compact
    def __call__(self, X, train: bool):
        return nn.BatchNorm(not train, momentum=0.9, epsilon=1e-5)(X)


def nhwc(shape: tuple) -> tuple:
    return shape if len(shape) == 2 else (shape[0], shape[2], shape[3], shape[1])


def bn_step(kind: str, shape: tuple, compiled: bool):
    """One training-mode forward and backward pass (a VJP) of a BN layer on a (N, C[, H, W])
    input, laid out channels-last."""
    shape = nhwc(shape)
    layer = d2l.BatchNorm(shape[-1], num_dims=len(shape)) if kind == "scratch" else BuiltinBN()
    key_x, key_g = jax.random.split(jax.random.PRNGKey(0))
    X = jax.device_put(jax.random.normal(key_x, shape) * 2 + 3, DEVICE)
    grad_Y = jax.device_put(jax.random.normal(key_g, shape), DEVICE)
    variables = layer.init(jax.random.PRNGKey(1), X, train=False)

    def step_fn(params, batch_stats, X, grad_Y):
        def forward(params, X):
            Y, updates = layer.apply({"params": params, "batch_stats": batch_stats}, X,
                                     train=True, mutable=["batch_stats"])
            return Y, updates["batch_stats"]

        _, vjp, new_stats = jax.vjp(forward, params, X, has_aux=True)
        return vjp(grad_Y), new_stats

    run = jax.jit(step_fn) if compiled else step_fn
    params, batch_stats = variables["params"], variables["batch_stats"]

    def step():
        wait(run(params, batch_stats, X, grad_Y))

    return step
