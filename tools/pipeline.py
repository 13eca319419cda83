"""The notebook pipeline: one chapter source -> per-framework notebooks -> executed -> merged page.

    python tools/pipeline.py split      # chapters/*.md -> notebooks/<framework>/*.ipynb (outputs kept)
    python tools/pipeline.py execute    # run each stale notebook in its framework's kernel
                                        # (--framework torch, --page batch-norm: only those)
    python tools/pipeline.py merge      # executed notebooks -> book/*.ipynb, all frameworks' cells
    python tools/pipeline.py check      # exit 1 if a committed notebook drifted from its source

A chapter source is a MyST notebook whose code cells each carry one framework tag (`torch`, `jax`,
`tensorflow`, `mxnet`). Splitting keeps the shared markdown and one framework's cells, and puts in
front a cell that installs d2l_bn on Colab or Studio Lab and a row of launch links. Each cell has a
stable id (see `read_source`), so the merge can put every framework's executed cell back in place.
Execution is skipped when the stamp of what a notebook's outputs depend on (tools/stamp.py: its
code cells, the code of the d2l_bn modules and the locked versions of the distributions that its
kernel imported, its kernel's environment) is the one stored in its metadata, so re-running with
nothing changed executes nothing; an edit of the prose, a docstring or a comment keeps the outputs.
A run whose outputs are the committed ones keeps them as they are and stores only the new stamp.

    python tools/pipeline.py stale      # list the notebooks whose stamp is not current
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

import jupyter_markdown
import stamp

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
NOTEBOOKS = ROOT / "notebooks"
MERGED = ROOT / "book"

# Tag -> what readers see; the order is the order of the tabs.
FRAMEWORKS = {"torch": "PyTorch", "mxnet": "MXNet", "jax": "JAX", "tensorflow": "TensorFlow"}
# The tab sync group of the page's code tabs (_ext/framework_tabs.py), which the launch box joins.
SYNC_GROUP = "framework"
# The metadata that says what a notebook's outputs were made from (tools/stamp.py).
STAMP_KEYS = ("input_hash", "executed_with")
# Tags that say how the notebook check treats a cell's output (tools/nbval_modes.py), not what the
# cell computes: they are not part of what the outputs depend on.
OUTPUT_KIND_TAGS = {"measured"}
# Colab and Studio Lab accept this kernelspec; the framework's kernel is chosen at run time.
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
# Options of a kernel's own command line, after ipykernel install's: with oneDNN on, TensorFlow
# writes a line from C++ straight to stderr when it loads, which TF_CPP_MIN_LOG_LEVEL does not
# silence; the kernel then keeps its process's stderr out of the outputs (Python's warnings show).
KERNEL_OPTIONS = {"tensorflow": ["--IPKernelApp.capture_fd_output=False"]}

INSTALL_CELL = '''\
# On Colab or SageMaker Studio Lab, install what the platform lacks: d2l_bn, and {name} with it
# where it is missing (locally everything is there, and this does nothing).
import importlib.util, subprocess, sys
if any(importlib.util.find_spec(module) is None for module in {modules}):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "d2l_bn[{framework}] @ git+{repository}@{branch}"], check=True)'''
# The modules each framework's notebook imports (d2l_bn's extras install them).
MODULES = {"torch": ["torch"], "jax": ["jax", "flax", "optax"], "tensorflow": ["tensorflow", "keras"],
           "mxnet": ["mxnet"]}

# No platform ships MXNet, and its last release cannot run on Python 3.12+ (Colab's): say so at
# once rather than fail somewhere in the middle.
MXNET_INSTALL_CELL = '''\
# MXNet 1.9.1, its last release, needs numpy<1.24, which has no build for Python 3.12 or newer.
import importlib.util, subprocess, sys
if sys.version_info >= (3, 12):
    raise SystemExit(
        f"MXNet cannot run on Python {{sys.version_info.major}}.{{sys.version_info.minor}} "
        "(Colab's Python is 3.12+). On SageMaker Studio Lab, create the environment in "
        "notebooks/mxnet/environment.yml (`conda env create -f environment.yml`) and choose its "
        "kernel; on your machine, run `make env-mxnet` in a clone of d2l-bn and use the kernel "
        "d2l-bn-mxnet. Or read this section in another framework.")
if importlib.util.find_spec("mxnet") is None or importlib.util.find_spec("d2l_bn") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "d2l_bn[mxnet] @ git+{repository}@{branch}"], check=True)'''


def book_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def chapter_sources() -> list[Path]:
    return sorted(CHAPTERS.glob("*.md"))


def notebook_path(source: Path, framework: str) -> Path:
    return NOTEBOOKS / framework / f"{source.stem}.ipynb"


def _repository_path(source: Path, framework: str) -> str:
    """`<org>/<repo>/blob/<branch>/<path>` of a framework's notebook; the address is in _config.yml."""
    repo = book_config()["repository"]
    github = repo["url"].removeprefix("https://github.com/").rstrip("/")
    return f"{github}/blob/{repo['branch']}/{notebook_path(source, framework).relative_to(ROOT)}"


def colab_url(source: Path, framework: str) -> str:
    return f"https://colab.research.google.com/github/{_repository_path(source, framework)}"


def studio_lab_url(source: Path, framework: str) -> str:
    return f"https://studiolab.sagemaker.aws/import/github/{_repository_path(source, framework)}"


def launch_links(source: Path, framework: str) -> str:
    return (f"*{FRAMEWORKS[framework]} notebook:* "
            f"[Open in Colab]({colab_url(source, framework)}) · "
            f"[Open in SageMaker Studio Lab]({studio_lab_url(source, framework)})")


def framework_of(cell) -> str | None:
    tags = [tag for tag in cell.metadata.get("tags", []) if tag in FRAMEWORKS]
    if cell.cell_type == "code" and len(tags) != 1:
        raise ValueError(f"code cell needs exactly one framework tag of {list(FRAMEWORKS)}, "
                         f"has {tags}:\n{cell.source[:200]}")
    return tags[0] if tags else None


def read_source(source: Path) -> nbformat.NotebookNode:
    """The chapter source, every cell given a stable id: `<framework>-<k>` for the k-th code cell
    of a framework, `md-<k>` for the k-th markdown cell. Adding one framework's cells leaves the
    other frameworks' ids, and so their executed notebooks, as they were."""
    notebook = jupytext.read(source)
    counts: dict[str, int] = {}
    for cell in notebook.cells:
        kind = framework_of(cell) or "md"  # framework_of also validates the tags
        cell.id = f"{kind}-{counts.get(kind, 0):03d}"
        counts[kind] = counts.get(kind, 0) + 1
    return notebook


def split(source: Path, framework: str) -> nbformat.NotebookNode:
    """One framework's notebook, without outputs."""
    chapter = read_source(source)
    repo = book_config()["repository"]
    template = MXNET_INSTALL_CELL if framework == "mxnet" else INSTALL_CELL
    install = nbformat.v4.new_code_cell(
        template.format(repository=repo["url"], branch=repo["branch"], framework=framework,
                        name=FRAMEWORKS[framework], modules=MODULES[framework] + ["d2l_bn"]),
        id="install",
        metadata={"tags": [framework]})
    links = nbformat.v4.new_markdown_cell(launch_links(source, framework), id="launch")
    cells = [links, install] + [cell for cell in chapter.cells
                                if framework_of(cell) in (None, framework)]
    notebook = nbformat.v4.new_notebook(cells=copy.deepcopy(cells))
    # Jupyter, Colab and Studio Lab do not read MyST: the notebook's prose says it in plain
    # markdown (the website, made by `merge`, keeps the MyST).
    for cell in notebook.cells[1:]:
        if cell.cell_type == "markdown":
            cell.source = jupyter_markdown.to_jupyter(cell.source, source.stem, book_references())
    notebook.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"},
                         "d2l_bn": {"framework": framework, "source": str(source.relative_to(ROOT))}}
    return notebook


@functools.cache
def book_references() -> jupyter_markdown.BookReferences:
    """What rewriting the prose needs to know about the whole book (labels, equations, works)."""
    return jupyter_markdown.BookReferences(ROOT)


def inputs_of(notebook: nbformat.NotebookNode) -> list:
    """What a notebook is made of, outputs and execution records aside."""
    return [(cell.get("id"), cell.cell_type, cell.source,
             sorted(cell.metadata.get("tags", []))) for cell in notebook.cells]


def code_of(notebook: nbformat.NotebookNode) -> list:
    """The part of a notebook's inputs that its outputs depend on: the code cells, less the tags
    that only say how their outputs are checked."""
    return [(cell_id, kind, source, [tag for tag in tags if tag not in OUTPUT_KIND_TAGS])
            for cell_id, kind, source, tags in inputs_of(notebook) if kind == "code"]


def frameworks_in(source: Path) -> list[str]:
    """The frameworks that have code in a chapter (the others get no notebook yet)."""
    present = {framework_of(cell) for cell in read_source(source).cells}
    return [framework for framework in FRAMEWORKS if framework in present]


def split_all() -> list[Path]:
    """Write the notebooks whose inputs changed; keep the others (and their outputs) as they are."""
    written = []
    for source in chapter_sources():
        for framework in frameworks_in(source):
            notebook = split(source, framework)
            path = notebook_path(source, framework)
            if path.exists():
                committed = nbformat.read(path, as_version=4)
                if inputs_of(committed) == inputs_of(notebook):
                    continue
                if code_of(committed) == code_of(notebook):
                    keep_outputs(committed, notebook)  # only the prose changed
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, path)
            written.append(path)
    return written


def keep_outputs(executed: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> None:
    """Carry the outputs and execution record of ``executed`` over to ``fresh``, whose code cells
    are the same."""
    by_id = {cell.id: cell for cell in executed.cells if cell.cell_type == "code"}
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs = by_id[cell.id].outputs
            cell.execution_count = by_id[cell.id].execution_count
    for key in STAMP_KEYS:
        if key in executed.metadata.get("d2l_bn", {}):
            fresh.metadata["d2l_bn"][key] = executed.metadata["d2l_bn"][key]


def input_hash(notebook: nbformat.NotebookNode, framework: str) -> str | None:
    """The stamp of a notebook's outputs as its inputs are now (None if it has no record)."""
    record = notebook.metadata["d2l_bn"].get("executed_with")
    return stamp.stamp(code_of(notebook), framework, record)


def is_stale(notebook: nbformat.NotebookNode) -> bool:
    framework = notebook.metadata["d2l_bn"]["framework"]
    stored = notebook.metadata["d2l_bn"].get("input_hash")
    return stored is None or stored != input_hash(notebook, framework)


def run(notebook: nbformat.NotebookNode, path: Path) -> dict:
    """Execute a notebook in place in its framework's kernel; what its kernel imported."""
    framework = notebook.metadata["d2l_bn"]["framework"]
    # The kernel is picked here, not by the notebook's metadata (which stays `python3`).
    client = stamp.RecordingClient(notebook, kernel_name=f"d2l-bn-{framework}", timeout=1800,
                                   record_timing=False,
                                   resources={"metadata": {"path": str(path.parent)}})
    client.framework = framework
    client.execute()
    notebook.metadata["kernelspec"] = KERNELSPEC
    return client.record


def set_stamp(notebook: nbformat.NotebookNode, record: dict) -> None:
    framework = notebook.metadata["d2l_bn"]["framework"]
    notebook.metadata["d2l_bn"]["executed_with"] = record
    notebook.metadata["d2l_bn"]["input_hash"] = stamp.stamp(code_of(notebook), framework, record)


def execute(path: Path, force: bool = False) -> str | None:
    """Run a notebook in its framework's kernel unless its stamp is current; what came of it.

    Where the fresh outputs are the committed ones by nbval's rules, every cell compared (the
    measured ones too: a change of the numerics must show the new run's numbers), the committed
    outputs stay byte for byte and only the stamp is new: a change of the stamp's scheme, or of
    code that leaves the results alone, re-writes no output."""
    committed = nbformat.read(path, as_version=4)
    if not force and not is_stale(committed):
        return None
    fresh = copy.deepcopy(committed)
    record = run(fresh, path)
    differing = stamp.differing_cells(committed, fresh)
    kept = committed if not differing else fresh
    set_stamp(kept, record)
    nbformat.write(kept, path)
    if not differing:
        return "executed, outputs as committed (only the stamp is new)"
    return f"executed, new outputs in {len(differing)} cells"


def selected_notebooks(frameworks: list[str] | None, pages: list[str] | None) -> list[Path]:
    return [path for framework in frameworks or FRAMEWORKS
            for path in sorted((NOTEBOOKS / framework).glob("*.ipynb"))
            if not pages or path.stem in pages]


def launch_box(source: Path, frameworks: list[str]) -> str:
    """A page's "Run it yourself" box: one tab per framework, synced with the code tabs (same sync
    group, same order), with links to open its notebook in Colab or Studio Lab or to download it."""
    tabs = "".join(
        f":::{{tab-item}} {FRAMEWORKS[framework]}\n:sync: {framework}\n"
        f"[Open in Colab]({colab_url(source, framework)}) · "
        f"[Open in SageMaker Studio Lab]({studio_lab_url(source, framework)}) · "
        f"[Download the .ipynb](path:{os.path.relpath(notebook_path(source, framework), MERGED)})"
        "\n:::\n" for framework in frameworks)
    return ("::::::{admonition} Run it yourself\n:class: tip launch\n"
            "Open this section as a notebook in the framework you chose:\n\n"
            f"::::{{tab-set}}\n:sync-group: {SYNC_GROUP}\n\n{tabs}::::\n::::::")


def merge(source: Path) -> nbformat.NotebookNode:
    """The page: shared markdown once, then every framework's executed cells in source order."""
    chapter = read_source(source)
    executed = {}
    for framework in FRAMEWORKS:
        path = notebook_path(source, framework)
        if path.exists():
            for cell in nbformat.read(path, as_version=4).cells:
                executed[cell.id] = cell
    present = [framework for framework in FRAMEWORKS if notebook_path(source, framework).exists()]
    launch = launch_box(source, present)
    cells = []
    for position, cell in enumerate(chapter.cells):
        if position == 1:  # after the title and introduction
            cells.append(nbformat.v4.new_markdown_cell(launch, id="launch"))
        if cell.cell_type == "code" and cell.id not in executed:
            continue  # a framework whose notebook does not exist yet
        cells.append(executed.get(cell.id, cell) if cell.cell_type == "code" else cell)
    merged = nbformat.v4.new_notebook(cells=copy.deepcopy(cells))
    merged.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"},
                       "d2l_bn": {"source": str(source.relative_to(ROOT))}}
    return merged


def add_kernel_options(framework: str, kernel_json: Path) -> None:
    """Append the framework's KERNEL_OPTIONS to the argv of its installed kernelspec, once."""
    spec = json.loads(kernel_json.read_text())
    spec["argv"] += [option for option in KERNEL_OPTIONS.get(framework, [])
                     if option not in spec["argv"]]
    kernel_json.write_text(json.dumps(spec, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command",
                        choices=["split", "execute", "stale", "merge", "check", "kernel-env",
                                 "kernel-options"])
    parser.add_argument("--framework", choices=list(FRAMEWORKS), action="append",
                        help="execute only these frameworks' notebooks (default: all)")
    parser.add_argument("--page", action="append",
                        help="execute only these pages' notebooks, by name (default: all)")
    parser.add_argument("--force", action="store_true", help="execute even if up to date")
    parser.add_argument("--accel", choices=["cpu", "cuda"], default="cpu",
                        help="kernel-env: for the CPU or the CUDA environments")
    parser.add_argument("kernel_framework", nargs="?", choices=list(FRAMEWORKS),
                        help="kernel-env, kernel-options: the kernel's framework")
    parser.add_argument("kernel_json", nargs="?", type=Path,
                        help="kernel-options: the kernel.json that ipykernel install wrote")
    args = parser.parse_args(argv)

    if args.command == "split":
        for path in split_all():
            print(f"wrote {path.relative_to(ROOT)}")
    elif args.command == "check":
        stale = [notebook_path(source, framework) for source in chapter_sources()
                 for framework in frameworks_in(source)
                 if not notebook_path(source, framework).exists()
                 or inputs_of(nbformat.read(notebook_path(source, framework), as_version=4))
                 != inputs_of(split(source, framework))]
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from its source: run `make notebooks`")
        return 1 if stale else 0
    elif args.command == "execute":
        for path in selected_notebooks(args.framework, args.page):
            print(f"{path.relative_to(ROOT)}: ", end="", flush=True)
            print(execute(path, force=args.force) or "up to date", flush=True)
    elif args.command == "stale":
        for path in selected_notebooks(args.framework, args.page):
            if is_stale(nbformat.read(path, as_version=4)):
                print(path.relative_to(ROOT))
    elif args.command == "kernel-env":
        print(" ".join(f"--env {name} {value}" for name, value
                       in stamp.kernel_env(args.kernel_framework, args.accel).items()))
    elif args.command == "kernel-options":
        if args.kernel_json is None or not args.kernel_json.is_file():
            parser.error("kernel-options needs a framework and the kernel.json that ipykernel "
                         "install wrote, e.g. kernel-options tensorflow "
                         ".venv/book/share/jupyter/kernels/d2l-bn-tensorflow/kernel.json")
        add_kernel_options(args.kernel_framework, args.kernel_json)
    elif args.command == "merge":
        MERGED.mkdir(exist_ok=True)
        for source in chapter_sources():
            nbformat.write(merge(source), MERGED / f"{source.stem}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
