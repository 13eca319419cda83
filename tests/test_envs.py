"""The environments: one venv per framework, each with its own Jupyter kernel in the book venv.

Runs in the book venv (`make pytest-book`), which holds jupyter_client but no framework.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import stamp  # noqa: E402

FRAMEWORKS = ["torch", "jax", "tensorflow", "mxnet"]
# The environments under test: the CPU ones (.venv) or, with `make ... ACCEL=cuda`, the CUDA ones.
VENV = Path(os.environ.get("D2L_BN_VENV", ROOT / ".venv"))
ACCEL = os.environ.get("D2L_BN_ACCEL", "cpu")


def lock_cpu_builds() -> re.Pattern:
    """The lock's lines that name a CPU build, which a CUDA environment's constraints leave out:
    the Makefile's LOCK_CPU_BUILDS (grep patterns, where `+` is literal), as one regex."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                if line.startswith("LOCK_CPU_BUILDS :="))
    patterns = [pattern.replace("$$", "$").replace("+", r"\+")
                for pattern in re.findall(r"-e '([^']*)'", line)]
    return re.compile("|".join(f"({pattern})" for pattern in patterns))


CPU_BUILD_LINE = lock_cpu_builds()

# What each kernel must be able to do: import its framework (and d2l_bn) and report versions.
PROBES = {
    "torch": "import torch; print('torch', torch.__version__)",
    "jax": "import jax, flax, optax; print('jax', jax.__version__, jax.devices()[0].platform)",
    "tensorflow": "import os, tensorflow as tf; print('tensorflow', tf.__version__, "
                  "os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))",
    "mxnet": "import mxnet, numpy; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__)",
}


def run_in_kernel(kernel_name: str, code: str, timeout: float = 120) -> str:
    """Execute ``code`` in a fresh kernel and return what it printed; fail on an error."""
    manager, client = start_new_kernel(kernel_name=kernel_name, startup_timeout=timeout)
    try:
        outputs = []

        def hook(message):
            content = message["content"]
            if message["msg_type"] == "stream":
                outputs.append(content["text"])
            elif message["msg_type"] == "error":
                outputs.append("\n".join(content["traceback"]))

        reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
        text = "".join(outputs)
        assert reply["content"]["status"] == "ok", f"{kernel_name} failed:\n{text}"
        return text
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_kernel_is_registered_in_the_book_venv(framework):
    spec = KernelSpecManager().get_kernel_spec(f"d2l-bn-{framework}")
    assert Path(spec.resource_dir).is_relative_to(Path(sys.prefix)), \
        "kernels belong to the book venv's data path, not the user's"
    assert Path(spec.argv[0]) == VENV / framework / "bin" / "python"
    assert spec.env == stamp.kernel_env(framework, ACCEL), "kernelspec is old: run `make envs`"
    if framework == "tensorflow":
        assert spec.env == {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}
        # oneDNN's line on loading goes to the kernel's stderr, not into the notebook
        assert "--IPKernelApp.capture_fd_output=False" in spec.argv
    if framework == "jax":  # the CPU build: no warning on stderr on a GPU host
        assert spec.env == ({"JAX_PLATFORMS": "cpu"} if ACCEL == "cpu" else {})


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_kernel_imports_its_framework_and_d2l_bn(framework):
    text = run_in_kernel(f"d2l-bn-{framework}",
                         PROBES[framework] + "\nimport d2l_bn; print(d2l_bn.__file__)")
    lines = text.split()
    assert lines[0] == framework, text
    assert str(ROOT / "d2l_bn") in text, "d2l_bn must be the editable install of this checkout"
    if framework == "torch":
        assert "+cpu" in lines[1] or "cuda" not in text, text
    if framework == "jax":
        assert lines[2] in ("cpu", "gpu", "cuda"), text
    if framework == "tensorflow":
        assert lines[2:4] == ["3", "1"], "the TF kernel: C++ logging silenced, oneDNN on"
    if framework == "mxnet":
        major, minor = map(int, lines[3].split(".")[:2])
        assert (major, minor) < (1, 24), "MXNet 1.9.1 fails to import with numpy >= 1.24"


def test_tensorflow_kernel_keeps_what_cpp_writes_out_of_the_outputs():
    """With oneDNN on, TensorFlow writes a line to stderr from C++ when it loads, past
    TF_CPP_MIN_LOG_LEVEL; run as the pipeline runs a notebook, it must not become an output."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import tensorflow")])
    # ipykernel captures no stderr of its process when it sees PYTEST_CURRENT_TEST (nbval's
    # runs included); make execute has none
    env = {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}
    NotebookClient(notebook, kernel_name="d2l-bn-tensorflow", timeout=120).execute(env=env)
    assert notebook.cells[0].outputs == [], "kernelspec is old: run `make envs`"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_environment_matches_its_lock_file(framework):
    """Committed notebook outputs were made with the locked versions: the venvs must hold them."""
    frozen = subprocess.run([VENV / framework / "bin" / "pip", "freeze",
                             "--exclude-editable", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True).stdout
    installed = {line for line in frozen.splitlines() if line and not line.startswith("d2l")}
    locked = set((ROOT / "requirements" / "lock" / f"{framework}.txt").read_text().splitlines())
    rebuild = (f"rebuild with `rm -rf {VENV.name}/{framework} && make env-{framework} "
               f"ACCEL={ACCEL}`, or re-lock with `make lock`")
    if ACCEL == "cpu":
        assert installed == locked, (f"missing: {sorted(locked - installed)}, "
                                     f"extra: {sorted(installed - locked)}; {rebuild}")
    else:  # the CUDA build and its nvidia-* libraries come on top of the rest of the lock
        held = {line for line in locked if not CPU_BUILD_LINE.search(line)}
        assert held <= installed, f"missing: {sorted(held - installed)}; {rebuild}"


def locked_version(framework: str, package: str) -> str:
    for line in (ROOT / "requirements" / "lock" / f"{framework}.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.lower().replace("_", "-") == package:
            return version.split("+")[0]
    raise AssertionError(f"{package} is not in requirements/lock/{framework}.txt")


@pytest.mark.parametrize("framework, package, cuda_requirement", [
    ("torch", "torch", "torch=={}"),
    ("jax", "jaxlib", "jax[cuda12]=={}"),
    ("tensorflow", "tensorflow-cpu", "tensorflow[and-cuda]=={}"),
])
def test_cuda_environment_asks_for_the_locked_release(framework, package, cuda_requirement):
    # `make envs ACCEL=cuda` must run the release the notebooks were made with, as a CUDA build.
    lines = (ROOT / "requirements" / "cuda" / f"{framework}.txt").read_text().splitlines()
    wanted = cuda_requirement.format(locked_version(framework, package))
    assert wanted in lines, f"requirements/cuda/{framework}.txt should ask for {wanted}"
    cpu_build_lines = [line for line in (ROOT / "requirements" / "lock" / f"{framework}.txt")
                       .read_text().splitlines() if CPU_BUILD_LINE.search(line)]
    assert len(cpu_build_lines) == (0 if framework == "jax" else 1), cpu_build_lines


def test_environments_are_up_to_date_so_rerunning_set_up_installs_nothing():
    result = subprocess.run(["make", "-q", "envs"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, "make envs would do work: " + result.stdout + result.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_missing_framework_names_the_make_target(framework):
    # This venv has none of the frameworks: requiring one must say how to get it.
    code = f"from d2l_bn._require import require; require({framework!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr
    assert f"make env-{framework}" in result.stderr
    assert f"d2l-bn-{framework}" in result.stderr


def test_importing_a_framework_module_without_its_framework_is_a_clear_error():
    result = subprocess.run([sys.executable, "-c", "from d2l_bn import torch as d2l"], cwd=ROOT,
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "make env-torch" in result.stderr, result.stderr


def test_every_package_of_d2l_bn_is_installed_by_a_regular_install():
    # An editable install finds any subpackage on disk; a wheel holds only the listed ones.
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    on_disk = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for init in (ROOT / "d2l_bn").rglob("__init__.py")}
    assert on_disk <= listed, f"pyproject.toml's packages lack {sorted(on_disk - listed)}"



def pinned(path: Path) -> dict:
    """The `name==version` lines of a requirements or lock file, by normalized name."""
    from packaging.requirements import Requirement
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier or [None]
            if specifier is not None and specifier.operator == "==":
                pins[requirement.name.lower().replace("_", "-")] = specifier.version
    return pins


# Colab's build of TensorFlow is `tensorflow`; the environments here hold its CPU build.
COLAB_NAME = {"tensorflow": "tensorflow-cpu"}


@pytest.mark.parametrize("framework", ["torch", "jax", "tensorflow"])
def test_declared_minimums_are_colabs_tested_releases(framework):
    """pyproject's extras ask for at least what `make colab-test` runs: Colab's releases satisfy
    them (its install cell keeps the platform's framework), and nothing older is claimed."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"][framework]
    colab = pinned(ROOT / "requirements" / "colab" / f"{framework}.txt")
    ranges = {Requirement(line).name: Requirement(line).specifier
              for line in (ROOT / "requirements" / f"{framework}.txt").read_text().splitlines()
              if line and line[0].isalpha()}
    for line in extra:
        requirement = Requirement(line)
        tested = colab[COLAB_NAME.get(requirement.name, requirement.name)]
        assert requirement.specifier == SpecifierSet(f">={tested}"), \
            f"pyproject.toml: {line}, but Colab's tested release is {tested}"
        assert ranges[COLAB_NAME.get(requirement.name, requirement.name)] == requirement.specifier, \
            f"requirements/{framework}.txt and pyproject.toml disagree on {requirement.name}"


def test_studio_lab_environment_pins_the_mxnet_lock():
    """notebooks/mxnet/environment.yml builds, on Studio Lab, the environment the MXNet notebooks
    were executed in: the Makefile's Python and the lock's releases of what it lists."""
    import yaml
    from packaging.requirements import Requirement
    environment = yaml.safe_load((ROOT / "notebooks" / "mxnet" / "environment.yml").read_text())
    conda = [entry for entry in environment["dependencies"] if isinstance(entry, str)]
    make_python = re.search(r"^PYTHON \?= python(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert f"python={make_python.group(1)}" in conda
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    locked = pinned(ROOT / "requirements" / "lock" / "mxnet.txt")
    repository = re.sub(r"^https://", "git+https://", pipeline_repository())
    names = set()
    for line in pip:
        requirement = Requirement(line)
        names.add(requirement.name)
        if requirement.name == "d2l_bn":
            assert requirement.url.startswith(repository), requirement.url
            continue
        assert str(requirement.specifier) == f"=={locked[requirement.name]}", \
            f"environment.yml: {line}; requirements/lock/mxnet.txt has {locked[requirement.name]}"
    assert {"mxnet", "numpy", "matplotlib", "d2l_bn"} <= names


def pipeline_repository() -> str:
    import yaml
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def test_set_up_takes_the_cpu_build_of_torch_from_pytorchs_index_by_default(tmp_path):
    """PyPI serves no `+cpu` builds: a user's `make envs` must ask PyTorch's CPU index for the
    lock's torch, and only for torch (CI's .ci/run turns it off: its machine has a local copy)."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("TORCH_INDEX", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    commands = {}
    for framework in ("torch", "jax"):
        result = subprocess.run(
            ["make", "-n", f"VENV={tmp_path}", f"{tmp_path}/{framework}/.installed"],
            cwd=ROOT, capture_output=True, text=True, env=environment)
        assert result.returncode == 0, result.stderr
        commands[framework] = [line for line in result.stdout.splitlines()
                               if f"{tmp_path}/{framework}/bin/pip install" in line and " -r " in line]
    index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert len(commands["torch"]) == 1 and index in commands["torch"][0], commands["torch"]
    assert len(commands["jax"]) == 1 and "--extra-index-url" not in commands["jax"][0]
    assert any(line.startswith("torch==") and line.endswith("+cpu")
               for line in (ROOT / "requirements" / "lock" / "torch.txt").read_text().splitlines())


def test_tensorflow_runs_outside_its_kernel_with_the_kernels_environment():
    # The Makefile's targets that run TensorFlow in a plain process (tests, seeds, benchmarks).
    exports = re.findall(r"^pytest-tensorflow seeds bench: export (\w+) := (\S+)$",
                         (ROOT / "Makefile").read_text(), re.M)
    assert dict(exports) == stamp.KERNEL_ENV["tensorflow"]
