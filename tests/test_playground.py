"""The playground at / in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against a real server on loopback, on the real SmolLM2 base and the shipped checkpoint.

``make setup`` installs Chromium where it is missing; without it these tests skip and say why.
``T2L_SCREENSHOT=docs/playground.png pytest tests/test_playground.py`` regenerates README's screenshot.
"""

import os
import shutil
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from server.settings import ServerSettings
from tests.conftest import CHECKPOINTS
from tests.server_harness import running_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no chromium/chromedriver on PATH: `make setup` installs Debian's chromium, chromium-driver",
    ),
]
DESCRIPTION = "Classify the sentiment of a movie review as positive or negative."


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    settings = ServerSettings(
        checkpoint=CHECKPOINTS / "t2l-smollm2-135m",
        redis_url=redis_url,
        state_dir=tmp_path_factory.mktemp("playground"),
    )
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 120, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_make_an_adapter_compare_answers_download_and_delete(server, browser, downloads):
    from selenium.webdriver.common.by import By

    find = browser.find_element
    browser.get(server.url + "/")
    assert wait_for(
        lambda: len(find(By.ID, "examples").find_elements(By.TAG_NAME, "option")) > 1, what="examples"
    )
    find(By.ID, "description").send_keys(DESCRIPTION)
    find(By.ID, "make-adapter").click()
    adapter_id = wait_for(lambda: find(By.ID, "adapter-id").text, what="the adapter id")
    assert adapter_id.startswith("t2l-") and find(By.ID, "adapter-trained").text == "trained"
    assert "new generation" in find(By.ID, "adapter-tier").text

    prompt = "Review: 'A tedious, overlong film with wooden acting.' Positive or negative?"
    find(By.ID, "prompt").send_keys(prompt)
    find(By.ID, "max-tokens").clear()
    find(By.ID, "max-tokens").send_keys("32")
    find(By.ID, "send").click()
    base = wait_for(lambda: find(By.ID, "answer-base").text, what="tokens in the base pane")
    adapted = wait_for(lambda: find(By.ID, "answer-adapter").text, what="tokens in the adapter pane")
    wait_for(lambda: find(By.ID, "send").is_enabled(), what="both streams to end")
    assert base and adapted and find(By.ID, "error").get_attribute("hidden") is not None
    if os.environ.get("T2L_SCREENSHOT"):
        browser.save_screenshot(os.environ["T2L_SCREENSHOT"])

    find(By.ID, "download-zip").click()
    archive = wait_for(lambda: next(downloads.glob(f"{adapter_id}.zip"), None), 30, "the zip download")
    names = zipfile.ZipFile(archive).namelist()
    assert f"{adapter_id}/adapter_config.json" in names and f"{adapter_id}/adapter_model.safetensors" in names

    row = f"//li[@data-id='{adapter_id}']"
    wait_for(lambda: browser.find_elements(By.XPATH, row), what="the adapter in the stored list")
    find(By.XPATH, row + "//button").click()
    wait_for(lambda: not browser.find_elements(By.XPATH, row), what="the adapter to leave the list")
    assert httpx.get(f"{server.url}/v1/adapters/{adapter_id}").status_code == 404


def test_an_empty_description_shows_the_apis_message(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    browser.find_element(By.ID, "make-adapter").click()
    error = wait_for(lambda: browser.find_element(By.ID, "error").text, 30, "the error message")
    assert error.startswith("422:") and "description is empty" in error


def test_the_page_fits_a_phone(server, browser):
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    try:
        browser.get(server.url + "/")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390  # nothing overflows sideways
        panes = browser.find_elements(By.CLASS_NAME, "pane")
        assert panes[0].location["y"] < panes[1].location["y"]  # the answers stack
    finally:
        browser.set_window_size(1200, 1400)
