"""A clear error when a framework module is imported where its framework is not installed."""

import importlib
import sys

# framework module name -> (what to import, the Make target that builds its environment, pip name)
FRAMEWORKS = {
    "torch": ("torch", "env-torch", "torch"),
    "jax": ("flax", "env-jax", "jax flax optax"),
    "tensorflow": ("tensorflow", "env-tensorflow", "tensorflow"),
    "mxnet": ("mxnet", "env-mxnet", "mxnet==1.9.1 'numpy<1.24'"),
}


def require(framework: str) -> None:
    """Import ``framework``'s package or raise ModuleNotFoundError saying how to get it."""
    module, make_target, pip_name = FRAMEWORKS[framework]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise  # something else is missing: let that error speak for itself
        raise ModuleNotFoundError(
            f"d2l_bn.{framework} needs {module!r}, which this Python ({sys.executable}) cannot "
            f"import. In a clone of d2l-bn run `make {make_target}` and pick the Jupyter kernel "
            f"'d2l-bn-{framework}' (or run Python from .venv/{framework}); elsewhere "
            f"`pip install {pip_name}`.",
            name=module,
        ) from error
