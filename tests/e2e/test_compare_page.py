"""The comparison page in a real headless Chromium, in front of a real OpenSearch.

The proxy runs in-process (an `AppRunner` on its own event loop in a background thread)
with `compare.enabled`, SciFact's test qrels (BEIR, with `queries.jsonl.gz` next to them, so
queries match by text) and the word-overlap `FakeBackend` (fast; the page's mechanics do not
depend on the model). Chromium is driven with selenium: the page loads and lists the
cluster's indices and aliases, a query fills both columns with what the API answers, a
keyboard-only pass does the same with TAB and ENTER, and the performance log shows that the
page requests nothing but the proxy. Screenshots go to `$RERANK_PROXY_ARTEFACTS` (or a
temporary directory); their paths are printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from proxy.app import create_app, make_runner
from proxy.compare import API_PATH, PREFIX
from proxy.config import Config, parse_config
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor
from tests.conftest import SCIFACT, SciFact

from .conftest import ALIAS, SCIFACT_INDEX, WINDOW, _index_scifact

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 60


class ProxyThread:
    """The proxy app on its own event loop in a daemon thread."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="compare-proxy", daemon=True
        )
        self.runner: web.AppRunner | None = None

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(WAIT)

    async def _start(self) -> str:
        app = create_app(self.cfg, reranker=RerankFront(LocalExecutor(FakeBackend())))
        self.runner = make_runner(app, shutdown_timeout=5.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(scope="module")
def proxy_url(engines: dict[str, str], scifact: SciFact) -> Iterator[str]:
    from opensearchpy import OpenSearch

    engine_url = engines["opensearch"]
    client = OpenSearch(hosts=[engine_url], timeout=60)
    _index_scifact(client, scifact)
    client.close()
    cfg = parse_config(
        {
            "upstream": {"url": engine_url, "probe_interval": 0, "read_timeout": 60},
            "model": {"backend": "fake"},
            "defaults": {"enabled": False},
            "indices": [
                {"match": [SCIFACT_INDEX, ALIAS], "fields": ["title", "text"], "window": WINDOW}
            ],
            "compare": {"enabled": True, "qrels": str(SCIFACT / "qrels" / "test.tsv.gz")},
            "log_level": "WARNING",
        }
    )
    server = ProxyThread(cfg)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("RERANK_PROXY_ARTEFACTS")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("compare-artefacts")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def api(proxy_url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        proxy_url + API_PATH,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=WAIT) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def judged(proxy_url: str, scifact: SciFact) -> tuple[str, str, Any]:
    """A SciFact test query (id, text, API answer) with a relevant document in the top 10."""
    for query_id in sorted(scifact.qrels, key=int)[:40]:
        text = scifact.queries[query_id]
        answer = api(proxy_url, {"index": SCIFACT_INDEX, "query": text})
        metrics = answer["metrics"]
        if metrics and metrics["engine"]["relevant"] and metrics["reranked"]["relevant"]:
            assert answer["judgments"]["query_id"] == query_id  # matched by its text
            return query_id, text, answer
    raise AssertionError("no SciFact query has a relevant hit in both top 10s")


# -- helpers -------------------------------------------------------------------------------


def open_page(driver: Any, proxy_url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("performance")  # drop what earlier tests left
    driver.get_log("browser")
    driver.get(f"{proxy_url}{PREFIX}/")
    WebDriverWait(driver, WAIT).until(
        lambda d: d.execute_script(
            "return document.getElementById('index-options').dataset.loaded === 'true'"
        )
    )


def wait_for_results(driver: Any, previous: str = "") -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d: Any) -> bool:
        text = str(d.find_element("id", "status").text)
        return text.startswith(("Done", "Not reranked", "The comparison")) and text != previous

    WebDriverWait(driver, WAIT).until(done)


def column_ids(driver: Any, column: str) -> list[str]:
    items = driver.find_elements("css selector", f"#{column}-list > li")
    return [li.get_attribute("data-id") for li in items]


def screenshot(driver: Any, path: Path) -> Path:
    """The whole page, below the fold too (DevTools `Page.captureScreenshot`)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for, from Chromium's DevTools Network events."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def active_id(driver: Any) -> str:
    return str(driver.switch_to.active_element.get_attribute("id"))


# -- the page ------------------------------------------------------------------------------


def test_the_page_compares_a_query_on_real_data(
    browser: Any, proxy_url: str, judged: tuple[str, str, Any], artefacts: Path
) -> None:
    query_id, text, answer = judged
    open_page(browser, proxy_url)
    options = browser.execute_script(
        "return [...document.querySelectorAll('#index-options option')].map(o => o.value)"
    )
    assert SCIFACT_INDEX in options and ALIAS in options  # from _cat, through the proxy
    assert options.index(ALIAS) < options.index(SCIFACT_INDEX)  # aliases first

    browser.find_element("id", "index").send_keys(SCIFACT_INDEX)
    browser.find_element("id", "query").send_keys(text)
    browser.find_element("id", "run").click()
    wait_for_results(browser)

    # Both columns show what the API answers for the same search, the engine's as it ranks.
    assert column_ids(browser, "engine") == [r["id"] for r in answer["engine"]]
    assert column_ids(browser, "reranked") == [r["id"] for r in answer["reranked"]]
    assert len(answer["engine"]) == len(answer["reranked"]) == 10
    assert column_ids(browser, "engine") != column_ids(browser, "reranked")
    status = browser.find_element("id", "status")
    assert status.get_attribute("aria-live") == "polite" and status.text.startswith("Done")

    summary = browser.find_element("id", "summary").text
    assert f"Judged query {query_id}" in summary and "nDCG@10" in summary
    grades = browser.find_elements("css selector", "#reranked-list .grade")
    assert len(grades) == 10 and any(g.text.startswith("relevant") for g in grades)
    moves = browser.find_elements("css selector", "#reranked-list .move")
    assert len(moves) == 10 and all(m.text for m in moves)
    first = answer["reranked"][0]
    assert moves[0].text.startswith(
        {"up": "▲", "down": "▼", "same": "=", "new": "★"}[first["movement"]]
    )

    # The text the model saw: collapsed, opened from its summary.
    seen = browser.find_element("css selector", "#reranked-list > li:first-child details.seen")
    body = seen.find_element("css selector", ".seen-text")
    assert not body.is_displayed()
    seen.find_element("tag name", "summary").click()
    assert body.is_displayed() and body.text.strip() == first["text"].strip()

    screenshot(browser, artefacts / "compare-page.png")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []  # no script error, no refused (CSP) load


def test_the_engine_column_is_the_engines_own_order(
    engines: dict[str, str], judged: tuple[str, str, Any]
) -> None:
    from opensearchpy import OpenSearch

    _, _, answer = judged
    client = OpenSearch(hosts=[engines["opensearch"]], timeout=60)
    try:
        direct = client.search(index=SCIFACT_INDEX, body={**answer["search"], "size": 10})
    finally:
        client.close()
    assert [h["_id"] for h in direct["hits"]["hits"]] == [r["id"] for r in answer["engine"]]
    assert [h["_score"] for h in direct["hits"]["hits"]] == pytest.approx(
        [r["engine_score"] for r in answer["engine"]]
    )


def test_keyboard_only(
    browser: Any, proxy_url: str, judged: tuple[str, str, Any], artefacts: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _, text, _ = judged
    open_page(browser, proxy_url)

    def press(*keys: str) -> None:
        ActionChains(browser).send_keys(*keys).perform()

    press(Keys.TAB)
    assert active_id(browser) == "index"
    outline = browser.execute_script(
        "const s = getComputedStyle(document.activeElement);"
        "return [s.outlineStyle, parseFloat(s.outlineWidth)]"
    )
    assert outline[0] != "none" and outline[1] >= 2, outline  # focus is visible
    press(ALIAS)
    press(Keys.TAB)
    assert active_id(browser) == "query"
    press(text, Keys.ENTER)
    wait_for_results(browser)
    via_alias = api(proxy_url, {"index": ALIAS, "query": text})
    assert column_ids(browser, "reranked") == [r["id"] for r in via_alias["reranked"]]
    assert column_ids(browser, "engine") == [r["id"] for r in via_alias["engine"]]
    screenshot(browser, artefacts / "compare-keyboard.png")

    # The rest of the form in Tab order; the search body opens and runs from the keyboard.
    order = []
    for _ in range(4):
        press(Keys.TAB)
        order.append(active_id(browser) or browser.switch_to.active_element.tag_name)
    assert order == ["size", "query-id", "run", "summary"]
    press(Keys.ENTER)  # opens "Or paste a search body"
    press(Keys.TAB)
    assert active_id(browser) == "body"
    before = browser.find_element("id", "status").text
    search = {"query": {"match": {"title": text}}}
    press(json.dumps(search))
    ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(
        Keys.CONTROL
    ).perform()
    wait_for_results(browser, before)
    # The query box still holds the text: it is what the model scores for the pasted body.
    by_body = api(proxy_url, {"index": ALIAS, "body": search, "query": text})
    assert column_ids(browser, "reranked") == [r["id"] for r in by_body["reranked"]]


def test_the_page_requests_nothing_but_the_proxy(
    browser: Any, proxy_url: str, judged: tuple[str, str, Any]
) -> None:
    _, text, _ = judged
    open_page(browser, proxy_url)
    browser.find_element("id", "index").send_keys(SCIFACT_INDEX)
    browser.find_element("id", "query").send_keys(text)
    browser.find_element("id", "run").click()
    wait_for_results(browser)
    urls = requested_urls(browser)
    origin = proxy_url + "/"
    assert [u for u in urls if not u.startswith(origin)] == []
    paths = {urlsplit(u).path for u in urls}
    # The log did record the page's own requests: the check above saw real traffic.
    assert {
        f"{PREFIX}/",
        f"{PREFIX}/app.js",
        f"{PREFIX}/style.css",
        "/_cat/aliases",
        "/_cat/indices",
        API_PATH,
    } <= paths


def test_an_engine_error_is_shown_and_announced(
    browser: Any, proxy_url: str, artefacts: Path
) -> None:
    open_page(browser, proxy_url)
    browser.set_window_size(480, 900)  # the narrow layout: one column
    try:
        browser.find_element("id", "index").send_keys("no-such-index")
        browser.find_element("id", "query").send_keys("genomes")
        browser.find_element("id", "run").click()
        wait_for_results(browser)
        status = browser.find_element("id", "status")
        assert status.text.startswith("The comparison did not run. HTTP 404")
        assert "index_not_found_exception" in status.text
        assert status.get_attribute("role") == "status"
        screenshot(browser, artefacts / "compare-error-narrow.png")
    finally:
        browser.set_window_size(1400, 1000)
