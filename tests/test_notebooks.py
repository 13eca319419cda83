"""The notebook pipeline's promises about the committed notebooks (runs in the book venv).

nbval (`make nbval`) executes the notebooks; these tests check what must hold without running them.
"""

import ast
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import pipeline  # noqa: E402

# Cells whose outputs nbval may not compare (the live training figure, updated in place): one per
# training run in a notebook. Raising this needs a reason.
MAX_IGNORED_OUTPUT_CELLS = 2

SOURCES = pipeline.chapter_sources()
NOTEBOOKS = [(source, framework, pipeline.notebook_path(source, framework))
             for source in SOURCES for framework in pipeline.frameworks_in(source)]
IDS = [str(path.relative_to(ROOT)) for _, _, path in NOTEBOOKS]


def test_there_is_a_chapter_with_a_pytorch_notebook():
    assert SOURCES, "no chapter sources in chapters/"
    assert any(framework == "torch" for _, framework, _ in NOTEBOOKS)


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_notebook_is_generated_from_its_source(source, framework, path):
    assert path.exists(), f"{path} missing: run `make notebooks`"
    committed = nbformat.read(path, as_version=4)
    assert pipeline.inputs_of(committed) == pipeline.inputs_of(pipeline.split(source, framework)), \
        f"{path.relative_to(ROOT)} drifted from {source.relative_to(ROOT)}: run `make notebooks`"


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_notebook_was_executed_with_the_current_code_and_versions(source, framework, path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["d2l_bn"].get("input_hash") == pipeline.input_hash(notebook, framework), \
        "stale outputs: run `make execute` (the cells, the lock file or d2l_bn changed)"
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"cell {cell.id} was not executed"
        for output in cell.outputs:
            assert output.output_type != "error", f"cell {cell.id} failed"
            assert not (output.output_type == "stream" and output.name == "stderr"), \
                f"cell {cell.id} wrote to stderr: {output.text[:300]}"


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_notebook_opens_in_colab_and_installs_d2l_bn_first(source, framework, path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"] == pipeline.KERNELSPEC  # Colab rejects other names
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    repository = pipeline.book_config()["repository"]["url"]
    if framework == "mxnet":
        # No platform has MXNet, and Python 3.12+ cannot host it: stop at once, saying what to do.
        assert "sys.version_info >= (3, 12)" in first_code.source
        assert "environment.yml" in first_code.source
        assert (ROOT / "notebooks" / "mxnet" / "environment.yml").exists()
    # d2l_bn with its framework extra, only where something is missing: the extras are lower
    # bounds (pyproject.toml), which Colab's own framework satisfies, so pip keeps it.
    assert f"d2l_bn[{framework}] @ git+{repository}" in first_code.source
    assert "find_spec(" in first_code.source.split("pip", 1)[0]


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_launch_links_point_at_this_committed_notebook(source, framework, path):
    notebook = nbformat.read(path, as_version=4)
    links = notebook.cells[0].source
    relative = path.relative_to(ROOT).as_posix()
    assert f"colab.research.google.com/github/" in links and links.count(relative) == 2
    repo = pipeline.book_config()["repository"]["url"].removeprefix("https://github.com/")
    assert f"/{repo}/blob/" in links


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_few_cells_escape_output_comparison(source, framework, path):
    tags = [tag for cell in nbformat.read(path, as_version=4).cells
            for tag in cell.metadata.get("tags", [])]
    assert tags.count("nbval-ignore-output") <= MAX_IGNORED_OUTPUT_CELLS
    assert "nbval-skip" not in tags and "raises-exception" not in tags


def definitions(code: str, prefix: str = "") -> dict[str, str]:
    """Top-level function and class definitions in ``code``, by name, as source text."""
    tree = ast.parse(code)
    return {node.name: ast.get_source_segment(code, node).replace(prefix, "")
            for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def local_helpers(source) -> set[str]:
    """Names a page declares, in its front matter (``d2l_bn: local_helpers: [...]``), as helpers
    of its own that d2l_bn does not ship (the exercises' `train`, for instance)."""
    return set(pipeline.read_source(source).metadata.get("d2l_bn", {}).get("local_helpers", []))


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_what_the_chapter_defines_is_what_d2l_bn_ships(source, framework, path):
    """A page shows from-scratch code; d2l_bn must hold exactly that code. Only the helpers a page
    declares local may be defined without being shipped, and they must not shadow d2l_bn."""
    cells = [cell.source for cell in pipeline.read_source(source).cells
             if pipeline.framework_of(cell) == framework]
    shown = {}
    for code in cells:
        shown.update(definitions(code, prefix="d2l."))
    shipped = definitions((ROOT / "d2l_bn" / f"{framework}.py").read_text())
    # A page may show code of a subpackage instead (``d2l_bn: ships_from: parallel``), whose
    # modules import the framework's module as d2l too.
    ships_from = pipeline.read_source(source).metadata.get("d2l_bn", {}).get("ships_from")
    if ships_from:
        shipped = definitions((ROOT / "d2l_bn" / ships_from / f"{framework}.py").read_text(),
                              prefix="d2l.")
    local = local_helpers(source)
    for name in local & set(shipped):
        pytest.fail(f"{name} is declared a local helper of {source.name} but d2l_bn.{framework} "
                    f"ships a {name}: rename the helper")
    shown = {name: code for name, code in shown.items() if name not in local}
    # (a page on a subpackage may show none in a framework whose switch is a built-in argument)
    assert shown or ships_from, f"{source.name} shows no code of d2l_bn.{framework}"
    for name, code in shown.items():
        assert name in shipped, f"the chapter defines {name}, which d2l_bn.{framework} lacks"
        assert code == shipped[name], f"{name} in the chapter differs from d2l_bn.{framework}"
