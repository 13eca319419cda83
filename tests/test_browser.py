"""The built website as a reader gets it, in headless Chromium (run by `make browser-test`).

Every page of _toc.yml: no console errors, every equation typeset by the local MathJax and
numbered, every image loaded, no broken internal link, copy buttons on code, no request to another
host. Every page made from notebooks: one framework choice drives all its tab sets, holds across a
reload and on another page, and can be set by `?framework=`; the launch links follow it. Saves a
screenshot of each such page per framework in _build/screenshots/.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from conftest import ROOT
from headless import (browser, chosen_frameworks, console_errors, foreign_requests,  # noqa: F401
                      open_page, site, tab_orders, toc_pages)

sys.path.insert(0, str(ROOT / "tools"))
import pipeline  # noqa: E402

FRAMEWORKS = list(pipeline.FRAMEWORKS)
PAGES = toc_pages()
# The pages the pipeline merges from notebooks, with the chapter source each comes from.
NOTEBOOK_PAGES = {f"book/{source.stem}.html": source for source in pipeline.chapter_sources()}
SCREENSHOTS = ROOT / "_build" / "screenshots"

# What a page must not contain once loaded (each check returns a list of problems).
PAGE_PROBLEMS = r"""
const problems = [];
document.querySelectorAll("div.math, span.math").forEach((el) => {
  const where = el.id || el.textContent.slice(0, 60);
  if (!el.querySelector("mjx-container")) problems.push(`equation not rendered: ${where}`);
  else if (el.querySelector("mjx-merror")) problems.push(`TeX error: ${where}`);
  if (el.tagName === "DIV" && !el.querySelector(".eqno")) problems.push(`equation not numbered: ${where}`);
});
const prose = (document.querySelector("main") || document.body).cloneNode(true);
prose.querySelectorAll("pre, code, script, mjx-container").forEach((el) => el.remove());
for (const raw of ["\\(", "\\[", "$$"]) {
  if (prose.textContent.includes(raw)) problems.push(`raw TeX "${raw}" left in the text`);
}
for (const img of document.images) {
  if (!(img.complete && img.naturalWidth > 0)) problems.push(`image not loaded: ${img.src}`);
}
document.querySelectorAll("div.cell_input div.highlight").forEach((code) => {
  if (!code.querySelector("button.copybtn")) problems.push(`no copy button: ${code.textContent.slice(0, 60)}`);
});
if (document.querySelector("div.cell_output button.copybtn")) problems.push("copy button on an output");
document.querySelectorAll(".output.stderr, .output.traceback").forEach((out) => {
  problems.push(`stderr or traceback in an output: ${out.textContent.slice(0, 60)}`);
});
return problems;
"""


def broken_links(hrefs: list[str], site: str, fetched: dict) -> list[str]:
    """The links among ``hrefs`` into the site whose page is missing or has no such anchor."""
    broken = []
    for href in sorted(set(hrefs)):
        parts = urllib.parse.urlsplit(href)
        if parts.netloc != urllib.parse.urlsplit(site).netloc:
            continue
        page = urllib.parse.urlunsplit(parts._replace(fragment=""))
        if page not in fetched:
            try:
                fetched[page] = urllib.request.urlopen(page).read().decode("utf-8", "replace")
            except urllib.error.HTTPError:
                fetched[page] = None
        anchor = urllib.parse.unquote(parts.fragment)
        if fetched[page] is None:
            broken.append(f"{href} (no such file)")
        elif anchor and f'id="{anchor}"' not in fetched[page]:
            broken.append(f"{href} (no such anchor)")
    return broken


def test_the_book_has_pages_made_from_notebooks():
    assert set(NOTEBOOK_PAGES) <= set(PAGES), "a chapter source is missing from _toc.yml"
    assert NOTEBOOK_PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline_with_no_errors(browser, site, page):
    open_page(browser, site + page)
    assert console_errors(browser) == []
    assert browser.execute_script(PAGE_PROBLEMS) == []
    hrefs = [link.get_attribute("href") for link in browser.find_elements(By.CSS_SELECTOR, "a[href]")]
    assert broken_links(hrefs, site, {}) == []
    assert foreign_requests(browser, site) == [], "the page asked other hosts for something"


# Code blocks, of code cells or prose, that scroll sideways; a block in a hidden tab has no box.
OVERFLOWING_CODE = r"""
return Array.from(document.querySelectorAll("div.highlight pre"))
  .filter((pre) => pre.offsetParent !== null && !pre.closest(".cell_output, .output"))
  .filter((pre) => pre.scrollWidth > pre.clientWidth)
  .map((pre) => `${pre.scrollWidth} > ${pre.clientWidth} px: ${pre.textContent.slice(0, 60)}`);
"""


@pytest.mark.parametrize("page", PAGES)
def test_no_code_block_scrolls_sideways(browser, site, page):
    """In the browser's 1280-pixel-wide window (a laptop's), in every framework's tabs: lines of
    88 columns (tests/test_notebooks.py) fit (_static/code-width.css)."""
    overflowing = {}
    for framework in FRAMEWORKS if page in NOTEBOOK_PAGES else [None]:
        open_page(browser, site + page + (f"?framework={framework}" if framework else ""))
        assert browser.get_window_size()["width"] == 1280
        overflowing[framework] = browser.execute_script(OVERFLOWING_CODE)
    assert not any(overflowing.values()), overflowing


# The code a reader sees: the code cells' inputs in the chosen framework's tabs (a hidden tab has
# no box), and the code cells outside tab sets.
SHOWN_CODE = r"""
return Array.from(document.querySelectorAll("div.cell_input pre"))
  .filter((pre) => pre.offsetParent !== null)
  .map((pre) => pre.textContent);
"""


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_no_assert_is_shown(browser, site, page):
    """Checks live in cells the website leaves out (tagged remove-cell); in no framework's tabs
    does a reader meet an assert."""
    for framework in FRAMEWORKS:
        open_page(browser, site + page + f"?framework={framework}")
        shown = browser.execute_script(SHOWN_CODE)
        assert len(shown) > 3, f"{page}, {framework}: almost no code shown, so nothing was tested"
        asserts = [line for code in shown for line in code.splitlines()
                   if re.match(r"\s*assert\b", line)]
        assert asserts == [], f"{page}, {framework}: asserts shown: {asserts}"
    if page == "book/batch-norm.html":
        assert any("def batch_norm(" in code for code in shown), "the scratch code is not shown"


def choose(browser, tab_set_index: int, framework: str) -> None:
    """Click a framework's tab in one tab set, as a reader would."""
    tab_set = [s for s in browser.find_elements(By.CSS_SELECTOR, ".sd-tab-set")
               if s.find_elements(By.CSS_SELECTOR, "label[data-sync-group=framework]")][tab_set_index]
    label = tab_set.find_element(By.CSS_SELECTOR, f":scope > label[data-sync-id={framework}]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", label)
    label.click()


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_one_framework_choice_drives_every_tab_set(browser, site, page):
    open_page(browser, site + page)
    orders = tab_orders(browser)
    assert len(orders) > 1, "expected several framework tab sets"
    # sphinx-design syncs on the radio's change event: tab sets must list the keys in one order.
    assert all(order == [f for f in FRAMEWORKS if f in order] for order in orders), orders
    assert set(chosen_frameworks(browser)) == {"torch"}

    choose(browser, 0, "jax")
    assert set(chosen_frameworks(browser)) == {"jax"}, "choosing JAX did not switch every tab set"
    browser.refresh()
    assert set(chosen_frameworks(browser)) == {"jax"}, "the choice did not survive a reload"
    open_page(browser, site + PAGES[0])
    assert set(chosen_frameworks(browser)) == {"jax"}, f"the choice did not hold on {PAGES[0]}"

    open_page(browser, site + page + "?framework=tensorflow")
    assert set(chosen_frameworks(browser)) == {"tensorflow"}
    # A pick made after arriving by such a link must survive a reload too.
    choose(browser, -1, "mxnet")
    assert set(chosen_frameworks(browser)) == {"mxnet"}
    browser.refresh()
    assert set(chosen_frameworks(browser)) == {"mxnet"}, "the address overrode the reader's pick"
    assert console_errors(browser) == []


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_launch_links_follow_the_chosen_framework(browser, site, page):
    source = NOTEBOOK_PAGES[page]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for framework in FRAMEWORKS:
        open_page(browser, f"{site}{page}?framework={framework}")
        box = browser.find_element(By.CSS_SELECTOR, "div.admonition.launch")
        shown = [link.get_attribute("href") for link in box.find_elements(By.TAG_NAME, "a")
                 if link.is_displayed()]
        colab, studio_lab, download = shown
        assert colab == pipeline.colab_url(source, framework)
        assert studio_lab == pipeline.studio_lab_url(source, framework)
        served = urllib.request.urlopen(download).read()
        notebook = pipeline.notebook_path(source, framework)
        assert served == notebook.read_bytes(), f"{download} is not {notebook.relative_to(ROOT)}"
        assert json.loads(served)["metadata"]["d2l_bn"]["framework"] == framework
        name = re.sub(r"\W", "-", page.removesuffix(".html"))
        browser.save_screenshot(str(SCREENSHOTS / f"{name}-{framework}.png"))
