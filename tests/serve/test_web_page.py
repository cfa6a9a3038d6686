"""sa-serve's web page at / in a real headless browser (Debian's Chromium) against a real server on
127.0.0.1 with the tiny model: a prompt typed and Generate pressed gives a player and a download
link whose WAV is the Python API's for the same fields, as long as asked; the job's status shows
while it runs; the last five results are kept; API refusals appear as readable messages; a server
with an API key serves the page without it, and the page works once the key is typed in. The API's
docs at /docs render from this server alone.

Selenium rather than Playwright: Debian's chromium-driver is built from the same source as its
chromium, so driver and browser always match and nothing is downloaded, while Playwright is
made for browser builds of its own (downloaded by `playwright install`, which cannot run
offline) and drives other Chromium versions only as far as their protocol happens to agree."""

import base64
import struct
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from serving import serving

from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.serve.background import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "page-test-key-not-a-secret"
WAIT_S = 60  # the longest wait for anything on the page (a generation on a busy CPU)
# The player's audio read back inside the page, as base64 (arguments: the src, then the callback).
READ_BACK = """
const [src, done] = arguments;
fetch(src).then((response) => response.blob()).then((blob) => {
  const reader = new FileReader();
  reader.onload = () => done(reader.result.split(",")[1]);
  reader.readAsDataURL(blob);
}, (error) => done("failed: " + error));
"""


@pytest.fixture(scope="module")
def browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: `bash scripts/test` installs Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # No sandbox: Chromium refuses its sandbox as root, which CI is; /dev/shm is small in containers.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1000"):
        options.add_argument(argument)
    # Offline, as many servers are: no host but the test server's resolves (a CDN cannot help).
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path given: Selenium Manager (which would look for a driver online) is skipped.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(pipe):
    with serving(pipe) as running:
        yield running


@pytest.fixture(scope="module")
def keyed(pipe):
    with serving(pipe, api_key=API_KEY) as running:
        yield running


def _open(browser: WebDriver, server: BackgroundServer) -> str:
    """The page, once its script has asked the server for the model; the model line's text."""
    browser.get(f"{server.url}/")
    model = browser.find_element(By.ID, "model")
    WebDriverWait(browser, WAIT_S).until(lambda _: "asking" not in model.text)
    return model.text


def _fill(browser: WebDriver, **fields: object) -> None:
    for name, value in fields.items():
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))


def _text_shows(browser: WebDriver, element_id: str, *parts: str) -> str:
    """Waits until the element shows every part; its text."""
    element = browser.find_element(By.ID, element_id)
    WebDriverWait(browser, WAIT_S).until(
        lambda _: element.is_displayed() and all(part in element.text for part in parts),
        f"#{element_id} never showed {parts}",
    )
    return element.text


def _results(browser: WebDriver, count: int) -> list:
    WebDriverWait(browser, WAIT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == count,
        f"the page never listed {count} results",
    )
    return browser.find_elements(By.CSS_SELECTOR, "#results li")


def _rate_and_frames(wav: bytes) -> tuple[int, int]:
    """The sample rate and frame count from a WAV's RIFF chunks."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE", wav[:16]
    offset, rate, block = 12, None, None
    while offset + 8 <= len(wav):
        chunk, size = wav[offset : offset + 4], struct.unpack_from("<I", wav, offset + 4)[0]
        if chunk == b"fmt ":
            _, _, rate, _, block = struct.unpack_from("<HHIIH", wav, offset + 8)
        elif chunk == b"data":
            return rate, size // block
        offset += 8 + size + size % 2
    raise AssertionError("the WAV has no data chunk")


def test_generate_plays_and_offers_the_apis_wav(browser, server, pipe):
    browser.get_log("browser")  # earlier messages dropped: this test's own are checked below
    model = _open(browser, server)
    assert f"tiny-random: {pipe.config.sample_rate} Hz, clips up to 2.97 s" in model
    prompt, seconds, steps, seed, cfg = "rain on a tin roof", 1.5, 2, 1234, 5.5
    _fill(browser, prompt=prompt, negative="wind", seconds=seconds, steps=steps, seed=seed, cfg=cfg)
    # The model held busy, so the running job's status is on the page long enough to be seen.
    with server.app.state.generator.lock:
        browser.find_element(By.ID, "generate").click()
        _text_shows(browser, "status", "running", f"step 0 of {steps}")
        assert not browser.find_element(By.ID, "generate").is_enabled()  # one generation at a time
    (result,) = _results(browser, 1)
    assert not browser.find_element(By.ID, "progress").is_displayed()
    player = result.find_element(By.TAG_NAME, "audio")
    source = player.get_attribute("src")
    assert source.startswith("blob:")
    wav = base64.b64decode(browser.execute_async_script(READ_BACK, source))
    rate, frames = _rate_and_frames(wav)
    assert rate == pipe.config.sample_rate and frames == round(seconds * rate)
    alone = pipe.generate(
        prompt, negative_prompt="wind", seconds_total=seconds, steps=steps, seed=seed, cfg_scale=cfg
    )
    assert wav == audio_bytes(alone.audio[0], alone.sample_rate, "WAV")  # every field reached the API
    link = result.find_element(By.LINK_TEXT, "Download WAV")
    assert link.get_attribute("href") == source
    assert link.get_attribute("download") == "rain-on-a-tin-roof-1234.wav"
    WebDriverWait(browser, WAIT_S).until(lambda _: "1.50 s" in result.text)  # the player's duration
    assert "seed 1234" in result.text and "CFG 5.5" in result.text
    # Nothing refused by the page's security policy (it would name anything fetched from elsewhere)
    # and no script error.
    assert [m for m in browser.get_log("browser") if m["level"] == "SEVERE"] == []


def test_the_last_five_results_are_kept_newest_first(browser, server):
    _open(browser, server)
    for seed in range(6):
        _fill(browser, prompt=f"clip {seed}", seconds=0.5, steps=2, seed=seed)
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, WAIT_S).until(
            lambda d, s=seed: d.find_element(By.CSS_SELECTOR, "#results li .prompt").text == f"clip {s}"
        )
    newest_first = [item.find_element(By.CLASS_NAME, "prompt").text for item in _results(browser, 5)]
    assert newest_first == [f"clip {s}" for s in range(5, 0, -1)]


def test_a_requests_warnings_are_shown_with_its_result(browser, server):
    _open(browser, server)
    _fill(browser, prompt="rain", negative="wind", seconds=0.5, steps=2, cfg=1)
    browser.find_element(By.ID, "generate").click()
    (result,) = _results(browser, 1)
    (warning,) = result.find_elements(By.CLASS_NAME, "warning")
    assert warning.text == (
        "Warning: the negative prompt has no effect at a CFG scale of 1 (no unconditional pass runs); "
        "give a CFG scale above 1 to use it"
    )
    browser.find_element(By.ID, "negative").clear()
    browser.find_element(By.ID, "generate").click()
    newest = _results(browser, 2)[0]
    assert newest.find_elements(By.CLASS_NAME, "warning") == []


def test_refusals_are_shown_readably(browser, server):
    _open(browser, server)
    _fill(browser, prompt="rain", seconds=60, steps=2)
    browser.find_element(By.ID, "generate").click()
    _text_shows(browser, "error", "Error 422: audio_length must be in (0, 2.97]")
    _fill(browser, seconds=0.5, steps=0)
    browser.find_element(By.ID, "generate").click()
    _text_shows(browser, "error", "Error 422: steps: Input should be greater than or equal to 1")
    browser.find_element(By.ID, "prompt").clear()
    _fill(browser, steps=2, seed="abc")
    browser.find_element(By.ID, "generate").click()
    error = _text_shows(browser, "error", "prompt: String should have at least 1 character")
    assert "seed: Input should be a valid integer" in error  # both fields named, one line each
    assert browser.find_elements(By.CSS_SELECTOR, "#results li") == []


def test_a_keyed_server_serves_the_page_and_takes_the_key(browser, keyed):
    page = httpx.get(f"{keyed.url}/")  # no key: the page holds no secret
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    model = _open(browser, keyed)
    assert "Error 401" in model and "API key" in model
    _fill(browser, prompt="rain", seconds=0.5, steps=2)
    browser.find_element(By.ID, "generate").click()
    _text_shows(browser, "error", "Error 401", "Enter the server's API key")
    _fill(browser, key=API_KEY)
    browser.find_element(By.ID, "prompt").click()  # the key field's change: the model line reloads
    _text_shows(browser, "model", "44100 Hz")
    assert not browser.find_element(By.ID, "error").is_displayed()  # the key refusal is gone
    browser.find_element(By.ID, "generate").click()
    _results(browser, 1)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert API_KEY not in browser.current_url


def test_the_api_docs_render_with_no_host_but_the_server(browser, server):
    browser.get(f"{server.url}/docs")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"),
        "Swagger UI never listed the endpoints (its scripts not served?)",
    )
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/audio/generate", "/v1/audio/jobs/{job_id}/content"} <= paths
    assert httpx.get(f"{server.url}/redoc").status_code == 404  # its bundle fetches a logo online
