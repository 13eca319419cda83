"""The notebook pipeline's promises about the committed notebooks (runs in the book venv).

nbval (`make nbval`) executes the notebooks; these tests check what must hold without running them.
"""

import ast
import re
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import pipeline  # noqa: E402

# The two kinds of output (tools/nbval_modes.py): a cell tagged `measured` prints what the
# floating-point path changes, and is checked by its asserts instead of its text.
MEASURED = "measured"
# Calls that train (methods, and the exercises' helper functions): what follows is measured.
TRAINING_METHODS = {"fit", "train_data_parallel"}
TRAINING_FUNCTIONS = {"train", "final_accuracy"}
# A d2l_bn function that raises when its claim fails, as an assert would.
CHECKING_CALLS = {"report"}
# A measured magnitude in e-notation ("9.54e-07"); a stated bound or threshold ("≤ 1e-06",
# "agree to 1e-4") has no digits after the point.
ROUND_OFF = re.compile(r"\d\.\d+e[-+]\d+")

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


def called_names(tree: ast.AST) -> set[str]:
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


def trains(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr in TRAINING_METHODS)
        or (isinstance(node.func, ast.Name) and node.func.id in TRAINING_FUNCTIONS))
        for node in ast.walk(tree))


def asserts(tree: ast.AST) -> bool:
    return (any(isinstance(node, ast.Assert) for node in ast.walk(tree))
            or bool(called_names(tree) & CHECKING_CALLS))


def assigned_names(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}


def read_names(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def output_text(cell) -> str:
    return "".join(output.get("text", "") or output.get("data", {}).get("text/plain", "")
                   for output in cell.outputs)


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_every_output_is_exact_or_measured_and_asserted(source, framework, path):
    """A measured cell's text is not compared, so its claim must be an assert: in the cell, or
    in a later code cell that reads what it made (a check cell, hidden on the website, or the
    cell after a training cell, whose live figure nbval cannot compare). Exact cells must not
    print what the floating-point path moves: no training in them, and no round-off magnitudes
    (a bound such as "≤ 1e-06" is fine)."""
    cells = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    for position, cell in enumerate(cells):
        tags = cell.metadata.get("tags", [])
        assert not {"nbval-ignore-output", "nbval-skip", "raises-exception"} & set(tags), \
            f"cell {cell.id}: tag it `{MEASURED}` (with an assert) instead of using nbval's tags"
        tree = ast.parse(cell.source)
        run = [node for node in tree.body  # what the cell runs; a definition trains nothing yet
               if not isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        training = trains(ast.Module(body=run, type_ignores=[]))
        if MEASURED in tags:
            # its claim asserted in the cell, or in a later (check) cell that reads what it made
            made = assigned_names(tree)
            checked_after = any(asserts(later) and made & read_names(later)
                                for later in map(ast.parse, (c.source for c in cells[position + 1:])))
            followed_by_check = position + 1 < len(cells) and is_check_cell(cells[position + 1])
            assert asserts(tree) or checked_after or followed_by_check, \
                f"cell {cell.id} is measured, so its output is not compared, but nothing asserts " \
                f"its claim: add an assert (with a margin over seeds: benchmarks/seeds.py)"
        else:
            assert not training, f"cell {cell.id} trains: its outputs are measured (tag it)"
            assert not ROUND_OFF.search(output_text(cell)), \
                f"cell {cell.id} prints a round-off magnitude, compared as text: print a bound, " \
                f"or tag the cell `{MEASURED}` and assert the bound"


CHECK_TAG = "remove-cell"  # myst-nb leaves the cell out of the website; the notebook keeps it


def is_check_cell(cell) -> bool:
    """A check cell: hidden on the website, first line `# check: ...`, and it asserts."""
    return (CHECK_TAG in cell.metadata.get("tags", []) and cell.source.startswith("# check: ")
            and asserts(ast.parse(cell.source)))


@pytest.mark.parametrize("source", SOURCES, ids=lambda source: source.stem)
def test_checks_stay_out_of_the_readers_way(source):
    """Every assert of a page is in a check cell, which the website does not show; a check cell
    is short and says in its first line what it checks."""
    for cell in pipeline.read_source(source).cells:
        if cell.cell_type != "code":
            continue
        where = f"{pipeline.framework_of(cell)} cell {cell.source.splitlines()[0][:50]!r}"
        if CHECK_TAG in cell.metadata.get("tags", []):
            assert is_check_cell(cell), f"{where}: a hidden cell must be a check (`# check: ...`)"
            assert len(cell.source.splitlines()) <= 12, f"{where}: a check cell is short"
        else:
            shown_asserts = [node for node in ast.walk(ast.parse(cell.source))
                             if isinstance(node, ast.Assert)]
            assert not shown_asserts, \
                f"{where}: the website shows this assert; move it to a check cell after it"


def test_the_output_rule_catches_what_it_should():
    assert ROUND_OFF.search("synchronized  9.54e-07") and ROUND_OFF.search("| 3.8e-05 |")
    assert not ROUND_OFF.search("Y ≤ 1e-06, dX ≤ 1e-05") and not ROUND_OFF.search("to 1e-4")
    assert trains(ast.parse("h = trainer.fit(model, data)")) and trains(ast.parse("train(f)"))
    assert trains(ast.parse("acc = {lr: final_accuracy(f, 3) for lr in rates}"))
    assert not trains(ast.parse("bn.train()"))
    assert asserts(ast.parse("print(reference.report(a, b))"))
    assert not asserts(ast.parse("print(history.val_acc[-1])"))


def definitions(code: str, prefix: str = "") -> dict[str, str]:
    """Top-level function and class definitions in ``code``, by name, as source text."""
    tree = ast.parse(code)
    return {node.name: ast.get_source_segment(code, node).replace(prefix, "")
            for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def declared(source, key: str) -> set[str]:
    """Names a page lists in its front matter under ``d2l_bn: <key>: [...]``: ``local_helpers``,
    helpers of its own that d2l_bn does not ship (the exercises' `train`, for instance);
    ``taught``, plain teaching versions of what d2l_bn ships hardened, held equal to it by
    tests/page_equivalence.py rather than textually."""
    return set(pipeline.read_source(source).metadata.get("d2l_bn", {}).get(key, []))


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
    local, taught = declared(source, "local_helpers"), declared(source, "taught")
    for name in local & set(shipped):
        pytest.fail(f"{name} is declared a local helper of {source.name} but d2l_bn.{framework} "
                    f"ships a {name}: rename the helper")
    shows_local = bool(local & set(shown))
    bound = (ROOT / "tests" / "page_equivalence.py").read_text()
    for name in taught:
        assert name in shown, f"{source.name} declares {name} taught but does not define it"
        assert name in shipped, f"{source.name} teaches {name}, which d2l_bn.{framework} lacks"
        assert f'page["{name}"]' in bound, \
            f"{source.name} teaches {name}, but tests/page_equivalence.py does not bind it"
    shown = {name: code for name, code in shown.items()
             if name not in local | taught}
    # (a page on a subpackage may show none in a framework whose switch is a built-in argument;
    # the appendix shows only a helper of its own)
    assert shown or ships_from or shows_local, f"{source.name} shows no code of d2l_bn.{framework}"
    for name, code in shown.items():
        assert name in shipped, f"the chapter defines {name}, which d2l_bn.{framework} lacks"
        assert code == shipped[name], f"{name} in the chapter differs from d2l_bn.{framework}"


# What a page shows is teaching code: it fits the website's code box and reads at a glance; the
# explanations are the page's prose, the hardened checks a call into d2l_bn.
MAX_COLUMNS = 88
MAX_FUNCTION_LINES = 20
MAX_CLASS_LINES = 25


def code_lines(code: str, node: ast.AST) -> int:
    """Lines of a definition that are code: not blank, not comments, not docstrings."""
    docstrings = set()
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(inner):
            first = inner.body[0]
            docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines = code.splitlines()
    return sum(1 for number in range(node.lineno, node.end_lineno + 1)
               if number not in docstrings and lines[number - 1].strip()
               and not lines[number - 1].strip().startswith("#"))


@pytest.mark.parametrize("source", pipeline.chapter_sources(), ids=lambda source: source.stem)
def test_shown_code_is_short_teaching_code(source):
    too_long = []
    for cell in pipeline.read_source(source).cells:
        if cell.cell_type != "code":
            continue
        where = f"{pipeline.framework_of(cell)} cell {cell.source.splitlines()[0][:40]!r}"
        too_long += [f"{where}: a line of {len(line)} columns" for line in cell.source.splitlines()
                     if len(line) > MAX_COLUMNS]
        tree = ast.parse(cell.source)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if code_lines(cell.source, node) > limit:
                too_long.append(f"{where}: {node.name} has {code_lines(cell.source, node)} "
                                f"lines of code (at most {limit})")
            too_long += [f"{where}: {inner.name}'s docstring is longer than one line"
                         for inner in ast.walk(node)
                         if isinstance(inner, (ast.FunctionDef, ast.ClassDef))
                         and "\n" in (ast.get_docstring(inner) or "")]
    assert not too_long, "\n".join(too_long)


# The chapter's batch_norm and BatchNorm together: about the length of d2l's own (§8.5).
MAX_LAYER_LINES = 40


@pytest.mark.parametrize("framework", pipeline.FRAMEWORKS)
def test_the_chapter_layer_reads_in_one_sitting(framework):
    source = ROOT / "chapters" / "batch-norm.md"
    lines = {}
    for cell in pipeline.read_source(source).cells:
        if cell.cell_type == "code" and pipeline.framework_of(cell) == framework:
            for node in ast.parse(cell.source).body:
                if getattr(node, "name", None) in ("batch_norm", "BatchNorm"):
                    lines[node.name] = code_lines(cell.source, node)
    assert set(lines) == {"batch_norm", "BatchNorm"}, lines
    assert sum(lines.values()) <= MAX_LAYER_LINES, lines


@pytest.mark.parametrize("source, framework, path", NOTEBOOKS, ids=IDS)
def test_notebook_prose_is_plain_jupyter_markdown(source, framework, path):
    """Colab, Studio Lab and Jupyter show MyST as raw text: the notebooks' prose has none, and
    renders (as `jupyter nbconvert --to html` renders it) with no raw role, label or directive."""
    import jupyter_markdown
    from nbconvert import HTMLExporter

    notebook = nbformat.read(path, as_version=4)
    leftovers = {cell.id: jupyter_markdown.myst_leftovers(cell.source)
                 for cell in notebook.cells if cell.cell_type == "markdown"}
    assert {cell: found for cell, found in leftovers.items() if found} == {}, \
        "MyST in the notebook's markdown: run `make notebooks`"
    prose = nbformat.v4.new_notebook(cells=[cell for cell in notebook.cells
                                            if cell.cell_type == "markdown"])
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(prose)
    body = page[page.index("<body"):]
    assert [raw for raw in ("{cite", "{ref}", "{eq}", ")=\n", ":::", "```{") if raw in body] == []


# --- Every number the prose quotes has a source on its page -----------------------------------
# A measured-looking number in a page's prose (a decimal, a percentage, "N times") must be printed
# by, or written in, one of that page's cells, in any framework; what is derived in the sentence
# itself or quoted from a cited paper is listed here, with the reason.
QUOTED_NUMBER = re.compile(r"(?<![\w.$^{\\-])(\d+\.\d+|\d+(?:\.\d+)?(?=\s?%)|\d+(?=\s?times\b))")
NOT_FROM_A_CELL = {
    ("batch-norm", "14"): "Ioffe and Szegedy's ImageNet result, cited",
    ("exercises", "7"): "√(8/7) - 1, derived in the same sentence",
    ("exercises", "10"): "chance: one class in ten",
    ("exercises", "1.0002"): "4608 / 4607, derived in the same sentence",
    ("exercises", "1.2"): "the size of ImageNet's training set, in millions: a cited fact",
    ("checks", "1"): "300² float32 units of rounding, derived in the same sentence",
    ("checks", "1.9"): "the MXNet release, a version",
    ("batch-norm", "1.9"): "the MXNet release, a version",
    ("batch-norm-devices", "127.0"): "the loopback address 127.0.0.1",
}


def prose_of(source: Path) -> str:
    """A page's markdown without code, math, roles and inline code: the words a reader reads."""
    text = "\n".join(cell.source for cell in pipeline.read_source(source).cells
                     if cell.cell_type == "markdown")
    for pattern in (r"\$\$.*?\$\$", r"\$[^$\n]+\$", r"`[^`\n]*`", r"\{\w+(?::\w+)?\}"):
        text = re.sub(pattern, " ", text, flags=re.S)
    return text


def numbers_of_cells(source: Path) -> list[float]:
    """Every number in the page's code and in its executed notebooks' text outputs, and the
    built-in layers' defaults that tests/conventions.py pins (tested against the real layers)."""
    from conventions import CONVENTIONS

    texts = [cell.source for cell in pipeline.read_source(source).cells
             if cell.cell_type == "code"] + [repr(CONVENTIONS)]
    for framework in pipeline.frameworks_in(source):
        for cell in nbformat.read(pipeline.notebook_path(source, framework), as_version=4).cells:
            texts.append(output_text(cell) if cell.cell_type == "code" else "")
    return [float(n) for text in texts for n in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def has_source(quoted: str, percent: bool, numbers: list[float]) -> bool:
    """``quoted`` (with its decimals) is one of ``numbers`` as rounded to them; a percentage
    also matches a fraction, 20% matching 0.2."""
    decimals = len(quoted.partition(".")[2])
    value = float(quoted)
    candidates = [value] + ([value / 100] if percent else [])
    return any(round(n, d) == round(c, d) for n in numbers for c, d in
               zip(candidates, [decimals, decimals + 2]))


@pytest.mark.parametrize("source", pipeline.chapter_sources(), ids=lambda source: source.stem)
def test_every_number_the_prose_quotes_comes_from_a_cell(source):
    prose, numbers = prose_of(source), numbers_of_cells(source)
    missing = []
    for match in QUOTED_NUMBER.finditer(prose):
        quoted = match.group(1)
        percent = prose[match.end():match.end() + 2].lstrip().startswith("%")
        if (source.stem, quoted) in NOT_FROM_A_CELL or has_source(quoted, percent, numbers):
            continue
        context = prose[max(0, match.start() - 60):match.end() + 20].replace("\n", " ")
        missing.append(f"{quoted}: …{context}…")
    assert not missing, (f"{source.name} quotes numbers that no cell of the page prints or "
                         f"sets:\n" + "\n".join(missing))


def test_the_number_rule_catches_what_it_should():
    assert has_source("0.86", False, [0.8612]) and not has_source("0.86", False, [0.8549])
    assert has_source("20", True, [0.2]) and not has_source("20", True, [0.3])
    found = [m.group(1) for m in QUOTED_NUMBER.finditer("ends at 0.86, 20% and 14 times; 1e-5")]
    assert found == ["0.86", "20", "14"]
