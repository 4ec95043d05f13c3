"""Headless Chromium for the browser tests: Debian's `chromium` driven through playwright's Python API.

A missing or unlaunchable browser FAILS the test with what to do: `make test` installs it (target
`browser`); it is never skipped silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM_ENV = "BM_RAY_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install Chromium (`make browser` runs `apt-get install -y chromium`; without apt, install any "
    f"Chromium or Chrome and set {CHROMIUM_ENV}=/path/to/it)"
)


def chromium_path() -> str:
    """The Chromium executable: $BM_RAY_CHROMIUM, else the first known name on PATH; fails the test if none."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"{CHROMIUM_ENV}={configured} is not an executable; {INSTALL_HINT}")
        return configured
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium found on PATH (tried {', '.join(CANDIDATES)}); {INSTALL_HINT}")


@contextmanager
def browser_page(width: int = 1200, height: int = 900) -> Iterator[Any]:
    """A fresh page in headless Chromium (as root it needs --no-sandbox); console errors are collected
    in `page.console_errors`."""
    from playwright.sync_api import Error, sync_playwright

    executable = chromium_path()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=args, timeout=60_000)
        except Error as err:
            pytest.fail(f"Chromium at {executable} could not be launched: {err}; {INSTALL_HINT}")
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.console_errors = []
            page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
            yield page
        finally:
            browser.close()
