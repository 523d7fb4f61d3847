"""report.html opened from disk in headless Chromium (Debian's build): it renders, its plots load, no console errors.

Playwright drives the system browser (``executable_path``); its own browser download is never
used. A missing Chromium fails the test: the page is a deliverable, so an untested page is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from flywheel.demo.page import write_report
from flywheel.demo.schema import DemoReport

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container: no sandbox; and nothing in the background that could log an unrelated error.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make install` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.mark.parametrize(("fixture", "tables", "images"), [("report", 6, 5), ("report_without_phrases", 3, 4)])
def test_report_page_renders_in_chromium(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path,
                                         fixture: str, tables: int, images: int) -> None:
    report: DemoReport = request.getfixturevalue(fixture)
    _, page_path = write_report(report, tmp_path)
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda failed: problems.append(f"{failed.url}: {failed.failure}"))

    page.goto(page_path.as_uri(), wait_until="load")

    assert page.title().startswith("Flywheel demo: with filters")
    assert page.locator("h1").inner_text() == page.title()
    assert page.locator("table").count() == tables  # options, versions, rounds per run
    assert page.locator("table.versions tbody tr").count() == sum(
        len(run.versions) for run in (report, report.compare) if run is not None)
    loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(loaded) == images
    assert all(complete and width > 0 for _, complete, width in loaded), loaded
    assert problems == []
    page.close()
