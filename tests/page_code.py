"""The teaching code of a page, run as the page runs it, for the tests that bind it to d2l_bn.

A page shows the mathematics plainly (chapters/batch-norm.md: `batch_norm`, `BatchNorm`,
`layer_norm`); `d2l_bn` ships the same mathematics hardened (clear errors, half precision,
non-finite batches; compiled in MXNet). tests/page_equivalence.py holds the two equal, so this
module reads the page itself: a test never checks a copy of the page that could drift from it.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELL = re.compile(r"^```\{code-cell\}[^\n]*\n:tags: \[([^\]]*)\]\n(.*?)^```", re.S | re.M)


def code_cells(page: str, framework: str) -> list[str]:
    """The sources of the page's code cells tagged ``framework``, in page order."""
    text = (ROOT / "chapters" / f"{page}.md").read_text()
    return [source for tags, source in CELL.findall(text)
            if framework in {tag.strip() for tag in tags.split(",")}]


def only_defines(source: str) -> bool:
    """Whether a cell only imports and defines (functions, classes, constants): running it
    computes nothing."""
    def defines(node: ast.stmt) -> bool:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            return True
        return isinstance(node, ast.Assign) and all(
            isinstance(inner, (ast.Constant, ast.BinOp, ast.Name, ast.Tuple, ast.Load,
                               ast.operator, ast.Store))
            for inner in ast.walk(node.value))
    return all(defines(node) for node in ast.parse(source).body)


def namespace(framework: str, page: str = "batch-norm") -> dict:
    """The names the page defines for ``framework``: its first cell (the imports) and every
    cell that only defines, run in order in one namespace, as the notebook runs them."""
    cells = code_cells(page, framework)
    if not cells:
        raise ValueError(f"chapters/{page}.md has no code cell tagged {framework!r}")
    names: dict = {"__name__": f"page_{page.replace('-', '_')}_{framework}"}
    for number, source in enumerate(cells):
        if number == 0 or only_defines(source):
            exec(compile(source, f"chapters/{page}.md ({framework}, cell {number})", "exec"),
                 names)
    return names
