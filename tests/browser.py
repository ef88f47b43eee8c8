"""A headless Chromium for the browser tests: find it, start a session, wait, take screenshots.

Uses Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)
through Selenium, with explicit paths so Selenium never tries to download a browser. Override
the paths with ZF_CHROMIUM / ZF_CHROMEDRIVER. Screenshots go to ZF_ARTIFACTS (default
``tests/artifacts/``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

ARTIFACTS = Path(os.environ.get("ZF_ARTIFACTS", Path(__file__).parent / "artifacts"))

# No GPU, no sandbox (root in a container), and nothing that phones home: the tests stay on loopback.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _which(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    return next((path for name in names if (path := shutil.which(name))), None)


def require_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips the test with the install command when one is missing."""
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("browser test: selenium is not installed (pip install selenium)")
    chromium = _which("ZF_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver = _which("ZF_CHROMEDRIVER", "chromedriver")
    if chromium is None or driver is None:
        pytest.skip("browser test: chromium / chromedriver not found (apt-get install chromium chromium-driver)")
    return chromium, driver


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000, timeout: float = 30.0) -> Iterator[Any]:
    """A Selenium WebDriver on a headless Chromium with a fresh profile; quits and cleans up on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = require_browser()
    profile = tempfile.mkdtemp(prefix="zf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(timeout)
    driver.set_script_timeout(timeout)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(condition: Callable[[], T], what: str, timeout: float, interval: float = 0.25, driver: Any = None) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds.

    Exceptions raised by ``condition`` count as "not yet" (e.g. an element not rendered yet). With a
    ``driver``, a timeout saves a screenshot ``timeout_<n>.png`` and reports the page's URL and text.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - anything the page throws while loading means "not yet"
            last = e
        time.sleep(interval)
    message = f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last!r})" if last else "")
    if driver is not None:
        shot = screenshot(driver, f"timeout_{len(list(ARTIFACTS.glob('timeout_*.png')))}")
        text = driver.execute_script("return document.body ? document.body.innerText : ''")[:2000]
        message += f"\nat {driver.current_url}, screenshot {shot}; page text:\n{text}"
    pytest.fail(message)


def loaded_images(driver: Any, css: str) -> list[dict]:
    """``src``, ``naturalWidth`` and ``complete`` of the <img> elements matching ``css``, scrolled into view
    first so that lazy images load."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(function(i){"
        "i.scrollIntoView();return {src:i.getAttribute('src'),width:i.naturalWidth,complete:i.complete};});",
        css,
    )


def screenshot(driver: Any, name: str) -> Path:
    """Save a PNG of the current viewport as ``<ZF_ARTIFACTS>/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        pytest.fail(f"could not save the screenshot {path}")
    return path
