"""The page at ``/`` in a real headless browser: Chromium from the distribution's packages, driven by Selenium
through the distribution's chromedriver (nothing is downloaded). Skips, saying why, without them.

Also a screenshot maker for docs/page.png: ``python tests/test_browser.py BUNDLE OUT.png [USER]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

HAVE_BROWSER = bool(BROWSER and DRIVER and HAVE_SELENIUM)
needs_browser = pytest.mark.skipif(
    not HAVE_BROWSER and not os.environ.get("CI"),  # CI installs the browser: a missing one fails there
    reason="browser test needs chromium + chromedriver (apt-get install -y chromium chromium-driver) and "
    f"selenium (pip install -e '.[dev]'); found chromium={BROWSER}, chromedriver={DRIVER}, "
    f"selenium={HAVE_SELENIUM}",
)
WAIT_S = 20


@contextlib.contextmanager
def serve(bundle: str | Path, **settings) -> Iterator[str]:
    """A real uvicorn on a free loopback port (in a thread); yields its base URL."""
    import uvicorn

    from serving.app import create_app
    from serving.settings import Settings
    from twotower.benchmarks.servers import free_port

    with tempfile.TemporaryDirectory() as state:
        app = create_app(Settings(bundle=str(bundle), state_dir=state, **settings))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join()


@contextlib.contextmanager
def chromium() -> Iterator:
    """Headless Chromium with its console log readable (``get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


class Page:
    """The page as a test reads it: the list through its ``data-item-id`` elements."""

    def __init__(self, driver, base: str) -> None:
        self.driver, self.base = driver, base
        self.answers = 0

    def open(self, path: str = "/") -> None:
        self.driver.get(self.base + path)
        self.wait(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")

    def wait(self, condition, what: str = "the page") -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, WAIT_S, poll_frequency=0.05).until(
            condition, f"{what}; status: {self.text('status')!r}"
        )

    def next_answer(self) -> None:
        """Wait for the list's next answer and the history under it."""
        self.answers += 1
        want = str(self.answers)

        def done(d) -> bool:
            return (
                d.find_element("id", "recs").get_attribute("data-answer") == want
                and d.find_element("tag name", "body").get_attribute("data-busy") is None
            )

        self.wait(done, f"answer {want}")

    def text(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).text

    def items(self) -> list[tuple[str, list[str]]]:
        """(item id, categories) of every recommended item, in order."""
        rows = self.driver.find_elements("css selector", "#recs [data-item-id]")
        return [
            (r.get_attribute("data-item-id"), json.loads(r.get_attribute("data-categories"))) for r in rows
        ]

    def item(self, item_id: str):
        return self.driver.find_element("css selector", f'#recs [data-item-id="{item_id}"]')

    def history(self) -> list[str]:
        return [e.get_attribute("data-history-id") for e in self.driver.find_elements("css selector", "#history li")
                if e.get_attribute("data-history-id")]  # fmt: skip

    def pick_user(self, user: str) -> None:
        box = self.driver.find_element("id", "user-id")
        box.clear()
        box.send_keys(user)
        self.driver.find_element("id", "load").click()
        self.next_answer()

    def add_by_search(self, title: str, item_id: str) -> None:
        box = self.driver.find_element("id", "search")
        box.clear()
        box.send_keys(title)
        self.driver.find_element("css selector", "#search-form button").click()
        selector = f'#search-results [data-search-id="{item_id}"] button'
        self.wait(lambda d: d.find_elements("css selector", selector), f"search result {item_id}")
        self.driver.find_element("css selector", selector).click()
        self.next_answer()

    def errors(self) -> list[dict]:
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


def share(items: list[tuple[str, list[str]]], category: str) -> float:
    return sum(category in cats for _, cats in items) / len(items)


@pytest.fixture(scope="module")
def bundle(run_and_bundle) -> Path:
    return run_and_bundle[1]


@pytest.fixture(scope="module")
def browser():
    if not HAVE_BROWSER:
        pytest.fail(
            f"CI=true and no browser: chromium={BROWSER}, chromedriver={DRIVER}, selenium={HAVE_SELENIUM}"
        )
    with chromium() as driver:
        yield driver


@needs_browser
def test_page_shows_personalization_working(bundle, browser):
    import pandas as pd

    catalog = pd.read_parquet(bundle / "items.parquet")
    user = str(pd.read_parquet(bundle / "histories.parquet")["user_id"].iloc[0])
    with serve(bundle) as base:
        page = Page(browser, base)
        page.open("/")
        assert "twotower" in browser.title and page.items() == []
        page.pick_user(user)
        before = page.items()
        assert len(before) == 10 and page.text("source") == "model"
        assert "ms" in page.text("latency") and page.text("model") != "-"
        assert browser.find_elements("css selector", "#recs .because"), "explanations are shown"
        assert f"user={user}" in browser.current_url  # the link to share

        # three items of the genre least present in the list (from the list when it shows one, else by search)
        counts = {c: sum(c in cats for _, cats in before) for _, cats in before for c in cats}
        genre = min(sorted(counts), key=counts.get)
        clicked: list[str] = []
        for _ in range(3):
            shown = [i for i, cats in page.items() if genre in cats]
            if shown:
                page.item(shown[0]).click()
                page.next_answer()
                clicked.append(shown[0])
            else:
                row = next(
                    r for r in catalog.itertuples() if genre in r.categories and r.item_id not in clicked
                )
                page.add_by_search(row.title, row.item_id)
                clicked.append(row.item_id)
        after = page.items()
        assert len(after) == 10
        assert share(after, genre) > share(before, genre), (genre, before, after)
        assert browser.find_elements("css selector", "#recs li.new"), "new items are marked"
        assert page.history()[:3] == clicked[::-1], "the stored history shows the clicks, newest first"
        assert genre in page.text("intent")

        # a shared link opens the same user's list directly
        page.open(f"/?user={user}")
        page.answers = 0
        page.next_answer()
        assert [i for i, _ in page.items()] == [i for i, _ in after]

        browser.find_element("id", "forget").click()
        page.next_answer()
        assert page.text("source") == "popularity" and len(page.items()) == 10
        assert page.history() == []
        popular = catalog.sort_values("train_count", ascending=False, kind="stable")["item_id"].head(10)
        assert [i for i, _ in page.items()] == popular.tolist()
        assert page.errors() == []


@needs_browser
def test_the_token_is_asked_for_and_kept_in_memory(bundle, browser):
    import pandas as pd

    user = str(pd.read_parquet(bundle / "histories.parquet")["user_id"].iloc[1])
    with serve(bundle, api_token="s3cret-token") as base:
        page = Page(browser, base)
        page.open("/")
        browser.find_element("id", "token").send_keys("s3cret-token")
        page.pick_user(user)
        first = page.items()[0][0]
        page.item(first).click()
        page.next_answer()
        assert page.history()[0] == first
        stored = browser.execute_script(
            "return [localStorage.length, sessionStorage.length, document.cookie, location.href]"
        )
        assert stored[:3] == [0, 0, ""] and "s3cret" not in stored[3]
        assert page.errors() == []
        browser.refresh()  # memory only: a reload forgets the token
        assert browser.find_element("id", "token").get_attribute("value") == ""


def test_the_page_and_its_item_endpoints_without_a_browser(bundle, tmp_path):
    """What the page loads comes from this server only; the item lookup and search it uses are open."""
    import re

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    settings = Settings(bundle=str(bundle), state_dir=str(tmp_path), api_token="t")
    with TestClient(create_app(settings)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets  # no CDN
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
        rec = client.app.state.live.recommender
        first = rec.item_ids[0]
        info = client.get(f"/items/{first}").json()  # no token: open
        assert info["item_id"] == first and info["categories"] and info["title"]
        assert client.get("/items/no-such-item").status_code == 404
        found = client.get("/items", params={"q": info["title"].upper(), "limit": 3}).json()["items"]
        assert first in [x["item_id"] for x in found] and len(found) <= 3
        counts = [
            x["popularity"] for x in client.get("/items", params={"q": "item", "limit": 50}).json()["items"]
        ]
        assert counts == sorted(counts, reverse=True) and len(counts) > 3  # most popular first
        for bad in ({"q": ""}, {"q": "x", "limit": 0}, {"q": "x" * 201}, {"q": "x", "limit": 51}, {}):
            response = client.get("/items", params=bad)
            assert response.status_code == 422, bad
        assert client.delete(f"/items/{first}", headers={"Authorization": "Bearer t"}).status_code == 200
        assert first not in [
            x["item_id"] for x in client.get("/items", params={"q": info["title"]}).json()["items"]
        ]
        assert client.get(f"/items/{first}").status_code == 404  # deleted: gone (the page shows the id)
        for path, methods in (("/items", "GET, POST"), (f"/items/{first}", "GET, DELETE")):
            response = client.put(path)  # the 405 lists the methods of both routers holding the path
            assert response.status_code == 405 and response.headers["allow"] == methods, path


def screenshot(bundle: str, out: str, user: str | None = None, clicks: int = 3) -> None:
    """docs/page.png: ``user``'s list (default: the bundle's first) after ``clicks`` clicks on its top items."""
    import pandas as pd

    user = user or str(pd.read_parquet(Path(bundle) / "histories.parquet")["user_id"].iloc[0])
    with serve(bundle) as base, chromium() as driver:
        driver.set_window_size(1280, 1100)
        page = Page(driver, base)
        page.open("/")
        page.pick_user(user)
        for _ in range(clicks):
            page.item(page.items()[0][0]).click()
            page.next_answer()
        title = page.driver.find_element("css selector", "#recs .title").text
        page.driver.find_element("id", "search").send_keys(title.split(" ")[0])
        page.driver.find_element("css selector", "#search-form button").click()
        page.wait(lambda d: d.find_elements("css selector", "#search-results li"), "search results")
        driver.save_screenshot(out)


if __name__ == "__main__":
    screenshot(*sys.argv[1:])
