"""A real browser for the UI tests: Debian's Chromium (/usr/bin/chromium) driven by Playwright.

In CI (CI=true) a missing Chromium fails the tests; on a laptop they skip saying why. .ci/run
installs it (`apt-get install chromium`); Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

CHROMIUM = os.environ.get("CAVIAR_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("CAVIAR_SCREENSHOTS")  # a directory: the tests save each page there (docs/ui)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    require(Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None,
            f"the UI tests need Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context (no token in localStorage) whose page fails the test on a script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.set_default_timeout(30_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield p
    finally:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=False)
