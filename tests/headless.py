"""Headless Chromium on the built website: the server, the browser, and what a page reports.

Debian's `chromium` and `chromedriver` (`make browser-deps`), driven by Selenium with that driver
named explicitly, so nothing is downloaded; the site is served from _build/html on 127.0.0.1.
"""

import functools
import http.server
import json
import os
import tempfile
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from conftest import ROOT

SITE = ROOT / "_build" / "html"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Offline and quiet: no update checks, field trials or sync, which would also show up as requests
# to other hosts.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1400"]

# Requests that never leave the browser (its own start page is chrome://new-tab-page...).
NOT_NETWORK = ("data", "blob", "about", "chrome", "chrome-untrusted", "devtools")


def toc_pages() -> list[str]:
    """Every page of the book, as built: `<file>.html` for each file in _toc.yml."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("chapters"))
    walk(toc.get("parts"))
    return [f"{file}.html" for file in files]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pytest shows failures; a line per request would bury them
        pass


@pytest.fixture(scope="session")
def site():
    """The built site's base URL on 127.0.0.1."""
    if not (SITE / "index.html").exists():
        pytest.fail(f"no built site in {SITE}: run `make html` (`make browser-test` does)")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(SITE)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture
def browser():
    """A fresh headless Chromium (new profile: nothing stored from an earlier test)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `make browser-deps` (as root; it "
                    "installs Debian's chromium and chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to fetch a driver
    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        # The console, and every network request (the DevTools performance log).
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        driver.set_script_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_mathjax(driver) -> str | None:
    """None once MathJax has typeset the page (at once if it has no math), else what went wrong."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        if (!document.querySelector(".math")) return done(null);
        const wait = (tries) => (window.MathJax && MathJax.startup && MathJax.startup.promise)
            ? MathJax.startup.promise.then(() => done(null), (e) => done(String(e)))
            : tries ? setTimeout(() => wait(tries - 1), 100) : done("MathJax never started");
        wait(300);
    """)


def open_page(driver, url: str) -> None:
    driver.get(url)
    problem = wait_for_mathjax(driver)
    assert problem is None, f"{url}: {problem}"


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def foreign_requests(driver, site: str) -> list[str]:
    """What the browser asked of any host but the local server since the last call."""
    local = urllib.parse.urlsplit(site).netloc
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return [url for url in urls if urllib.parse.urlsplit(url).scheme not in NOT_NETWORK
            and urllib.parse.urlsplit(url).netloc != local]


def chosen_frameworks(driver) -> list[str]:
    """The framework shown by each framework tab set on the page, in page order."""
    return driver.execute_script("""
        return [...document.querySelectorAll(".sd-tab-set")]
            .filter((set) => set.querySelector("label[data-sync-group=framework]"))
            .map((set) => set.querySelector(":scope > input:checked + label").dataset.syncId);
    """)


def tab_orders(driver) -> list[list[str]]:
    """The frameworks each framework tab set lists, in its order."""
    return driver.execute_script("""
        return [...document.querySelectorAll(".sd-tab-set")]
            .map((set) => [...set.querySelectorAll(":scope > label[data-sync-group=framework]")]
                .map((label) => label.dataset.syncId))
            .filter((ids) => ids.length);
    """)
