"""Helpers of the browser tests: where Chromium is, how it starts, signing in, screenshots."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Into the ignored .cache/ by default, so that a test run leaves the checkout as it was
# (pixels differ from run to run); `make screenshots` points SIGHTLINE_SCREENSHOT_DIR at
# docs/screenshots to refresh the copies the README shows.
SCREENSHOTS = Path(
    os.environ.get(
        "SIGHTLINE_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / ".cache" / "screenshots"
    )
)
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}


def sign_in(page: Page, key: str) -> None:
    """Sign in through the form (from wherever the console sent the browser)."""
    from playwright.sync_api import expect

    if "/console/sign-in" not in page.url:
        page.goto("/console/sign-in")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    expect(page).not_to_have_url(re.compile("/console/sign-in"))


def screenshot(page: Page, name: str) -> None:
    """Save the whole page as ``<SCREENSHOTS>/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, animations="disabled")
