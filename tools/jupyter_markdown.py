"""The chapter sources' MyST markdown, rewritten for plain Jupyter, Colab and SageMaker Studio Lab.

The website (Jupyter Book, Sphinx) understands MyST: target labels `(sec-x)=`, roles such as
{cite:p}`key`, {ref}`sec-x` and {eq}`eq-x`, labelled display equations `$$ ... $$ (eq-x)`,
directives in backtick or colon fences. A notebook opened in Jupyter or Colab shows all of that as
raw text. `to_jupyter` turns one markdown cell of a page into markdown that those renderers
understand and that says what the website says:

- a citation becomes author-year text, as the website writes it ("[Ioffe and Szegedy, 2015]",
  "Ioffe and Szegedy [2015]"), linked to the work (its DOI, URL or arXiv abstract) or, failing
  that, to its entry in the notebook's reference list, or else to the website's page that
  lists it;
- a section reference becomes a link, within the notebook for a label of the same page, else to
  the website's page;
- an equation keeps the number the website gives it, as `\\tag{n}`, and a reference to it
  becomes that number;
- a label becomes an HTML anchor, an admonition a blockquote, the bibliography directive the
  list of works that the website's bibliography shows there.

Fenced code and inline code spans are never rewritten. `BookReferences` holds what the rewriting
needs to know about the whole book; `myst_leftovers` lists the MyST syntax left in a markdown text.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import yaml
from pybtex.backends.markdown import Backend as MarkdownBackend
from pybtex.database import Entry, parse_file
from pybtex.plugin import find_plugin

ROOT = Path(__file__).resolve().parent.parent

# Where the website is published: the GitHub Pages site of the repository in _config.yml
# (repository.url). It must match the address the site is actually served from; `html.baseurl`
# in _config.yml, where set, takes precedence.
SITE_URL = "https://d2l-bn.github.io/d2l-bn"

# What sphinxcontrib-bibtex does when the configuration does not say (its defaults).
DEFAULT_BIBTEX_STYLE = "alpha"
DEFAULT_BIBLIOGRAPHY_FILTER = "cited"

# Admonition directives and the title each shows when none is given (docutils' names).
ADMONITION_TITLES = {
    "admonition": None, "note": "Note", "tip": "Tip", "hint": "Hint", "important": "Important",
    "warning": "Warning", "caution": "Caution", "attention": "Attention", "danger": "Danger",
    "error": "Error", "seealso": "See also",
}
# The environments that MyST's amsmath extension accepts at the top level of markdown. Unstarred,
# each gets an equation number on the website, the matrix ones included (myst-parser numbers every
# unstarred environment of its list).
AMSMATH_ENVIRONMENTS = ("equation", "multline", "gather", "align", "alignat", "flalign",
                        "matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix",
                        "eqnarray")
# Of those, the ones in which MathJax accepts a \tag (a row of an equation-like environment);
# inside a matrix it rejects one.
TAGGABLE_ENVIRONMENTS = ("equation", "multline", "gather", "align", "alignat", "flalign",
                         "eqnarray")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})(?P<info>.*)$")
_DIRECTIVE = re.compile(r"^\{(?P<name>[\w:+-]+)\}[ \t]*(?P<argument>.*?)\s*$")
_DIRECTIVE_OPTION = re.compile(r"^[ \t]*:(?P<key>[\w-]+):(?:[ \t]+(?P<value>.*?))?\s*$")
_TARGET = re.compile(r"^[ \t]*\((?P<label>[^()\s][^()]*)\)=[ \t]*$")
_MATH_OPENING = re.compile(r"^(?P<indent>[ \t]*)\$\$(?P<rest>.*)$")
# The end of a display equation: `$$` at the end of a line, optionally followed by its label.
_MATH_CLOSING = re.compile(r"^(?P<before>.*?)\$\$[ \t]*(?:\((?P<label>[^()\s]+)\))?[ \t]*$")
_AMSMATH_BEGIN = re.compile(r"^[ \t]*\\begin\{(?P<environment>%s)(?P<star>\*?)\}"
                            % "|".join(AMSMATH_ENVIRONMENTS))
_HEADING = re.compile(r"^[ \t]{0,3}(?P<level>#{1,6})[ \t]+(?P<text>.*?)(?:[ \t]+#+)?[ \t]*$")
# A role: `{name}` right before a code span, as in {ref}`sec-x`.
_ROLE = re.compile(r"\{(?P<name>[a-zA-Z][\w:+-]*)\}(?=`)")
_EXPLICIT_TITLE = re.compile(r"^(?P<text>.*?)\s*<(?P<label>[^<>]+)>$", re.DOTALL)
_ARXIV_ID = re.compile(r"arXiv:\s*(?P<id>\d{4}\.\d{4,5}(?:v\d+)?|[a-z-]+(?:\.[A-Z]{2})?/\d{7})",
                       re.IGNORECASE)
_MARKDOWN_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


# --- Blocks --------------------------------------------------------------------------------------
# A markdown cell is read as a sequence of blocks: the MyST constructs that span lines (fences,
# display equations, target labels, comments) and, between them, prose lines, whose inline roles
# are rewritten paragraph by paragraph.

@dataclass
class _Prose:
    lines: list[str]


@dataclass
class _Code:
    """A fenced code block, kept as it is."""
    lines: list[str]


@dataclass
class _Directive:
    name: str
    argument: str
    options: dict[str, str]
    body: list[str]
    lines: list[str]  # as written, for error messages and the leftovers list
    indent: str


@dataclass
class _Target:
    label: str
    line: str


@dataclass
class _DisplayMath:
    """`$$ body $$`, optionally labelled; `body` is everything between the two `$$`."""
    indent: str
    body: str
    label: str | None
    lines: list[str]


@dataclass
class _AmsMath:
    """An amsmath environment written at the top level of the markdown."""
    environment: str
    numbered: bool
    lines: list[str]


@dataclass
class _Dropped:
    """A MyST comment (`% ...`) or block break (`+++`): the website shows nothing for it."""
    line: str


def _blocks(markdown: str) -> list:
    lines = markdown.split("\n")
    blocks: list = []
    prose: list[str] = []

    def flush_prose() -> None:
        if prose:
            blocks.append(_Prose(prose.copy()))
            prose.clear()

    position = 0
    while position < len(lines):
        line = lines[position]
        fence = _FENCE.match(line)
        # A colon fence is MyST's only with a directive name, a bare `:::` line is prose; a
        # backtick fence's info string has no backtick (else the line opens a code span).
        if fence and (_DIRECTIVE.match(fence["info"].strip()) if fence["fence"][0] == ":"
                      else not (fence["fence"][0] == "`" and "`" in fence["info"])):
            end = _closing_fence(lines, position, fence["fence"])
            block_lines = lines[position:end + 1]
            directive = _DIRECTIVE.match(fence["info"].strip())
            flush_prose()
            if directive:
                options, body = _directive_options(lines[position + 1:end])
                blocks.append(_Directive(directive["name"], directive["argument"], options, body,
                                         block_lines, fence["indent"]))
            else:
                blocks.append(_Code(block_lines))
            position = end + 1
            continue
        target = _TARGET.match(line)
        if target:
            flush_prose()
            blocks.append(_Target(target["label"], line))
            position += 1
            continue
        stripped = line.strip()
        if stripped.startswith("%") or stripped == "+++" or stripped.startswith("+++ "):
            flush_prose()
            blocks.append(_Dropped(line))
            position += 1
            continue
        opening = _MATH_OPENING.match(line)
        if opening:
            math = _display_math(lines, position, opening)
            if math is not None:
                flush_prose()
                blocks.append(math)
                position += len(math.lines)
                continue
        begin = _AMSMATH_BEGIN.match(line)
        if begin:
            environment = begin["environment"] + begin["star"]
            end = next((index for index in range(position, len(lines))
                        if f"\\end{{{environment}}}" in lines[index]), None)
            if end is not None:
                flush_prose()
                blocks.append(_AmsMath(environment, not begin["star"], lines[position:end + 1]))
                position = end + 1
                continue
        prose.append(line)
        position += 1
    flush_prose()
    return blocks


def _closing_fence(lines: list[str], opening: int, fence: str) -> int:
    """The index of the line that closes the fence opened at `opening` (the last line if none
    does: CommonMark runs an unclosed fence to the end of its container)."""
    for index in range(opening + 1, len(lines)):
        stripped = lines[index].strip()
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            return index
    return len(lines) - 1


def _directive_options(content: list[str]) -> tuple[dict[str, str], list[str]]:
    """A directive's options (`:key: value` lines or a `---` YAML block first) and its body."""
    options: dict[str, str] = {}
    position = 0
    if content and content[0].strip() == "---":
        end = next(index for index in range(1, len(content)) if content[index].strip() == "---")
        options = {key: "" if value is None else str(value) for key, value
                   in (yaml.safe_load("\n".join(content[1:end])) or {}).items()}
        position = end + 1
    else:
        while position < len(content) and _DIRECTIVE_OPTION.match(content[position]):
            option = _DIRECTIVE_OPTION.match(content[position])
            options[option["key"]] = option["value"] or ""
            position += 1
    body = content[position:]
    while body and not body[0].strip():
        body = body[1:]
    while body and not body[-1].strip():
        body = body[:-1]
    return options, body


def _display_math(lines: list[str], opening: int, match: re.Match) -> _DisplayMath | None:
    """The display equation that starts at line `opening`, or None if it is never closed."""
    rest = match["rest"]
    on_one_line = _MATH_CLOSING.match(rest)
    if on_one_line and rest.strip() != "":
        return _DisplayMath(match["indent"], on_one_line["before"], on_one_line["label"],
                            [lines[opening]])
    if "$$" in rest:  # `$$x$$ and more text`: math within a paragraph, not a display block
        return None
    for index in range(opening + 1, len(lines)):
        closing = _MATH_CLOSING.match(lines[index])
        if closing:
            body = "\n".join([rest] + lines[opening + 1:index] + [closing["before"]])
            return _DisplayMath(match["indent"], body, closing["label"],
                                lines[opening:index + 1])
    return None


# --- Inline --------------------------------------------------------------------------------------

def _inline_pieces(text: str):
    """The text as (kind, content) pieces: ("text", s), ("code", s) for a code span with its
    backticks, ("role", (name, content, as_written)). Backslash escapes stay text."""
    pieces: list[tuple[str, object]] = []
    plain: list[str] = []
    position = 0

    def flush() -> None:
        if plain:
            pieces.append(("text", "".join(plain)))
            plain.clear()

    while position < len(text):
        character = text[position]
        if character == "\\" and position + 1 < len(text) \
                and text[position + 1] in _MARKDOWN_PUNCTUATION:
            plain.append(text[position:position + 2])
            position += 2
            continue
        role = _ROLE.match(text, position) if character == "{" else None
        if role or character == "`":
            ticks_start = role.end() if role else position
            ticks = _backtick_run(text, ticks_start)
            closing = _closing_backticks(text, ticks_start + len(ticks), len(ticks))
            if closing is None:  # an unmatched backtick run is literal text
                plain.append(text[position:ticks_start + len(ticks)])
                position = ticks_start + len(ticks)
                continue
            flush()
            end = closing + len(ticks)
            if role:
                content = text[ticks_start + len(ticks):closing]
                pieces.append(("role", (role["name"], content, text[position:end])))
            else:
                pieces.append(("code", text[position:end]))
            position = end
            continue
        plain.append(character)
        position += 1
    flush()
    return pieces


def _backtick_run(text: str, start: int) -> str:
    end = start
    while end < len(text) and text[end] == "`":
        end += 1
    return text[start:end]


def _closing_backticks(text: str, start: int, length: int) -> int | None:
    """Where the run of exactly `length` backticks that closes a code span begins."""
    position = start
    while position < len(text):
        if text[position] == "`":
            run = _backtick_run(text, position)
            if len(run) == length:
                return position
            position += len(run)
        else:
            position += 1
    return None


# --- The book ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Page:
    name: str     # the chapter stem ("batch-norm"); the root page's is its docname ("index")
    docname: str  # Sphinx's name of the page, as in _toc.yml ("book/batch-norm")
    source: Path
    title: str

    @property
    def path(self) -> str:
        """The page's address relative to the website's root."""
        return f"{self.docname}.html"


@dataclass(frozen=True)
class Target:
    """Something a label names: a section (its heading the default link text), an equation (with
    the website's number) or another element."""
    label: str
    page: str
    kind: str  # "section", "equation" or "other"
    title: str | None = None
    number: int | None = None

    @property
    def anchor(self) -> str:
        """The element's id on the website."""
        return _html_id(f"equation-{self.label}" if self.kind == "equation" else self.label)


@dataclass
class _Bibliography:
    page: str
    options: dict[str, str]
    argument: str
    heading_anchor: str | None  # the id of the section that holds it on the website
    keys: list[str] = field(default_factory=list)  # what it lists, in order (lowercase)


@dataclass
class BookReferences:
    """What rewriting one page's markdown needs to know about the whole book: its pages and their
    labels, the website's equation numbers, the bibliography and what each page cites."""
    root: Path = ROOT
    site_url: str = field(init=False)
    pages: dict[str, Page] = field(init=False)
    targets: dict[str, Target] = field(init=False)
    bibfiles: list[Path] = field(init=False)
    entries: dict[str, Entry] = field(init=False)
    citations: dict[str, list[str]] = field(init=False)  # page -> keys, in order of citation
    bibliographies: list[_Bibliography] = field(init=False)
    bibtex_style: str = field(init=False)
    numbers_continue_across_pages: bool = field(init=False)
    math_number_all: bool = field(init=False)

    def __post_init__(self) -> None:
        config = yaml.safe_load((self.root / "_config.yml").read_text()) or {}
        sphinx_config = (config.get("sphinx") or {}).get("config") or {}
        self.site_url = ((config.get("html") or {}).get("baseurl") or SITE_URL).rstrip("/")
        self.bibtex_style = sphinx_config.get("bibtex_default_style", DEFAULT_BIBTEX_STYLE)
        # Jupyter Book forces numfig on, so Sphinx numbers equations as it numbers figures
        # (math_numfig, on by default): without numbered sections, on from one page to the next.
        # With math_numfig off, each page counts from 1.
        self.numbers_continue_across_pages = bool(sphinx_config.get("math_numfig", True))
        self.math_number_all = bool(sphinx_config.get("math_number_all", False))
        self.bibfiles = [self.root / name for name in config.get("bibtex_bibfiles", [])]
        self.entries = {}
        for bibfile in self.bibfiles:
            for key, entry in parse_file(str(bibfile)).entries.items():
                self.entries[key.lower()] = entry
        self.pages, self.targets, self.citations, self.bibliographies = {}, {}, {}, []
        # (page, equation as written) -> its numbers, for the equations that have no label.
        self._unlabelled_numbers: dict[tuple[str, str], list[int]] = {}
        self._heading_anchor: str | None = None  # of the section being scanned
        equations_so_far = 0
        for docname in _toc_docnames(yaml.safe_load((self.root / "_toc.yml").read_text())):
            source = self._source_of(docname)
            cells = [cell.source for cell in jupytext.read(source, fmt="md:myst").cells
                     if cell.cell_type == "markdown"]
            name = source.stem if source.parent == self.root / "chapters" else docname
            if not self.numbers_continue_across_pages:
                equations_so_far = 0
            equations_so_far = self._scan_page(name, cells, equations_so_far)
            self.pages[name] = Page(name, docname, source, _page_title(cells, docname))
        for bibliography in self.bibliographies:
            bibliography.keys = self.listed_keys(bibliography)

    def _source_of(self, docname: str) -> Path:
        """The MyST source of a page: chapters/<stem>.md for the pages built from the notebooks
        (book/<stem>.ipynb is made from it), else the page's own .md file."""
        for source in (self.root / "chapters" / f"{Path(docname).name}.md",
                       self.root / f"{docname}.md"):
            if source.exists():
                return source
        raise FileNotFoundError(f"_toc.yml lists {docname}, but neither "
                                f"chapters/{Path(docname).name}.md nor {docname}.md exists")

    def _scan_page(self, page: str, cells: list[str], equations_so_far: int) -> int:
        """Record the labels, equation numbers, citations and bibliographies of a page, and
        return the number of equations counted so far."""
        self.citations[page] = []
        self._heading_anchor = None
        for cell in cells:
            equations_so_far = self._scan_blocks(page, _blocks(cell), equations_so_far)
        return equations_so_far

    def _scan_blocks(self, page: str, blocks: list, equations_so_far: int) -> int:
        for index, block in enumerate(blocks):
            if isinstance(block, _Target):
                following = next((other for other in blocks[index + 1:]
                                  if not (isinstance(other, _Prose)
                                          and not "".join(other.lines).strip())), None)
                heading = _first_heading(following)
                self._add_target(Target(block.label, page,
                                        "section" if heading is not None else "other", heading))
            elif isinstance(block, _DisplayMath) and block.label is not None:
                # Only labelled `$$` equations get a number: myst-parser registers no target for
                # an unlabelled one, and math_number_all applies to the math directive only.
                equations_so_far += 1
                self._add_target(Target(block.label, page, "equation", number=equations_so_far))
            elif isinstance(block, _AmsMath) and block.numbered:
                equations_so_far += 1
                self._unlabelled_numbers.setdefault((page, "\n".join(block.lines)), []).append(
                    equations_so_far)
            elif isinstance(block, _Directive) and block.name == "math":
                label = block.options.get("label") or block.options.get("name")
                if label or self.math_number_all:
                    equations_so_far += 1
                    if label:
                        self._add_target(Target(label, page, "equation",
                                                number=equations_so_far))
                    else:
                        self._unlabelled_numbers.setdefault(
                            (page, "\n".join(block.lines)), []).append(equations_so_far)
            elif isinstance(block, _Directive) and block.name == "bibliography":
                self.bibliographies.append(
                    _Bibliography(page, block.options, block.argument, self._heading_anchor))
            elif isinstance(block, _Directive) and block.name in ADMONITION_TITLES:
                # Its body is part of the page, in this place: labels, equations, citations.
                equations_so_far = self._scan_blocks(page, _blocks("\n".join(block.body)),
                                                     equations_so_far)
            elif isinstance(block, _Prose):
                for line in block.lines:
                    heading = _HEADING.match(line)
                    if heading:
                        self._heading_anchor = _html_id(heading["text"])
                for kind, piece in _inline_pieces("\n".join(block.lines)):
                    if kind == "role" and piece[0] in ("cite", "cite:p", "cite:t"):
                        self.citations[page].extend(_citation_keys(piece[1]))
        return equations_so_far

    def unlabelled_number(self, block_lines: list[str], page: str) -> int:
        """The website's number of an unlabelled numbered equation (an amsmath environment, or a
        math directive under math_number_all), found by its text on the page."""
        numbers = self._unlabelled_numbers.get((page, "\n".join(block_lines)), [])
        if len(numbers) != 1:
            where = "is not on" if not numbers else "occurs more than once on"
            raise ValueError(f"{page}: the unlabelled equation {block_lines[0].strip()!r} {where} "
                             "the page, so its number is unknown; give it a label")
        return numbers[0]

    def _add_target(self, target: Target) -> None:
        if target.label in self.targets:
            raise ValueError(f"label {target.label!r} is defined twice: on page "
                             f"{self.targets[target.label].page} and on page {target.page}")
        self.targets[target.label] = target

    # --- addresses

    def url(self, page: str, anchor: str | None = None) -> str:
        return f"{self.site_url}/{self.pages[page].path}" + (f"#{anchor}" if anchor else "")

    def target(self, label: str, page: str, role: str) -> Target:
        if label not in self.targets:
            raise ValueError(f"{page}: {{{role}}}`{label}` refers to an unknown label "
                             f"({', '.join(sorted(self.targets)) or 'none defined'})")
        return self.targets[label]

    # --- bibliography

    def entry(self, key: str, page: str) -> Entry:
        if key.lower() not in self.entries:
            files = ", ".join(str(path.relative_to(self.root)) for path in self.bibfiles)
            raise ValueError(f"{page}: citation key {key!r} is not in {files}")
        return self.entries[key.lower()]

    def _cited_on(self, key: str) -> set[str]:
        """The docnames of the pages that cite a key (a bibliography filter's `docnames`)."""
        return {self.pages[page].docname for page, keys in self.citations.items()
                if key in (cited.lower() for cited in keys)}

    def listed_keys(self, bibliography: _Bibliography) -> list[str]:
        """The keys that a bibliography directive lists, in the website's order."""
        if bibliography.argument:
            raise NotImplementedError(f"{bibliography.page}: a bibliography directive that names "
                                      f"its .bib files ({bibliography.argument}) has no Jupyter "
                                      "conversion; the book's bibtex_bibfiles are used")
        style = find_plugin("pybtex.style.formatting",
                            bibliography.options.get("style", self.bibtex_style))()
        expression = _bibliography_filter(bibliography.options)
        docname = self.pages[bibliography.page].docname
        selected = [entry for key, entry in self.entries.items()
                    if _FilterVisitor(entry, docname, self._cited_on(key)).visit(expression)]
        return [entry.key.lower() for entry in style.sort(selected)]

    def link(self, key: str, page: str) -> str:
        """Where a citation links: the work itself (DOI, URL, arXiv), else its entry in this
        notebook's reference list, else the reference list of the website's page that has it."""
        external = _external_link(self.entry(key, page))
        if external:
            return external[1]
        listing = [bibliography for bibliography in self.bibliographies
                   if key.lower() in bibliography.keys]
        here = [bibliography for bibliography in listing if bibliography.page == page]
        if here:
            return f"#{_bib_anchor(key)}"
        if listing:
            return self.url(listing[0].page, listing[0].heading_anchor)
        raise ValueError(f"{page}: {key!r} is cited, but no bibliography lists it and its entry "
                         "has no doi, url or arXiv id to link to")


def _toc_docnames(toc: dict) -> list[str]:
    """The pages of _toc.yml in the order the website numbers them: the root, then each entry
    followed by its sections (Sphinx appends a page's toctree after its content)."""
    docnames = [toc["root"]]

    def walk(entries: list) -> None:
        for entry in entries or []:
            if entry.get("numbered"):
                raise NotImplementedError("numbered sections prefix the equation numbers; "
                                          "jupyter_markdown does not compute those")
            if "file" in entry:
                docnames.append(entry["file"])
            for key in ("sections", "chapters", "parts"):
                walk(entry.get(key))

    if any(options.get("numbered") for options in [toc.get("defaults") or {},
                                                   toc.get("options") or {}]):
        raise NotImplementedError("numbered sections prefix the equation numbers; "
                                  "jupyter_markdown does not compute those")
    for key in ("chapters", "parts", "sections"):
        walk(toc.get(key))
    return docnames


def _first_heading(block) -> str | None:
    if isinstance(block, _Prose):
        first = next(line for line in block.lines if line.strip())
        heading = _HEADING.match(first)
        return heading["text"] if heading else None
    return None


def _page_title(cells: list[str], docname: str) -> str:
    for cell in cells:
        for block in _blocks(cell):
            if isinstance(block, _Prose):
                for line in block.lines:
                    heading = _HEADING.match(line)
                    if heading:
                        return heading["text"]
    raise ValueError(f"page {docname} has no heading to take its title from")


def _html_id(text: str) -> str:
    """The id docutils makes of a label or heading (nodes.make_id, for ASCII text)."""
    identifier = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return re.sub(r"^[^a-z]+", "", identifier).rstrip("-")


def _bib_anchor(key: str) -> str:
    return _html_id(f"bib-{key}")


def _citation_keys(content: str) -> list[str]:
    return [key.strip() for key in content.split(",") if key.strip()]


def _external_link(entry: Entry) -> tuple[str, str] | None:
    """(text, address) of the work itself: its DOI, URL or arXiv abstract, if the entry has one."""
    fields = {name.lower(): value for name, value in entry.fields.items()}
    if fields.get("doi"):
        doi = re.sub(r"^https?://(dx\.)?doi\.org/", "", fields["doi"])
        return f"doi:{doi}", f"https://doi.org/{doi}"
    if fields.get("url"):
        return fields["url"], fields["url"]
    archive = (fields.get("archiveprefix") or fields.get("eprinttype") or "").lower()
    if fields.get("eprint") and archive == "arxiv":
        return f"arXiv:{fields['eprint']}", f"https://arxiv.org/abs/{fields['eprint']}"
    for name in ("journal", "note", "howpublished", "booktitle"):
        arxiv = _ARXIV_ID.search(fields.get(name, ""))
        if arxiv:
            return f"arXiv:{arxiv['id']}", f"https://arxiv.org/abs/{arxiv['id']}"
    return None


def _bibliography_filter(options: dict[str, str]) -> ast.AST:
    """The filter of a bibliography directive, as sphinxcontrib-bibtex reads it."""
    unsupported = set(options) - {"filter", "all", "cited", "notcited", "style"}
    if unsupported:
        raise NotImplementedError(f"bibliography option(s) {sorted(unsupported)} have no "
                                  "Jupyter conversion")
    if "filter" in options:
        expression = options["filter"]
    elif "all" in options:
        expression = "True"
    elif "notcited" in options:
        expression = "not cited"
    else:
        expression = DEFAULT_BIBLIOGRAPHY_FILTER
    return ast.parse(expression)


class _FilterVisitor(ast.NodeVisitor):
    """Evaluates a bibliography filter for one entry with sphinxcontrib-bibtex's rules (its
    domain._FilterVisitor): the same names, operators and lowercased key and type."""

    def __init__(self, entry: Entry, docname: str, cited_docnames: set[str]):
        self.entry, self.docname, self.cited_docnames = entry, docname, cited_docnames

    def visit_Module(self, node):
        if len(node.body) != 1:
            raise ValueError("a bibliography filter is one expression")
        return self.visit(node.body[0])

    def visit_Expr(self, node):
        return self.visit(node.value)

    def visit_BoolOp(self, node):
        outcomes = [self.visit(value) for value in node.values]
        return all(outcomes) if isinstance(node.op, ast.And) else any(outcomes)

    def visit_UnaryOp(self, node):
        if not isinstance(node.op, ast.Not):
            raise ValueError(f"bibliography filter: unsupported operator {node.op}")
        return not self.visit(node.operand)

    def visit_BinOp(self, node):
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Mod):  # `%` is a regular expression match
            return bool(re.search(right, left, re.IGNORECASE))
        if isinstance(node.op, ast.BitOr):
            return left | right
        if isinstance(node.op, ast.BitAnd):
            return left & right
        raise ValueError(f"bibliography filter: unsupported operator {node.op}")

    def visit_Compare(self, node):
        if len(node.ops) != 1:
            raise ValueError("bibliography filter: one comparison at a time")
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        operations = {ast.Eq: lambda: left == right, ast.NotEq: lambda: left != right,
                      ast.Lt: lambda: left < right, ast.LtE: lambda: left <= right,
                      ast.Gt: lambda: left > right, ast.GtE: lambda: left >= right,
                      ast.In: lambda: left in right, ast.NotIn: lambda: left not in right}
        if type(node.ops[0]) not in operations:
            raise ValueError(f"bibliography filter: unsupported comparison {node.ops[0]}")
        return operations[type(node.ops[0])]()

    def visit_Name(self, node):
        names = {"type": lambda: self.entry.type.lower(), "key": lambda: self.entry.key.lower(),
                 "cited": lambda: bool(self.cited_docnames), "docname": lambda: self.docname,
                 "docnames": lambda: self.cited_docnames}
        if node.id in names:
            return names[node.id]()
        if node.id in ("author", "editor"):
            return " and ".join(str(person) for person in self.entry.persons.get(node.id, []))
        return self.entry.fields.get(node.id, "")

    def visit_Set(self, node):
        return frozenset(self.visit(element) for element in node.elts)

    def visit_Constant(self, node):
        return node.value

    def generic_visit(self, node):
        raise ValueError(f"bibliography filter: unsupported syntax {type(node).__name__}")


class _JupyterMarkdownBackend(MarkdownBackend):
    """pybtex's markdown, escaping only what would change the rendering: its own backend escapes
    every punctuation mark, and `\\(` is a math delimiter to some notebook renderers."""

    def format_str(self, text):
        return _escape_markdown(text)


def _escape_markdown(text: str) -> str:
    """Text that markdown shows as it is: only the characters that would start emphasis, code,
    a link, HTML or math are escaped."""
    return re.sub(r"([\\`*_\[\]<>$])", r"\\\1", text)


def _author_text(entry: Entry) -> str:
    """The authors as the website's author_year citations name them: "Bishop", "Ioffe and
    Szegedy", "Teye *et al.*"."""
    persons = entry.persons.get("author") or entry.persons.get("editor")
    if not persons:
        raise ValueError(f"bibliography entry {entry.key!r} has neither author nor editor")
    names = [" ".join(part.render_as("text")
                      for part in person.rich_prelast_names + person.rich_last_names)
             for person in persons]
    names = [_escape_markdown(name) for name in names]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} *et al.*"


def _year(entry: Entry) -> str:
    return entry.fields.get("year", "n.d.")


# --- Conversion ----------------------------------------------------------------------------------

def to_jupyter(markdown: str, page: str, references: BookReferences) -> str:
    """One markdown cell of page `page` (a chapter's stem, e.g. "batch-norm"), rewritten for
    Jupyter, Colab and Studio Lab (see the module's docstring)."""
    if page not in references.pages:
        raise ValueError(f"unknown page {page!r}: _toc.yml has {sorted(references.pages)}")
    return "\n".join(_convert_blocks(_blocks(markdown), page, references))


def _convert_blocks(blocks: list, page: str, references: BookReferences) -> list[str]:
    output: list[str] = []
    for block in blocks:
        if isinstance(block, _Prose):
            output.extend(_convert_prose(block.lines, page, references).split("\n"))
        elif isinstance(block, _Code):
            output.extend(block.lines)
        elif isinstance(block, _Target):
            indent = block.line[:len(block.line) - len(block.line.lstrip())]
            output.append(f'{indent}<a id="{_html_id(block.label)}"></a>')
        elif isinstance(block, _Dropped):
            continue
        elif isinstance(block, _DisplayMath):
            output.extend(_convert_display_math(block, page, references))
        elif isinstance(block, _AmsMath):
            output.extend(_convert_amsmath(block, page, references))
        elif isinstance(block, _Directive):
            output.extend(_convert_directive(block, page, references))
    return output


def _convert_prose(lines: list[str], page: str, references: BookReferences) -> str:
    # Paragraph by paragraph: a code span or role never spans a blank line.
    paragraphs = re.split(r"(\n[ \t]*\n)", "\n".join(lines))
    converted = []
    for paragraph in paragraphs:
        pieces = []
        for kind, piece in _inline_pieces(paragraph):
            if kind == "role":
                pieces.append(_convert_role(*piece, page, references))
            else:
                pieces.append(piece)
        converted.append("".join(pieces))
    return "".join(converted)


def _convert_role(name: str, content: str, as_written: str, page: str,
                  references: BookReferences) -> str:
    if name in ("cite", "cite:p"):
        # The website's author_year style: "[Ioffe and Szegedy, 2015, He *et al.*, 2016]".
        return "[" + ", ".join(
            f"[{_author_text(references.entry(key, page))}, "
            f"{_year(references.entry(key, page))}]({references.link(key, page)})"
            for key in _citation_keys(content)) + "]"
    if name == "cite:t":
        # "Ioffe and Szegedy [2015]", the year linked, as the website has it.
        return ", ".join(
            f"{_author_text(references.entry(key, page))} "
            f"[[{_year(references.entry(key, page))}]({references.link(key, page)})]"
            for key in _citation_keys(content))
    if name == "ref":
        explicit = _EXPLICIT_TITLE.match(content)
        label = (explicit["label"] if explicit else content).strip()
        target = references.target(label, page, name)
        text = explicit["text"] if explicit else target.title
        if text is None:
            raise ValueError(f"{page}: {as_written} needs a link text: {label!r} does not label "
                             "a section heading")
        return f"[{text}]({_target_address(target, page, references)})"
    if name == "eq":
        target = references.target(content.strip(), page, name)
        if target.kind != "equation":
            raise ValueError(f"{page}: {as_written}: {target.label!r} does not label an equation")
        if target.page == page:
            return f"[({target.number})](#{_html_id(target.label)})"
        return (f"[({target.number}) in {references.pages[target.page].title}]"
                f"({references.url(target.page, target.anchor)})")
    if name == "math":
        return f"${content}$"
    raise NotImplementedError(f"{page}: the MyST role {{{name}}} has no Jupyter conversion "
                              f"(in {as_written})")


def _target_address(target: Target, page: str, references: BookReferences) -> str:
    if target.page == page:
        return f"#{_html_id(target.label)}"
    return references.url(target.page, target.anchor)


def _with_tag(body: str, number: int) -> str:
    """The body of a display equation with its number as a \\tag, otherwise unchanged."""
    tag = rf"\tag{{{number}}}"
    # A \tag outside a numbered environment within the display is an error to MathJax: put it in
    # that environment's last row.
    last_environment = None
    for match in re.finditer(r"\\end\{(%s)\}" % "|".join(TAGGABLE_ENVIRONMENTS), body):
        last_environment = match
    if last_environment is not None:
        return _tag_last_row(body, last_environment.start(), tag)
    head, newline, last = body.rpartition("\n")
    if newline and not last.strip():  # the closing $$ stands on a line of its own
        return f"{head}\n{last}{tag}\n{last}"
    return f"{body.rstrip()} {tag} "


def _tag_last_row(text: str, end: int, tag: str) -> str:
    """`text` with `tag` at the end of the row that `\\end{...}` at index `end` closes."""
    before = text[:end].rstrip()
    return f"{before} {tag}{text[len(before):end]}{text[end:]}"


def _equation_number(label: str, page: str, references: BookReferences) -> int:
    target = references.targets.get(label)
    if target is None or target.page != page or target.kind != "equation":
        raise ValueError(f"{page}: the equation labelled {label!r} is not in the page's source, "
                         "so its number is unknown")
    return target.number


def _convert_display_math(block: _DisplayMath, page: str,
                          references: BookReferences) -> list[str]:
    if block.label is None:
        return block.lines  # not numbered on the website either
    number = _equation_number(block.label, page, references)
    converted = f"{block.indent}$${_with_tag(block.body, number)}$$"
    return [f'{block.indent}<a id="{_html_id(block.label)}"></a>'] + converted.split("\n")


def _convert_amsmath(block: _AmsMath, page: str, references: BookReferences) -> list[str]:
    if not block.numbered:
        return block.lines
    number = references.unlabelled_number(block.lines, page)
    environment = block.environment
    text = "\n".join(block.lines)
    if environment in TAGGABLE_ENVIRONMENTS:
        end = text.rindex(f"\\end{{{environment}}}")
        return _tag_last_row(text, end, rf"\tag{{{number}}}").split("\n")
    # A matrix cannot hold a \tag: number the display around it.
    return ["$$"] + block.lines + [rf"\tag{{{number}}}", "$$"]


def _convert_directive(block: _Directive, page: str, references: BookReferences) -> list[str]:
    indent = block.indent
    if block.name in ADMONITION_TITLES:
        title = block.argument or ADMONITION_TITLES[block.name]
        if title is None:
            raise ValueError(f"{page}: an admonition needs a title: {block.lines[0].strip()}")
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                for line in block.body]
        converted = _convert_blocks(_blocks("\n".join(body)), page, references)
        title = _convert_prose([title], page, references)
        quoted = [f"> **{title}**", ">"] + [f"> {line}" if line.strip() else ">"
                                              for line in converted]
        return [f"{indent}{line}" for line in quoted]
    if block.name == "bibliography":
        bibliography = _Bibliography(page, block.options, block.argument, heading_anchor=None)
        bibliography.keys = references.listed_keys(bibliography)
        return [indent + line for line in _reference_list(bibliography, references)]
    if block.name == "math":
        label = block.options.get("label") or block.options.get("name")
        if label:
            anchor = [f'{indent}<a id="{_html_id(label)}"></a>']
            number = _equation_number(label, page, references)
        elif references.math_number_all:
            anchor, number = [], references.unlabelled_number(block.lines, page)
        else:
            anchor, number = [], None
        body = "\n" + "\n".join(line[len(indent):] if line.startswith(indent) else line
                                for line in block.body) + "\n"
        display = f"$${body if number is None else _with_tag(body, number)}$$"
        return anchor + [f"{indent}{line}" for line in display.split("\n")]
    raise NotImplementedError(f"{page}: the MyST directive {{{block.name}}} has no Jupyter "
                              f"conversion ({block.lines[0].strip()})")


def _reference_list(bibliography: _Bibliography, references: BookReferences) -> list[str]:
    """The works a bibliography directive lists on the website, in its order, as a markdown list:
    the author-year text the citations show, the website's entry, and a link to the work."""
    style = find_plugin("pybtex.style.formatting",
                        bibliography.options.get("style", references.bibtex_style))()
    backend = _JupyterMarkdownBackend()
    lines = []
    for key in bibliography.keys:
        entry = references.entries[key]
        formatted = style.format_entry("", entry).text.render(backend)
        formatted = re.sub(r"\s*\n\s*", " ", formatted).strip()
        item = (f'- <a id="{_bib_anchor(entry.key)}"></a>'
                f"[{_author_text(entry)}, {_year(entry)}] {formatted}")
        external = _external_link(entry)
        if external and external[1] not in formatted:
            item += f" [{external[0]}]({external[1]})"
        lines.append(item)
    return lines


# --- Checks --------------------------------------------------------------------------------------

def myst_leftovers(markdown: str) -> list[str]:
    """The MyST-only syntax in a markdown text, as written, outside fenced code and code spans:
    roles, target labels, labelled equations, directives, comments and block breaks."""
    leftovers = []
    for block in _blocks(markdown):
        if isinstance(block, _Prose):
            for paragraph in re.split(r"\n[ \t]*\n", "\n".join(block.lines)):
                leftovers.extend(piece[2] for kind, piece in _inline_pieces(paragraph)
                                 if kind == "role")
            leftovers.extend(line for line in block.lines
                             if re.match(r"^[ \t]*:{3,}", line))
        elif isinstance(block, _Target):
            leftovers.append(block.line)
        elif isinstance(block, _Dropped):
            leftovers.append(block.line)
        elif isinstance(block, _DisplayMath) and block.label is not None:
            leftovers.append(block.lines[-1])
        elif isinstance(block, _Directive):
            leftovers.append(block.lines[0])
    return leftovers
