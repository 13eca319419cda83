"""What each framework's built-in batch-norm layer does, as the chapter's convention table states it.

Framework-free: the per-framework equivalence tests (tests/equivalence.py, run in each framework's
venv) check every entry against the real layer, and tests/test_notebooks.py checks that the table
in chapters/batch-norm.md says the same and names those tests.
"""

CONVENTIONS = {
    "torch": {
        "layer": "torch.nn.BatchNorm2d",
        "momentum_weights": "new",     # running = (1 - m) * running + m * batch
        "momentum_default": 0.1,
        "eps_default": 1e-5,
        "running_var": "unbiased",     # fed the batch variance times n / (n - 1)
        "variance": "two-pass",        # E[(x - E[x])²]
        "channel_axis": 1,             # (N, C, H, W)
        "updates_in": "forward",
        "mode": "model.train() / model.eval()",
        "half_output": "input dtype",  # float16/bfloat16 in: what dtype comes out
        "half_dtypes": ("float16", "bfloat16"),
    },
    "mxnet": {
        "layer": "mxnet.gluon.nn.BatchNorm",
        "momentum_weights": "old",     # running = m * running + (1 - m) * batch
        "momentum_default": 0.9,
        "eps_default": 1e-5,
        "running_var": "biased",
        "variance": "two-pass",
        "channel_axis": 1,
        "updates_in": "backward",      # MXNet 1.9.1 on the CPU: the forward pass leaves them
        "mode": "autograd.record()",
        "half_output": "input dtype",
        "half_dtypes": ("float16",),   # NumPy, hence MXNet's CPU arrays, has no bfloat16
    },
    "jax": {
        "layer": "flax.linen.BatchNorm",
        "momentum_weights": "old",
        "momentum_default": 0.99,
        "eps_default": 1e-5,
        "running_var": "biased",
        "variance": "one-pass",        # E[x²] - E[x]² unless use_fast_variance=False
        "channel_axis": -1,            # (N, H, W, C)
        "updates_in": "forward",       # returned by apply(..., mutable=['batch_stats'])
        "mode": "use_running_average=",
        "half_output": "float32",
        "half_dtypes": ("float16", "bfloat16"),
    },
    "tensorflow": {
        "layer": "keras.layers.BatchNormalization",
        "momentum_weights": "old",
        "momentum_default": 0.99,
        "eps_default": 1e-3,
        "running_var": "biased",
        "variance": "two-pass",
        "channel_axis": -1,
        "updates_in": "forward",
        "mode": "training=",
        "half_output": "float32",
        "half_dtypes": ("float16", "bfloat16"),
    },
}


def new_batch_weight(framework: str, momentum: float | None = None) -> float:
    """The built-in's ``momentum`` (its default if None) as the weight of the new batch."""
    convention = CONVENTIONS[framework]
    m = convention["momentum_default"] if momentum is None else momentum
    return m if convention["momentum_weights"] == "new" else 1 - m
