"""The chapters' MyST markdown, rewritten for plain Jupyter (tools/jupyter_markdown.py; book venv).

Each construct on a small input, with the exact markdown it becomes; every markdown cell of every
chapter, converted without MyST left over; the equation numbers the website shows; and the
converted batch-norm page rendered by nbconvert (mistune), as a notebook viewer would.
"""

import html
import re
import sys
import textwrap

import jupytext
import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import jupyter_markdown  # noqa: E402
from jupyter_markdown import BookReferences, myst_leftovers, to_jupyter  # noqa: E402

CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))


@pytest.fixture(scope="module")
def references() -> BookReferences:
    return BookReferences()


@pytest.fixture(scope="module")
def site(references) -> str:
    return references.site_url


def markdown_cells(path):
    return [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "markdown"]


# --- Citations -----------------------------------------------------------------------------------

def test_parenthetical_citation_links_to_the_pages_reference_list(references):
    # No DOI, URL or arXiv id: the entry in the notebook's own reference list.
    assert to_jupyter("layer {cite:p}`ioffe2015batch` is", "batch-norm", references) \
        == "layer [[Ioffe and Szegedy, 2015](#bib-ioffe2015batch)] is"


def test_citation_of_an_arxiv_preprint_links_to_its_abstract(references):
    assert to_jupyter("Adam {cite:p}`kingma2014adam`", "batch-norm", references) \
        == "Adam [[Kingma and Ba, 2014](https://arxiv.org/abs/1412.6980)]"


def test_several_keys_in_one_citation(references):
    assert to_jupyter("{cite:p}`ioffe2015batch,he2016deep`", "batch-norm", references) \
        == ("[[Ioffe and Szegedy, 2015](#bib-ioffe2015batch), "
            "[He *et al.*, 2016](#bib-he2016deep)]")


def test_textual_citation(references):
    assert to_jupyter("{cite:t}`ioffe2015batch` insert", "batch-norm", references) \
        == "Ioffe and Szegedy [[2015](#bib-ioffe2015batch)] insert"
    assert to_jupyter("{cite:t}`bishop1995training`", "batch-norm", references) \
        == "Bishop [[1995](#bib-bishop1995training)]"
    assert to_jupyter("{cite:t}`teye2018bayesian`", "batch-norm", references) \
        == "Teye *et al.* [[2018](#bib-teye2018bayesian)]"


def test_citation_of_a_work_listed_on_another_page_links_to_that_pages_references(references,
                                                                                   site):
    # The exercises' bibliography lists only what the chapter does not (its :filter:).
    assert to_jupyter("{cite:t}`ioffe2015batch`", "exercises", references) \
        == f"Ioffe and Szegedy [[2015]({site}/book/batch-norm.html#references)]"
    assert to_jupyter("{cite:p}`huang2018decorrelated`", "exercises", references) \
        == "[[Huang *et al.*, 2018](#bib-huang2018decorrelated)]"


def test_unknown_citation_key_names_the_key_and_the_bibliography_file(references):
    with pytest.raises(ValueError, match=r"'nosuchkey2020' is not in references\.bib"):
        to_jupyter("as shown {cite:p}`nosuchkey2020`", "batch-norm", references)


# --- Section and equation references -------------------------------------------------------------

def test_reference_to_a_section_of_the_same_page(references):
    assert to_jupyter("cases of {ref}`sec-batch-norm-layers`:", "batch-norm", references) \
        == "cases of [Batch Normalization Layers](#sec-batch-norm-layers):"


def test_reference_with_its_own_text(references):
    assert to_jupyter("{ref}`the two cases <sec-batch-norm-layers>`", "batch-norm", references) \
        == "[the two cases](#sec-batch-norm-layers)"


def test_reference_to_another_page_links_to_the_website(references, site):
    assert to_jupyter("of {ref}`sec-batch-norm-lenet`,", "exercises", references) \
        == f"of [LeNet with Batch Normalization]({site}/book/batch-norm.html#sec-batch-norm-lenet),"


def test_equation_reference_on_the_same_page(references):
    assert to_jupyter("Following {eq}`eq-bn-fc`, each", "batch-norm", references) \
        == "Following [(4)](#eq-bn-fc), each"


def test_equation_reference_to_another_page_names_the_page(references, site):
    assert to_jupyter("as in {eq}`eq-bn`", "batch-norm-devices", references) \
        == f"as in [(1) in Batch Normalization]({site}/book/batch-norm.html#equation-eq-bn)"


def test_unknown_equation_label_is_an_error(references):
    with pytest.raises(ValueError, match=r"\{eq\}`eq-nowhere` refers to an unknown label"):
        to_jupyter("see {eq}`eq-nowhere`", "batch-norm", references)


def test_equation_reference_to_a_section_label_is_an_error(references):
    with pytest.raises(ValueError, match="'sec-batch-norm' does not label an equation"):
        to_jupyter("see {eq}`sec-batch-norm`", "batch-norm", references)


def test_unknown_section_label_is_an_error(references):
    with pytest.raises(ValueError, match=r"\{ref\}`sec-nowhere` refers to an unknown label"):
        to_jupyter("see {ref}`sec-nowhere`", "batch-norm", references)


def test_role_without_a_conversion_is_an_error(references):
    with pytest.raises(NotImplementedError, match=r"\{numref\}"):
        to_jupyter("see {numref}`fig-x`", "batch-norm", references)


# --- Labels, equations, admonitions, bibliography ------------------------------------------------

def test_label_becomes_an_anchor_before_its_heading(references):
    assert to_jupyter("(sec-batch-norm-layers)=\n## Batch Normalization Layers\n\nText.",
                      "batch-norm", references) \
        == '<a id="sec-batch-norm-layers"></a>\n## Batch Normalization Layers\n\nText.'


def test_labelled_equation_gets_its_number_as_a_tag(references):
    source = textwrap.dedent(r"""
        the layer computes

        $$
        \mathbf{h} = \phi\left(\mathrm{BN}\left(\mathbf{W}\mathbf{x} + \mathbf{b}\right)\right).
        $$ (eq-bn-fc)

        The mean""")
    assert to_jupyter(source, "batch-norm", references) == textwrap.dedent(r"""
        the layer computes

        <a id="eq-bn-fc"></a>
        $$
        \mathbf{h} = \phi\left(\mathrm{BN}\left(\mathbf{W}\mathbf{x} + \mathbf{b}\right)\right).
        \tag{4}
        $$

        The mean""")


def test_labelled_equation_on_one_line(references):
    assert to_jupyter("$$ x = 1 $$ (eq-sync-bn-stats)", "batch-norm-devices", references) \
        == '<a id="eq-sync-bn-stats"></a>\n$$ x = 1 \\tag{11} $$'


def test_unlabelled_equation_is_left_unnumbered_as_on_the_website(references):
    source = "$$\nx = 1\n$$"
    assert to_jupyter(source, "batch-norm", references) == source


def test_admonition_becomes_a_blockquote(references):
    source = textwrap.dedent("""\
        :::{admonition} Mode and state, {ref}`sec-batch-norm-layers`
        :class: note
        - **PyTorch**: as in {eq}`eq-bn`,
          set by `model.train()`.

        Second paragraph.
        :::
        After.""")
    assert to_jupyter(source, "batch-norm", references) == textwrap.dedent("""\
        > **Mode and state, [Batch Normalization Layers](#sec-batch-norm-layers)**
        >
        > - **PyTorch**: as in [(1)](#eq-bn),
        >   set by `model.train()`.
        >
        > Second paragraph.
        After.""")


def test_bibliography_lists_what_the_website_lists_there(references):
    source = '## References\n\n```{bibliography}\n:filter: key == "huang2018decorrelated"\n```'
    assert to_jupyter(source, "exercises", references) == (
        "## References\n\n"
        '- <a id="bib-huang2018decorrelated"></a>[Huang *et al.*, 2018] Lei Huang, Dawei Yang, '
        "Bo Lang, and Jia Deng. Decorrelated batch normalization. In *Proceedings of the IEEE "
        "Conference on Computer Vision and Pattern Recognition*, 791–800. 2018.")


def test_chapter_bibliography_lists_the_works_cited_on_its_page_in_author_order(references):
    converted = to_jupyter("```{bibliography}\n:filter: docname in docnames\n```", "batch-norm",
                           references)
    anchors = re.findall(r'^- <a id="bib-([^"]+)"></a>', converted, re.MULTILINE)
    cited = {key for cell in markdown_cells(ROOT / "chapters/batch-norm.md")
             for keys in re.findall(r"\{cite:[pt]\}`([^`]+)`", cell) for key in keys.split(",")}
    assert set(anchors) == cited
    assert anchors[:3] == ["arora2019theoretical", "ba2016layer", "bishop1995training"]
    assert anchors[-1] == "zhang2019fixup"
    assert ('- <a id="bib-kingma2014adam"></a>[Kingma and Ba, 2014] Diederik P. Kingma and Jimmy '
            "Ba. Adam: a method for stochastic optimization. *arXiv preprint arXiv:1412.6980*, "
            "2014. [arXiv:1412.6980](https://arxiv.org/abs/1412.6980)") in converted.split("\n")


def test_comment_lines_are_dropped(references):
    assert to_jupyter("Before.\n% a note to the authors\nAfter.", "batch-norm", references) \
        == "Before.\nAfter."


# --- Code is never rewritten ---------------------------------------------------------------------

def test_code_spans_and_fenced_code_are_left_alone(references):
    source = textwrap.dedent("""\
        Write ``{ref}`sec-batch-norm` `` for a reference, `(sec-x)=` for a label and \\`{eq}`eq-bn`.

        ```markdown
        (sec-batch-norm)=
        {cite:p}`ioffe2015batch` and {eq}`eq-bn`
        $$
        x
        $$ (eq-bn)
        :::{note}
        ```

        ~~~
        {ref}`sec-nowhere`
        ~~~""")
    converted = to_jupyter(source, "batch-norm", references)
    # The escaped backtick is text, so the role after it is one (and is converted).
    assert converted == source.replace("{eq}`eq-bn`.", "[(1)](#eq-bn).", 1)
    assert myst_leftovers(converted) == []


def test_leftovers_are_found_outside_code_only():
    source = textwrap.dedent("""\
        (sec-x)=
        # Title
        See {ref}`sec-x` and `{ref}` and ``{eq}`eq-y` ``.
        $$
        x
        $$ (eq-y)
        :::{note}
        Body.
        :::
        % comment
        ```python
        {cite:p}`inside-code`
        ```""")
    assert myst_leftovers(source) == ["(sec-x)=", "{ref}`sec-x`", "$$ (eq-y)", ":::{note}",
                                      "% comment"]


# --- The chapters --------------------------------------------------------------------------------

@pytest.mark.parametrize("source", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_markdown_cell_converts_without_myst_leftovers(source, references):
    cells = markdown_cells(source)
    assert any(myst_leftovers(cell) for cell in cells), "the check would find nothing to find"
    for cell in cells:
        converted = to_jupyter(cell, source.stem, references)
        assert myst_leftovers(converted) == [], f"{source.name}: {cell[:200]}"


def test_equation_numbers_are_the_websites(references):
    # The website numbers every labelled display equation, in the order of _toc.yml and on from
    # one page to the next (Jupyter Book's numfig): the chapter has (1) to (10), the page on
    # devices, after the exercises (which have none), continues with (11), and the appendix on
    # the checks with (12).
    numbers = {target.label: target.number for target in references.targets.values()
               if target.kind == "equation"}
    assert numbers == {
        "eq-bn": 1, "eq-bn-mean": 2, "eq-bn-var": 3, "eq-bn-fc": 4, "eq-bn-conv-mean": 5,
        "eq-bn-conv-var": 6, "eq-ln": 7, "eq-ln-mean": 8, "eq-ln-var": 9, "eq-bn-running": 10,
        "eq-sync-bn-stats": 11, "eq-bn-backward": 12}
    assert {target.page for target in references.targets.values()
            if target.kind == "equation" and target.number <= 10} == {"batch-norm"}
    assert numbers["eq-bn-backward"] > numbers["eq-sync-bn-stats"]  # the appendix comes last


# A small book with every kind of display equation. Its numbers, below, are those that Jupyter
# Book 1.0.4 (myst-parser 3, Sphinx 7.4) printed when it built this book with these settings.
MINI_CONFIG = """\
title: numbering
parse:
  myst_enable_extensions: [amsmath, dollarmath, colon_fence]
sphinx:
  config:
    math_number_all: true
"""
MINI_TOC = "format: jb-book\nroot: index\nchapters:\n  - file: book/a\n  - file: book/b\n"
MINI_PAGES = {
    "index.md": "# Root\n\n$$\nr = 1\n$$ (eq-root)\n",
    "chapters/a.md": textwrap.dedent(r"""
        # Page A

        $$
        a = 1
        $$ (eq-a1)

        $$
        u = 0
        $$

        \begin{align}
        x &= 1 \\
        y &= 2
        \end{align}

        \begin{align*}
        z &= 3
        \end{align*}

        ```{math}
        m = 4
        ```

        $$ b = 5 $$ (eq-a2)

        :::{note}
        $$
        n = 6
        $$ (eq-in-note)
        :::
        """),
    "chapters/b.md": "# Page B\n\n$$\nc = 7\n$$ (eq-b1)\n",
}


def mini_book(root, config=MINI_CONFIG) -> BookReferences:
    (root / "chapters").mkdir()
    (root / "_config.yml").write_text(config)
    (root / "_toc.yml").write_text(MINI_TOC)
    for name, text in MINI_PAGES.items():
        (root / name).write_text(text)
    return BookReferences(root=root)


def test_equation_numbering_rule(tmp_path):
    # Numbered: labelled `$$`, unstarred amsmath environments, math directives (math_number_all),
    # in document order, inside admonitions too; the root page first. Not numbered: unlabelled
    # `$$` (myst-parser gives them no target) and starred environments.
    book = mini_book(tmp_path)
    numbers = {target.label: target.number for target in book.targets.values()}
    assert numbers == {"eq-root": 1, "eq-a1": 2, "eq-a2": 5, "eq-in-note": 6, "eq-b1": 7}
    converted = to_jupyter(MINI_PAGES["chapters/a.md"], "a", book)
    assert "$$\nu = 0\n$$" in converted
    assert "y &= 2 \\tag{3}\n\\end{align}" in converted
    assert "\\begin{align*}\nz &= 3\n\\end{align*}" in converted
    assert "$$\nm = 4\n\\tag{4}\n$$" in converted
    assert '> <a id="eq-in-note"></a>\n> $$\n> n = 6\n> \\tag{6}\n> $$' in converted
    assert myst_leftovers(converted) == []


def test_equation_numbers_restart_on_each_page_without_math_numfig(tmp_path):
    book = mini_book(tmp_path, MINI_CONFIG + "    math_numfig: false\n")
    numbers = {target.label: target.number for target in book.targets.values()}
    assert numbers == {"eq-root": 1, "eq-a1": 1, "eq-a2": 4, "eq-in-note": 5, "eq-b1": 1}


def test_site_address_comes_from_html_baseurl_when_set(tmp_path):
    book = mini_book(tmp_path, MINI_CONFIG + "html:\n  baseurl: https://example.org/book/\n")
    assert book.site_url == "https://example.org/book"
    assert to_jupyter("{eq}`eq-b1`", "a", book) == \
        "[(7) in Page B](https://example.org/book/book/b.html#equation-eq-b1)"


def test_site_address_is_the_github_pages_site_without_html_baseurl(references):
    assert references.site_url == jupyter_markdown.SITE_URL == "https://d2l-bn.github.io/d2l-bn"


# --- Rendered as a notebook viewer renders it ----------------------------------------------------

def rendered_body(cells: list[str]) -> str:
    """The HTML that nbconvert (mistune, as in `jupyter nbconvert --to html`) makes of a notebook
    of these markdown cells, from <body> on."""
    try:
        from nbconvert import HTMLExporter
    except ImportError as error:
        pytest.fail(f"nbconvert is not installed in this environment ({error}); the book venv "
                    "needs it (requirements/book.txt)")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(cell)
                                               for cell in cells])
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return page[page.index("<body"):]


RAW_MYST = ["{cite", "{ref}", "{eq}", ")=", ":::"]


def test_converted_chapter_renders_without_raw_myst(references):
    source = markdown_cells(ROOT / "chapters/batch-norm.md")
    unconverted = rendered_body(source)
    assert all(raw in unconverted for raw in RAW_MYST), \
        "the unconverted page should show raw MyST: the check below would prove nothing"
    converted = [to_jupyter(cell, "batch-norm", references) for cell in source]
    body = rendered_body(converted)
    assert [raw for raw in RAW_MYST if raw in body] == []
    # Tables are tables (the one of `momentum` is on the practice page), and every equation
    # reaches MathJax as written, with its \tag.
    def tables(cells):
        return sum(len(re.findall(r"^\|[-| :]+\|$", cell, re.MULTILINE)) for cell in cells)
    assert body.count("<table") == tables(converted)
    practice = [to_jupyter(cell, "batch-norm-practice", references)
                for cell in markdown_cells(ROOT / "chapters/batch-norm-practice.md")]
    assert tables(practice) > 0 and rendered_body(practice).count("<table") == tables(practice)
    equations = [f"$${block.body}$$" for cell in converted
                 for block in jupyter_markdown._blocks(cell)
                 if isinstance(block, jupyter_markdown._DisplayMath)]
    assert len(equations) == 10
    assert [equation for equation in equations
            if html.escape(equation, quote=False) not in body] == []
    assert re.findall(r"\\tag\{(\d+)\}", body) == [str(number) for number in range(1, 11)]
    # Inline math too: mistune must not take its underscores and stars for emphasis.
    inline = {match for cell in converted
              for match in re.findall(r"(?<![$\\])\$(?!\$)[^$`]+?(?<!\\)\$", cell)}
    assert len(inline) > 50
    assert [math for math in inline if html.escape(math, quote=False) not in body] == []
    # Citations and references are links; the reference list's anchors are there to link to.
    assert '[<a href="#bib-ioffe2015batch">Ioffe and Szegedy, 2015</a>]' in body
    assert '<a id="bib-ioffe2015batch"></a>' in body
    assert '<a href="#eq-bn">(1)</a>' in body and '<a id="eq-bn"></a>' in body
    assert "<blockquote>\n<p><strong>Mode and state in each framework</strong></p>" in body
