"""A headless Chromium for tests that check pages in a real browser (the compare report, the
preference study, the web demo). Debian's ``chromium`` and ``chromium-driver`` packages provide it
(``.ci/run`` installs them); elsewhere these tests skip, saying what to install."""

from __future__ import annotations

import shutil

import pytest


def chromium_driver(download_dir: str | None = None):
    """A Selenium WebDriver for headless Chromium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        options.add_argument(flag)
    if download_dir:
        options.add_experimental_option("prefs", {"download.default_directory": download_dir, "download.prompt_for_download": False})
    service = webdriver.ChromeService(executable_path=driver_path)
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium (downloads go to tmp_path / "downloads"), closed after the test."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium_driver(str(downloads))
    driver.download_dir = downloads
    try:
        yield driver
    finally:
        driver.quit()
