"""The built book in a real browser: every page of `_build/html` loaded in headless Chromium.

Fails when a page logs a JavaScript error, an image does not load, a table is wider than
the article (at 1000 and 1400 px), the page scrolls sideways or a table is cut off on a
400 px screen (a table wider than that scrolls inside its own container), an internal link points nowhere, a number of a table
computed from the records does not link to the page of its record, a notebook test marker
(`NBVAL_...`) is visible, a record's page lacks its files to download, the introduction does
not open with the status table, or the search page finds nothing for "ResNet-164". A
screenshot of every page goes to `_build/screenshots/` (the results page and the
introduction also at 1000 px and in the dark theme; they, the recipe audit and the record
pages also at 400 px).

Needs the built book (`make book`; `make test` builds it first) and Debian's Chromium:
    apt-get install chromium chromium-driver && pip install selenium
Without them the tests skip and say so, except under CI (`CI` set), where they fail.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("REPRORESNET_BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = BUILD.parent / "screenshots"
WIDTHS = (1000, 1400)  # the article must hold every table at both
NARROW = 400  # a phone: the page must not scroll sideways, and every table scrolls in its container
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
INSTALL = "apt-get install chromium chromium-driver && pip install selenium"


def unavailable(reason: str):
    """Skip on a user's machine; fail in CI, where the browser is part of the job."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run)")
    pytest.skip(reason)


def browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def pages() -> list[Path]:
    """Every HTML page of the book (not the theme's or Sphinx's files under `_*` folders)."""
    return sorted(path for path in BUILD.rglob("*.html")
                  if not any(part.startswith("_") for part in path.relative_to(BUILD).parts[:-1]))


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def ids_in(page: Path) -> frozenset:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def link_target_problem(href: str) -> str | None:
    """Why an internal link ("/path#anchor" on this server) points nowhere, or None if its page
    and anchor exist."""
    url = urlsplit(href)
    path = BUILD / unquote(url.path).lstrip("/")
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file():
        return f"{href}: no such file"
    if url.fragment and path.suffix == ".html" and unquote(url.fragment) not in ids_in(path):
        return f"{href}: no element with id {unquote(url.fragment)!r}"
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    if not (BUILD / "index.html").is_file():
        unavailable(f"no built book at {BUILD}: build it first with `make book`")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(BUILD)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    paths = browser_paths()
    if paths is None:
        unavailable(f"no Chromium and chromedriver on PATH; install them with `{INSTALL}`")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable(f"selenium is not installed; install the browser test's tools with `{INSTALL}`")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={WIDTHS[-1]},1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 20.0):
    """Wait until `script` (a JavaScript expression) is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {script}"))


def page_errors(driver, origin: str) -> list[str]:
    """SEVERE console entries: JavaScript errors and local files that failed to load. Resources
    from other hosts (a CDN, unreachable offline) are not the book's to check."""
    errors = []
    for entry in driver.get_log("browser"):
        message = entry["message"]
        if entry["level"] != "SEVERE" or "favicon.ico" in message:
            continue
        if message.split(" ", 1)[0].startswith("http") and not message.startswith(origin):
            continue
        errors.append(message)
    return errors


BROKEN_IMAGES = "Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.currentSrc || i.src)"
ALL_IMAGES_SETTLED = "Array.from(document.images).every(i => i.complete)"
# The container a table scrolls in, if any: its nearest ancestor inside the article whose
# overflow-x lets it scroll (a Markdown table's recipe-audit code never breaks inside a name).
SCROLLER = """
const scroller = t => { for (let e = t.parentElement; e && !e.matches('article'); e = e.parentElement) {
  const o = getComputedStyle(e).overflowX; if (o !== 'visible') return e; } return null; };
const scrolls = t => { const s = scroller(t); return s !== null && ['auto', 'scroll'].includes(getComputedStyle(s).overflowX)
  && !t.classList.contains('report-table'); };
"""
WIDE_TABLES = SCROLLER + """
const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const box = article.getBoundingClientRect();
const style = getComputedStyle(article);
const right = box.right - parseFloat(style.paddingRight);
return Array.from(article.querySelectorAll('table')).filter(t => t.offsetParent !== null)
  .filter(t => !scrolls(t) && (t.getBoundingClientRect().right > right + 1 || t.scrollWidth > t.clientWidth + 1))
  .map(t => `${t.id || t.className || 'table'} (${Math.round(t.getBoundingClientRect().width)} px, `
            + `article ${Math.round(right - box.left)} px; first header: `
            + `${(t.querySelector('th') || {}).textContent || ''})`);
"""
# At NARROW px: the page scrolls sideways (its width beyond the window's), or a table is cut off:
# it or its scroll container reaches past the window, or a container that cannot scroll clips it.
SIDEWAYS = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
CUT_OFF_TABLES = SCROLLER + """
const width = document.documentElement.clientWidth;
return Array.from(document.querySelectorAll('article table')).filter(t => t.offsetParent !== null).flatMap(t => {
  const s = scroller(t), box = (s || t).getBoundingClientRect(), name = t.id || t.className || 'table';
  if (box.left < -1 || box.right > width + 1) return [`${name} reaches ${Math.round(box.right)} px`];
  if (s && !['auto', 'scroll'].includes(getComputedStyle(s).overflowX) && s.scrollWidth > s.clientWidth + 1)
    return [`${name} is clipped by a container that cannot scroll`];
  return [];
});
"""
INTERNAL_LINKS = "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
# Every cell of a table computed from the records (render.html's data-source="records") that
# holds a number is a link to a record page, or is quoted (the papers', the seed's, the
# library's), or holds note numbers or a network's title (`WRN-16-4`), or belongs to a record
# page's own table (data-run).
UNLINKED_NUMBERS = r"""
const number = /(^|[^\w.\/-])\d[\d,.]*/;
return Array.from(document.querySelectorAll('table.report-table')).flatMap(table => {
  if (!table.dataset.source) return [`${table.id}: no data-source`];
  if (table.dataset.source !== 'records') return [];
  const own = table.dataset.run;
  return Array.from(table.querySelectorAll('td')).filter(td => number.test(td.textContent))
    .filter(td => !td.classList.contains('quoted') && !td.querySelector('a.note-ref, span.network'))
    .filter(td => own ? false : !Array.from(td.querySelectorAll('a.record-link'))
                                     .some(a => /\/book\/runs\/[^/]+\.html$/.test(new URL(a.href).pathname)))
    .map(td => `${table.id}: "${td.textContent.trim()}" links to no record page`);
});
"""
RECORD_LINKS = "return Array.from(document.querySelectorAll('a.record-link')).map(a => a.href)"
OWN_TABLES = "return Array.from(document.querySelectorAll('table[data-run]')).map(t => t.dataset.run)"
DOWNLOADS = "return Array.from(document.querySelectorAll('a.download')).map(a => a.href)"
VISIBLE_TEXT = "return document.body.innerText"
FIRST_TABLE = "return (document.querySelector('article.bd-article table') || {}).id"


def screenshot(driver, name: str) -> None:
    """The whole page: the window grown to the page's height (up to 12,000 px), then shrunk back."""
    height = min(driver.execute_script("return document.documentElement.scrollHeight"), 12_000)
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(height, 800))
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    driver.set_window_size(width, 1000)


def check_page(driver, origin: str, page: Path) -> list[str]:
    relative = page.relative_to(BUILD).as_posix()
    driver.set_window_size(WIDTHS[-1], 1000)
    driver.get(f"{origin}/{relative}")
    problems = [f"console: {error}" for error in page_errors(driver, origin)]
    driver.execute_script("for (const image of document.images) image.loading = 'eager'")  # lazy ones too
    wait_for(driver, ALL_IMAGES_SETTLED)
    problems += [f"image did not load: {src}" for src in driver.execute_script(f"return {BROKEN_IMAGES}")]
    for width in WIDTHS:
        driver.set_window_size(width, 1000)
        problems += [f"at {width} px, table wider than the article: {table}"
                     for table in driver.execute_script(WIDE_TABLES)]
    problems += narrow_problems(driver, relative)
    links = {href[len(origin):] for href in driver.execute_script(INTERNAL_LINKS) if href.startswith(origin)}
    problems += [f"broken link: {problem}" for href in sorted(links) if (problem := link_target_problem(href))]
    problems += record_problems(driver, origin, relative)
    driver.set_window_size(WIDTHS[-1], 1000)
    name = relative.removesuffix(".html").replace("/", "__")
    screenshot(driver, name)
    if relative in ("notebooks/results.html", "book/intro.html"):
        driver.set_window_size(WIDTHS[0], 1000)
        screenshot(driver, f"{name}--{WIDTHS[0]}")
        driver.execute_script("document.documentElement.dataset.theme = 'dark'")
        for width in WIDTHS:
            driver.set_window_size(width, 1000)
            screenshot(driver, f"{name}--dark" + ("" if width == WIDTHS[-1] else f"--{width}"))
        driver.execute_script("document.documentElement.dataset.theme = 'light'")
    problems += [f"console: {error}" for error in page_errors(driver, origin)]
    return [f"{relative}: {problem}" for problem in problems]


def narrow_problems(driver, relative: str) -> list[str]:
    """At NARROW px: the page scrolls sideways, or a table is cut off."""
    driver.set_window_size(NARROW, 1000)
    wait_for(driver, f"document.documentElement.clientWidth <= {NARROW}")
    problems = [f"at {NARROW} px, the page scrolls sideways by {extra} px"
                for extra in [driver.execute_script(SIDEWAYS)] if extra > 1]
    problems += [f"at {NARROW} px, a table is cut off: {table}" for table in driver.execute_script(CUT_OFF_TABLES)]
    if relative in ("notebooks/results.html", "book/intro.html", "book/recipe-audit.html") or \
            relative.startswith("book/runs/"):
        screenshot(driver, f"{relative.removesuffix('.html').replace('/', '__')}--{NARROW}")
    return problems


def record_problems(driver, origin: str, relative: str) -> list[str]:
    """Every number one click from its record: the links of the report's tables, each record
    page's files, no notebook test marker in sight, and the introduction's status table first."""
    problems = list(driver.execute_script(UNLINKED_NUMBERS))
    pages = {href[len(origin):] for href in driver.execute_script(RECORD_LINKS) if href.startswith(origin)}
    problems += [f"a record link points nowhere: {problem}" for href in sorted(pages)
                 if (problem := link_target_problem(href))]
    problems += [f"a table of record {run!r}, which has no page" for run in driver.execute_script(OWN_TABLES)
                 if not (BUILD / "book" / "runs" / f"{run}.html").is_file()]
    if "NBVAL" in driver.execute_script(VISIBLE_TEXT):
        problems.append("a notebook test marker (NBVAL_...) is visible")
    if relative.startswith("book/runs/"):
        files = {unquote(urlsplit(href).path).rsplit("/", 1)[-1] for href in driver.execute_script(DOWNLOADS)}
        wanted = {"bench.json"} if relative.startswith("book/runs/bench-") else {"run.json", "metrics.csv"}
        problems += [f"no {name} to download" for name in sorted(wanted - files)]
    if relative == "book/intro.html" and driver.execute_script(FIRST_TABLE) != "status-table":
        problems.append(f"the first table is {driver.execute_script(FIRST_TABLE)!r}, not the status table")
    return problems


def test_every_page_loads_cleanly_in_chromium(server, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    checked = pages()
    names = {page.relative_to(BUILD).as_posix() for page in checked}
    assert {"book/intro.html", "book/summary.html", "notebooks/results.html", "search.html"} <= names, \
        f"{BUILD} is not the whole book"
    records_dir = ROOT / "results"  # every record has its page
    expected = {f"book/runs/{path.parent.name}.html" for path in [*records_dir.glob("*/run.json"),
                                                                  *records_dir.glob("bench-*/bench.json")]}
    assert expected <= names, f"record pages missing: {sorted(expected - names)}"
    problems = [problem for page in checked for problem in check_page(browser, server, page)]
    (SCREENSHOTS / "pages.txt").write_text(
        "".join(f"{page.relative_to(BUILD).as_posix()}\n" for page in checked))
    assert not problems, "\n".join(problems)
    assert len(list(SCREENSHOTS.glob("*.png"))) >= len(checked)


def test_search_finds_resnet164(server, browser):
    browser.set_window_size(WIDTHS[-1], 1000)
    browser.get(f"{server}/search.html?q=ResNet-164")
    from selenium.common.exceptions import TimeoutException
    try:
        summary = wait_for(browser, "(document.querySelector('#search-results .search-summary') || {}).textContent")
    except TimeoutException:
        pytest.fail(f"the search page never finished a search for 'ResNet-164' "
                    f"(console: {page_errors(browser, server)})")
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#search-results ul.search li a')).map(a => a.textContent)")
    assert titles, f"the search page found nothing for 'ResNet-164': {summary}"
    assert page_errors(browser, server) == []
