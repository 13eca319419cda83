"""The notebooks' stamps (tools/stamp.py): what re-executes a notebook, and what does not.

Each scenario edits a scratch copy of the repository (its tracked files) and asks that copy's
pipeline which notebooks are stale, as `make execute` would, without executing any. Runs in the
book venv; the last tests start a kernel.
"""

import ast
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import pipeline  # noqa: E402
import stamp  # noqa: E402

ALL_NOTEBOOKS = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("notebooks/*/*.ipynb"))


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A copy of the repository's tracked files (a clean clone's, less git)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                           text=True).stdout.split("\0")
    for name in filter(None, files):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return tmp_path


def stale(root: Path) -> list[str]:
    result = subprocess.run([sys.executable, str(root / "tools" / "pipeline.py"), "stale"],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return sorted(result.stdout.split())


def edit_docstrings_and_comments(path: Path) -> None:
    """Reword every docstring of a module and add comments, leaving its code alone."""
    lines = path.read_text().splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and ast.get_docstring(node, clean=False) is not None:
            first = node.body[0].value
            line = lines[first.lineno - 1]
            quotes = re.match(r'[rRbBuU]*("""|\'\'\'|"|\')', line[first.col_offset:]).end()
            at = first.col_offset + quotes
            lines[first.lineno - 1] = line[:at] + "Reworded. " + line[at:]
    lines.insert(0, "# A new comment at the top.\n")
    lines.append("# A new comment at the end.\n")
    path.write_text("".join(lines))


def test_the_committed_notebooks_are_up_to_date(scratch):
    assert stale(scratch) == []


def test_docstrings_comments_and_test_tools_re_execute_nothing(scratch):
    for path in (scratch / "d2l_bn").rglob("*.py"):
        edit_docstrings_and_comments(path)
    bumped = set()
    for lock in (scratch / "requirements" / "lock").glob("*.txt"):
        text = lock.read_text()
        new_text = re.sub(r"^(pytest|hypothesis)==(\S+)$", r"\1==\2.post1", text, flags=re.M)
        if new_text != text:
            bumped.add(lock.stem)
        lock.write_text(new_text)
    assert {"torch", "jax", "tensorflow", "mxnet"} <= bumped
    assert stale(scratch) == []


def test_an_edit_of_a_module_re_executes_exactly_the_notebooks_that_import_it(scratch):
    with (scratch / "d2l_bn" / "parallel" / "jax.py").open("a") as module:
        module.write("\nSTEPS_PER_SYNC = 1\n")
    assert stale(scratch) == ["notebooks/jax/batch-norm-devices.ipynb"]


def test_a_new_version_of_an_imported_distribution_re_executes_its_framework(scratch):
    lock = scratch / "requirements" / "lock" / "torch.txt"
    lock.write_text(re.sub(r"^numpy==(\S+)$", r"numpy==\1.post1", lock.read_text(), flags=re.M))
    assert stale(scratch) == sorted(path for path in ALL_NOTEBOOKS if "/torch/" in path)


def test_the_kernel_environment_is_part_of_the_stamp(scratch):
    module = scratch / "tools" / "stamp.py"
    text = module.read_text()
    assert '"TF_ENABLE_ONEDNN_OPTS": "1"' in text
    module.write_text(text.replace('"TF_ENABLE_ONEDNN_OPTS": "1"', '"TF_ENABLE_ONEDNN_OPTS": "0"'))
    assert stale(scratch) == sorted(path for path in ALL_NOTEBOOKS if "/tensorflow/" in path)


def test_code_hash_ignores_docstrings_comments_and_layout_but_not_code(tmp_path):
    path = tmp_path / "module.py"
    path.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    before = stamp.code_hash(path)
    path.write_text('"""Other."""\n# note\ndef f(x):  # why\n    """Other."""\n\n    return (x\n            + 1)\n')
    assert stamp.code_hash(path) == before
    path.write_text('def f(x):\n    """Only a docstring."""\n')
    only_docstring = stamp.code_hash(path)
    path.write_text('def f(x):\n    pass\n')
    assert stamp.code_hash(path) == only_docstring  # an empty body stays a body
    path.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 2\n')
    assert stamp.code_hash(path) != before


def output(text, name="stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_outputs_are_compared_as_nbval_compares_them():
    committed = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("a", id="exact"), nbformat.v4.new_code_cell("b", id="measured")])
    committed.cells[1].metadata["tags"] = ["measured"]
    fresh = copy.deepcopy(committed)
    committed.cells[0].outputs = [output("object at 0x7f00aa11 \n"), output("b\n")]
    fresh.cells[0].outputs = [output("object at 0x55ddbb22 \nb\n")]  # joined, address sanitized
    committed.cells[1].outputs = fresh.cells[1].outputs = [output("accuracy 0.85\n")]
    assert stamp.differing_cells(committed, fresh) == []
    fresh.cells[1].outputs = [output("accuracy 0.86\n")]  # a measured cell's text counts too
    assert stamp.differing_cells(committed, fresh) == ["measured"]
    fresh.cells[0].outputs.append(output("a warning\n", name="stderr"))
    assert stamp.differing_cells(committed, fresh) == ["exact", "measured"]


def test_the_skip_list_is_nbvals_own():
    """stamp.NBVAL_SKIP restates the keys nbval leaves out of its comparison (it keeps them in
    IPyNbFile.__init__, out of reach without a pytest session): read them from nbval's source, so
    that a new nbval that compares otherwise fails here rather than keep a changed output."""
    import nbval.plugin
    tree = ast.parse(Path(nbval.plugin.__file__).read_text())
    init = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                and node.name == "IPyNbFile").body
    skipped = []
    for node in ast.walk(ast.Module(body=init, type_ignores=[])):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "self.skip_compare":
            for value in ast.walk(node.value):  # the tuple, and `self.skip_compare + (...)`
                if isinstance(value, ast.Tuple):
                    skipped += [ast.literal_eval(item) for item in value.elts]
    assert skipped and tuple(skipped) == stamp.NBVAL_SKIP, skipped


@pytest.fixture
def book_environment(monkeypatch):
    """The shell's numeric variables out of the way (`make test` sets THREADS=1 in its lanes):
    the kernels must start with their kernelspec's environment only."""
    for name in stamp.NUMERIC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def tiny_notebook(tmp_path, *cells) -> tuple[nbformat.NotebookNode, Path]:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["d2l_bn"] = {"framework": "torch"}
    path = tmp_path / "tiny.ipynb"
    return notebook, path


def test_a_run_records_the_modules_and_distributions_its_kernel_imported(tmp_path,
                                                                             book_environment):
    notebook, path = tiny_notebook(tmp_path, "import d2l_bn.reference", "print(1 + 1)")
    record = pipeline.run(notebook, path)
    assert notebook.cells[1].outputs[0].text == "2\n"
    assert notebook.cells[1].execution_count == 2, "the recording must not move execution counts"
    assert {"d2l_bn/__init__.py", "d2l_bn/reference.py"} <= set(record["files"])
    assert "d2l_bn/torch.py" not in record["files"]
    distributions = {stamp.canonical(name) for name in record["distributions"]}
    assert {"numpy", "ipykernel"} <= distributions
    assert not {"torch", "pytest", "hypothesis"} & distributions


def test_a_kernel_with_another_numeric_environment_is_refused(tmp_path, monkeypatch,
                                                              book_environment):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the kernel
    notebook, path = tiny_notebook(tmp_path, "print(1)")
    with pytest.raises(RuntimeError, match="OMP_NUM_THREADS"):
        pipeline.run(notebook, path)
    assert notebook.cells[0].outputs == []


@pytest.mark.parametrize("committed_text, kept", [("2\n", True), ("3\n", False)])
def test_a_run_that_changes_no_output_keeps_the_committed_ones(tmp_path, committed_text, kept,
                                                               book_environment):
    notebook, path = tiny_notebook(tmp_path, "print(1 + 1)")
    notebook.cells[0].outputs = [output(committed_text)]
    notebook.cells[0].execution_count = 7  # not the fresh run's 1: shows which cell was kept
    nbformat.write(notebook, path)
    assert pipeline.execute(path).startswith("executed")
    written = nbformat.read(path, as_version=4)
    assert written.cells[0].outputs[0].text == "2\n"
    assert (written.cells[0].execution_count == 7) == kept
    assert not pipeline.is_stale(written)
    assert pipeline.execute(path) is None  # up to date now
