"""The report pages in a real browser (issue 31, DESIGN §11): headless Chromium loads each page
from file:// and the tests check what a reader gets: no JavaScript error, no request but the
page itself, every merged-frontier prompt and the best dataset example in the rendered DOM,
hover details on every plotted point, a screenshot that is not blank, the index sorting and
linking, and a page of 8 runs x 300 iterations under 2 MB drawn in under 2 s.

Without Chromium these tests are skipped, naming the command that installs it; CI (.ci/run
sets FLUENTDREAM_BROWSER_TESTS=required) fails them instead.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fluentdream.report import read_page

import report_data

INSTALL = "apt-get install -y chromium chromium-driver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1600")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return f"Chromium and its driver are not installed: {INSTALL}"
    return None


class Browser:
    """One headless Chromium; open() loads a page and says what happened."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for flag in FLAGS + (f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))

    def open(self, path: Path) -> dict:
        """Load `path`; its script's errors, the console's errors, every URL requested, the
        milliseconds from navigation to the end of drawing, and the page's text."""
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        d.get("about:blank")
        d.get_log("performance"), d.get_log("browser")          # drop the start-up's entries
        d.get(Path(path).resolve().as_uri())
        WebDriverWait(d, 10).until(lambda d: d.execute_script(
            "return window.__fd && (window.__fd.rendered !== null || window.__fd.errors.length)"))
        state = d.execute_script("return window.__fd")
        messages = [json.loads(e["message"])["message"] for e in d.get_log("performance")]
        return dict(errors=state["errors"], rendered_ms=state["rendered"],
                    console=[e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"],
                    requests=[m["params"]["request"]["url"] for m in messages
                              if m["method"] == "Network.requestWillBeSent"],
                    text=" ".join(d.execute_script("return document.body.innerText").split()))

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if os.environ.get("FLUENTDREAM_BROWSER_TESTS") == "required":
            pytest.fail(why)
        pytest.skip(why)
    b = Browser()
    yield b
    b.driver.quit()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return report_data.built(tmp_path_factory)


def pages(site) -> list[Path]:
    return [site.index, *site.pages]


def words(text: str) -> str:
    return " ".join(text.split())


def test_every_page_draws_without_an_error_or_a_request(browser, small):
    for path in pages(small.site):
        seen = browser.open(path)
        assert seen["errors"] == [] and seen["console"] == [], path
        assert seen["requests"] == [path.resolve().as_uri()], path
        assert seen["rendered_ms"] is not None


def test_every_merged_prompt_and_the_best_dataset_example_are_on_the_page(browser, small):
    index = browser.open(small.site.index)["text"]
    for path in small.site.pages:
        data, text = read_page(path), browser.open(path)["text"]
        for point in data["frontier"]:
            assert words(point["text"]) in text, (path.name, point["text"])
        if data["dataset"]:
            best = max(data["dataset"]["examples"], key=lambda e: e["value"])
            assert words(best["text"]) in text and words(best["text"]) in index
        else:
            assert "No dataset examples" in text


HOVER_ALL = """
const out = [];
for (const el of document.querySelectorAll('.pt')) {
  el.dispatchEvent(new MouseEvent('mouseenter'));
  const tip = document.getElementById('tip');
  const title = el.querySelector('title');
  out.push([!tip.hidden && tip.textContent === el.dataset.detail && tip.textContent.length > 0,
            title ? title.textContent : null, el.dataset.detail]);
  el.dispatchEvent(new MouseEvent('mouseleave'));
}
return out;"""


def test_every_plotted_point_has_hover_details(browser, small):
    """Each point shows its prompt, activation and CE on hover (a tooltip and its SVG title);
    the points are the merged frontier's, each run's and the dataset examples'."""
    for path in small.site.pages:
        data = read_page(path)
        browser.open(path)
        shown = browser.run(HOVER_ALL)
        examples = (data["dataset"] or {}).get("examples", [])
        assert len(shown) == len(data["frontier"]) + sum(len(r["frontier"]) for r in data["runs"]) \
            + len(examples)
        assert all(ok and title == detail and "CE " in detail for ok, title, detail in shown)
        texts = "\n".join(detail for _, _, detail in shown)
        assert all(p["text"] in texts for p in data["frontier"])


def test_clicking_a_point_selects_its_row_and_the_y_axis_switches_to_post(browser, small):
    path = next(p for p in small.site.pages if read_page(p)["pre"])
    browser.open(path)
    browser.run("document.querySelector('.pt.merged').dispatchEvent(new MouseEvent('click'))")
    assert browser.run("return document.querySelector('tr.selected').id") == "f0"
    assert browser.run("return document.getElementById('detail').textContent") == \
        browser.run("return document.querySelector('.pt.merged').dataset.detail")
    browser.run("document.querySelector('input[value=post]').click();"
                "document.querySelector('input[value=seconds]').click()")
    assert browser.run("return window.__fd.errors") == []
    assert browser.run("return [...document.querySelectorAll('#frontier .axis')].pop().textContent") \
        == "post-activation"


def test_a_screenshot_is_not_blank(browser, small):
    from PIL import Image

    for path in (small.site.index, small.site.pages[0]):
        browser.open(path)
        png = browser.driver.get_screenshot_as_png()
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
        inked = float((pixels != 255).any(axis=1).mean())
        colours = len(np.unique(pixels, axis=0))
        assert inked > 0.03 and colours > 20, (path.name, inked, colours)


def test_the_index_sorts_by_a_column_and_links_to_each_page(browser, small):
    browser.open(small.site.index)
    first = "return document.querySelector('tbody tr td').textContent"
    by_name = browser.run(first)
    browser.run("[...document.querySelectorAll('th')].find(t => t.textContent === 'target').click()")
    assert browser.run(first) != by_name          # the same column again: descending
    href = browser.run("return document.querySelector('tbody a').href")
    browser.run("document.querySelector('tbody a').click()")
    assert browser.driver.current_url == href
    assert browser.run("return window.__fd.rendered !== null && window.__fd.errors.length === 0")


def test_a_page_of_8_runs_of_300_iterations_is_small_and_draws_fast(browser, tmp_path_factory):
    """Made-up runs (tests/report_data.large), reported with the model."""
    big = report_data.large(tmp_path_factory)
    path = big.site.pages[0]
    assert path.stat().st_size < 2_000_000
    seen = browser.open(path)
    assert seen["errors"] == [] and seen["console"] == [] and seen["requests"] == [path.as_uri()]
    assert seen["rendered_ms"] < 2000
    shown = browser.run(HOVER_ALL)
    assert len(shown) > 100 and all(ok for ok, _, _ in shown)
    print(f"large page: {path.stat().st_size / 1e6:.2f} MB, drawn {seen['rendered_ms']:.0f} ms "
          f"after navigation, {len(shown)} points")
