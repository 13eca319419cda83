"""What a notebook's outputs depend on, recorded when it runs, and the stamp that says so.

A notebook's outputs are a function of
- its code cells (`pipeline.code_of`);
- the code of the repository's modules that its kernel imported: d2l_bn's, as the kernel found
  them in ``sys.modules`` at the end of the run. Their syntax tree counts, without docstrings, so
  an edit of a comment, a docstring or the layout changes nothing;
- the versions, in its framework's lock file, of the distributions that its kernel imported.
  Test tools (pytest, hypothesis), which no kernel imports, do not count;
- the environment variables that change the numerics or what the frameworks print, as the
  kernelspec sets them (`KERNEL_ENV`), and the Python version.

`RecordingClient` runs a notebook and records which modules and distributions it imported (stored
in the notebook's metadata as ``d2l_bn.executed_with``); `stamp` hashes that record with the files
as they are now. A notebook is up to date when the stamp stored at its run equals its stamp now.
`differing_cells` compares two runs' outputs as nbval does, so that a run that changes no output
re-writes none.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.util import ensure_async

ROOT = Path(__file__).resolve().parent.parent

# What each framework's kernelspec sets (`make envs` registers the kernels with them; pipeline.py
# kernel-env prints them): TensorFlow's C++ logging writes to stderr, which would end up in the
# outputs. oneDNN on (TensorFlow's default on x86, said explicitly): without XLA, as the exercises
# train, TensorFlow's steps run 1.7-1.8 times as fast with it (benchmarks/onednn.py).
# JAX_PLATFORMS: on a GPU host the CPU build of jaxlib warns on stderr ("An NVIDIA GPU may be
# present on this machine, but a CUDA-enabled jaxlib is not installed").
KERNEL_ENV = {
    "torch": {},
    "mxnet": {},
    "jax": {"JAX_PLATFORMS": "cpu"},
    "tensorflow": {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"},
}
# Left out of the CUDA environments' kernels (make envs ACCEL=cuda), whose JAX is for the GPU.
CPU_ONLY_ENV = {"JAX_PLATFORMS"}
# Variables that change a framework's floating-point path or its logging. A kernel that runs with
# one that its kernelspec does not set (a shell's OMP_NUM_THREADS=1, say) makes outputs that the
# stamp cannot describe, so `execute` refuses to store them.
NUMERIC_ENVIRONMENT = sorted({
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_DETERMINISTIC_OPS", "TF_XLA_FLAGS",
    "XLA_FLAGS", "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION", "CUDA_VISIBLE_DEVICES",
    "MXNET_ENGINE_TYPE", "MXNET_CPU_WORKER_NTHREADS", "MXNET_SAFE_ACCUMULATION", "PYTHONHASHSEED",
} | {name for env in KERNEL_ENV.values() for name in env})

# Run in the kernel before the first cell: the numeric environment it was started with.
ENVIRONMENT_PROBE = ("__import__('json').dumps({name: value for name, value in "
                     f"__import__('os').environ.items() if name in {NUMERIC_ENVIRONMENT!r}}})")
# Run in the kernel after the last cell (silently, so the notebook's execution counts do not
# move): the repository's source files and the distributions that the notebook imported.
IMPORTS_PROBE_CODE = '''\
def _d2l_bn_imports(root):
    import importlib.metadata, json, os, sys
    modules = list(sys.modules.values())
    files = set()
    for module in modules:
        path = getattr(module, "__file__", None)  # torch.ops' is a bare "_ops.py"
        if path and os.path.isabs(path) and "site-packages" not in path:
            relative = os.path.relpath(os.path.realpath(path), root)
            if not relative.startswith(".."):
                files.add(relative.replace(os.sep, "/"))
    providers = importlib.metadata.packages_distributions()
    tops = {name.partition(".")[0] for name in list(sys.modules)}
    distributions = {d for top in tops for d in providers.get(top, [])}
    return json.dumps({"python": "%d.%d" % sys.version_info[:2], "files": sorted(files),
                       "distributions": sorted(distributions)})'''


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def python_version() -> str:
    return "%d.%d" % sys.version_info[:2]


def kernel_env(framework: str, accel: str = "cpu") -> dict:
    return {name: value for name, value in KERNEL_ENV[framework].items()
            if accel == "cpu" or name not in CPU_ONLY_ENV}


def code_hash(path: Path) -> str:
    """The hash of a Python file's syntax tree less its docstrings: comments, docstrings, blank
    lines and line breaks inside expressions do not change it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def locked_versions(framework: str, root: Path = ROOT) -> dict:
    """name -> the lock file's line for it, for the framework's environment."""
    lines = (root / "requirements" / "lock" / f"{framework}.txt").read_text().splitlines()
    return {canonical(line.split("==")[0]): line.strip() for line in lines if "==" in line}


def stamp(code: list, framework: str, record: dict | None, root: Path = ROOT) -> str | None:
    """The hash of what the outputs depend on, for a notebook with these code cells that imported
    what ``record`` says; None without a record (a notebook never run with recording)."""
    if not record:
        return None
    digest = hashlib.sha256(repr(code).encode())
    digest.update(python_version().encode())
    digest.update(json.dumps(kernel_env(framework), sort_keys=True).encode())
    for relative in record["files"]:
        path = root / relative
        state = code_hash(path) if path.suffix == ".py" and path.exists() else "missing"
        digest.update(f"{relative}:{state}\n".encode())
    locked = locked_versions(framework, root)
    for name in record["distributions"]:
        digest.update(f"{name}:{locked.get(canonical(name), 'not locked')}\n".encode())
    return digest.hexdigest()


class RecordingClient(NotebookClient):
    """nbclient's run of a notebook that also records what its kernel imported (``record``) and
    checks that the kernel's numeric environment is the one its kernelspec declares."""

    framework: str = ""
    record: dict | None = None

    async def _evaluate(self, expression: str, code: str = "") -> object:
        msg_id = await ensure_async(self.kc.execute(
            code, silent=True, store_history=False, user_expressions={"value": expression}))
        reply = await self.async_wait_for_reply(msg_id)
        value = reply["content"]["user_expressions"]["value"]
        if value["status"] != "ok":
            raise RuntimeError(f"the kernel could not say what the notebook imported: {value}")
        return json.loads(ast.literal_eval(value["data"]["text/plain"]))

    async def async_start_new_kernel_client(self):
        client = await super().async_start_new_kernel_client()
        environment = await self._evaluate(ENVIRONMENT_PROBE)
        expected = kernel_env(self.framework)
        if environment != expected:
            raise RuntimeError(
                f"the kernel d2l-bn-{self.framework} runs with {environment}, but its kernelspec "
                f"sets {expected}: outputs made so would not be the book's. Unset the others in "
                "your shell (or run `make envs` again if the kernelspec is old) and execute again.")
        return client

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        if cell_index == len(self.nb.cells) - 1:
            self.record = await self._evaluate(f"_d2l_bn_imports({str(ROOT)!r})",
                                               IMPORTS_PROBE_CODE)
            if self.record.pop("python") != python_version():
                raise RuntimeError("the kernel's Python is not the book environment's: "
                                   "run `make envs`")
        return cell


def comparable(outputs: list, skip: tuple, patterns: list) -> dict:
    """A cell's outputs as nbval compares them: streams joined by name, the keys it skips left out,
    MIME data flattened, strings sanitized."""
    from nbval.plugin import coalesce_streams, transform_streams_for_comparison

    grouped: dict = {}
    for output in transform_streams_for_comparison(coalesce_streams(nbformat.from_dict(outputs))):
        for key, value in output.items():
            if key in skip:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for data_key, data in items:
                if data_key in skip:
                    continue
                if isinstance(data, str):
                    for regex, replace in patterns:
                        data = re.sub(regex, replace, data)
                grouped.setdefault(data_key, []).append(data)
    return grouped


# nbval's skip list (nbval.plugin.IPyNbFile), with images skipped as it does without nbdime.
NBVAL_SKIP = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
              "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


def differing_cells(committed: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> list[str]:
    """The ids of the code cells whose outputs differ as nbval's strict check compares them,
    applied to every cell (a measured cell's text too)."""
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((ROOT / "tools" / "nbval-sanitize.cfg").read_text())
    fresh_by_id = {cell.id: cell for cell in fresh.cells if cell.cell_type == "code"}
    return [cell.id for cell in committed.cells
            if cell.cell_type == "code" and comparable(cell.outputs, NBVAL_SKIP, patterns)
            != comparable(fresh_by_id[cell.id].outputs, NBVAL_SKIP, patterns)]
