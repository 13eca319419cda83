"""The appendix's table of built-in conventions says what tests/conventions.py says, and every test
it names exists in the shared equivalence tests that each framework's test file runs."""

import ast
import re
from pathlib import Path

import pytest

from conventions import CONVENTIONS

ROOT = Path(__file__).resolve().parent.parent
PRACTICE = ROOT / "chapters" / "batch-norm-practice.md"  # with the table of `momentum`
CHECKS = ROOT / "chapters" / "checks.md"  # the appendix, with the conventions table
FRAMEWORKS = ["torch", "mxnet", "jax", "tensorflow"]  # the table's column order


def table() -> dict[str, list[str]]:
    """The table after the label sec-batch-norm-conventions: row label -> its cells."""
    text = CHECKS.read_text()
    start = text.index("(sec-batch-norm-conventions)=")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| | PyTorch"))
    rows = {}
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def momentum_table() -> list[list[str]]:
    """The one table of what `momentum` means (section sec-batch-norm-momentum), in the
    frameworks' order: the cells after the framework's name."""
    text = PRACTICE.read_text()
    lines = text[text.index("(sec-batch-norm-momentum)="):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| Framework | Built-in"))
    return [[c.strip() for c in line.strip("|").split("|")][1:]
            for line in lines[first + 2:first + 2 + len(FRAMEWORKS)]]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_momentum_table_states_the_pinned_convention(framework):
    convention = CONVENTIONS[framework]
    m = convention["momentum_default"]
    new = convention["momentum_weights"] == "new"
    ours = m if new else round(1 - m, 10)
    _, theirs, in_our_terms, *_ = momentum_table()[FRAMEWORKS.index(framework)]
    assert theirs == f"{m:g}, weight of the {'new batch' if new else 'old average'}", theirs
    assert in_our_terms == f"{ours:g}", in_our_terms


def test_momentum_is_stated_in_one_table():
    pages = [path.read_text() for path in sorted((ROOT / "chapters").glob("*.md"))]
    assert sum(text.count("| Framework | Built-in layer | Its `momentum`") for text in pages) == 1
    assert not any("`momentum` weights |" in text or "`momentum` default" in text
                   for text in pages)


def expected_cells(convention: dict) -> dict[str, str]:
    """What each row must say for one framework (only the rows that CONVENTIONS records)."""
    layout = "NCHW" if convention["channel_axis"] == 1 else "NHWC"
    return {
        r"$\epsilon$ default": f"{convention['eps_default']:.0e}".replace("e-0", "e-"),
        "running variance": convention["running_var"],
        "batch variance": convention["variance"],
        "channel axis": f"{convention['channel_axis']} ({layout})",
        "running statistics updated in": convention["updates_in"],
        "float16 input gives": "float16" if convention["half_output"] == "input dtype"
        else "float32",
    }


def shared_tests() -> set[str]:
    tree = ast.parse((ROOT / "tests" / "equivalence.py").read_text())
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_table_states_the_pinned_conventions(framework):
    rows, column = table(), FRAMEWORKS.index(framework)
    for row, expected in expected_cells(CONVENTIONS[framework]).items():
        assert row in rows, f"the chapter's convention table has no row {row!r}"
        assert rows[row][column] == expected, (
            f"{framework}, {row!r}: the chapter says {rows[row][column]!r}, "
            f"tests/conventions.py {expected!r}")


def test_every_row_names_a_test_that_every_framework_runs():
    names = shared_tests()
    for row, cells in table().items():
        if row == "layer":
            continue
        named = re.fullmatch(r"`(test_\w+)`", cells[-1])
        assert named, f"row {row!r} names no test"
        assert named.group(1) in names, f"row {row!r}: no test {named.group(1)} in equivalence.py"
    for framework in FRAMEWORKS:
        test_file = (ROOT / "tests" / f"test_equivalence_{framework}.py").read_text()
        assert "from equivalence import *" in test_file, framework
    exported = ast.literal_eval(re.search(r"__all__ = (\[.*?\])", (
        ROOT / "tests" / "equivalence.py").read_text(), re.S).group(1))
    assert names <= set(exported), f"not exported, so not run: {names - set(exported)}"
