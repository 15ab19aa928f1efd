"""Real headless Chromium (Debian's ``chromium`` package) driven by Playwright.

Browsers cannot be downloaded here, so Playwright drives the system binary; the tests
skip with a reason where it (or Playwright) is missing. ``make test`` installs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP
from tests.stack import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session, with a fresh temporary profile (Playwright
    gives every ``launch`` its own user-data-dir and deletes it afterwards)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (make test does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, pg_stack: Stack) -> Iterator[Page]:
    """A page in its own browser context (own cookies) on the PostgreSQL stack's API. Any
    JavaScript error on a page fails the test."""
    context = browser.new_context(base_url=pg_stack.url, viewport=DESKTOP)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"JavaScript errors: {errors}"
