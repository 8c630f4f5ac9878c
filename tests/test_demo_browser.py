"""The demo page driven in headless Chromium: a real clip through both decoders, and bad files.

The server runs as its own process (``python -m demo.app``) on a free local port, with the offline
``base`` preset; Playwright drives the system's Debian ``chromium`` (no browser is downloaded).
Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import wave
from pathlib import Path
from urllib.parse import urljoin

import pytest
import srt

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLIP = Path("/usr/share/pocketsphinx/test/data/librivox") / "sense_and_sensibility_01_austen_64kb-0870.wav"
MAX_AUDIO_SECONDS = 12  # the server's limit in these tests: the clip passes, the long file does not
SERVER_START_SECONDS = 300  # loading base and tiny.en on a busy 2-core machine
DECODE_SECONDS = 300  # both decodes of a 7 s clip on a busy 2-core machine


# ---- the page in a browser ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode("utf-8")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def demo_url():
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = ARTIFACTS / "demo-server.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "demo.app", "--host", "127.0.0.1", "--port", str(port), "--threads", "2",
             "--max-audio-seconds", str(MAX_AUDIO_SECONDS)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not _answers(url):
            if server.poll() is not None:
                pytest.fail(f"the demo server exited with status {server.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo server did not answer within {SERVER_START_SECONDS} s")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_url)
    page.wait_for_selector("#transcribe")
    yield page
    page.close()


def _transcribe(page, path: Path) -> None:
    clear = page.locator("#audio-input button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.locator("#audio-input input[type=file]").set_input_files(str(path))
    page.click("#transcribe")


def _wait_for_verdict(page) -> str:
    page.wait_for_function(
        "() => /Identical|Different/.test(document.querySelector('#verdict')?.innerText ?? '')"
        " || (document.querySelector('#status')?.innerText ?? '').includes('⚠')",
        timeout=DECODE_SECONDS * 1000)
    return page.locator("#verdict").inner_text()


def _wait_for_warning(page, file_name: str) -> str:
    """The status line once it shows a warning about ``file_name`` (progress timers come and go meanwhile)."""
    page.wait_for_function(
        "name => { const text = document.querySelector('#status')?.innerText ?? '';"
        " return text.includes('⚠') && text.includes(name); }",
        arg=file_name, timeout=60_000)
    return page.locator("#status").inner_text()


@pytest.mark.browser
def test_real_clip_gives_identical_transcripts_side_by_side(page):
    _transcribe(page, CLIP)
    verdict = _wait_for_verdict(page)
    status = page.locator("#status").inner_text()
    page.screenshot(path=str(ARTIFACTS / "demo-transcribe.png"), full_page=True)

    assert "⚠" not in status, status
    speculative = page.locator("#spec-text textarea").input_value()
    baseline = page.locator("#base-text textarea").input_value()
    assert "dashwood" in speculative.lower() and "prudently" in speculative.lower(), speculative
    assert speculative == baseline
    assert "✓ Identical" in verdict and "speed-up" in verdict, verdict
    for column in ("#spec-timing", "#base-timing"):
        timing = page.locator(column).inner_text()
        assert "Wall time" in timing and "real-time factor" in timing, timing
    assert "Acceptance" in page.locator("#acceptance").inner_text()
    # every token of the transcript is coloured by where it came from, and the draft contributed some
    token_text = page.locator("#tokens").inner_text()
    assert "accepted draft token" in token_text and "target's own token" in token_text
    assert page.locator("#histogram img, #histogram canvas, #histogram svg").count() >= 1
    segments = page.locator("#segments").inner_text()
    assert "00:00.00" in segments and "Dashwood" in segments, segments
    links = {Path(urllib.parse.urlparse(a.get_attribute("href")).path).suffix: a.get_attribute("href")
             for a in page.locator("#downloads a[href]").all()}
    assert set(links) >= {".srt", ".vtt", ".json"}, links
    subtitles = list(srt.parse(_fetch(urljoin(page.url, links[".srt"]))))
    assert subtitles and "Dashwood" in " ".join(cue.content for cue in subtitles)


@pytest.mark.browser
def test_text_tab_streams_both_answers_and_compares_them(page):
    page.get_by_role("tab", name="Text").click()
    page.fill("#prompt textarea", "List three primary colours, comma separated.")
    page.locator("#max-new-tokens input[type=number]").fill("16")
    page.locator("#max-new-tokens input[type=number]").press("Enter")
    page.click("#generate")
    page.wait_for_function(
        "() => /Identical|Different/.test(document.querySelector('#text-verdict')?.innerText ?? '')"
        " || (document.querySelector('#text-status')?.innerText ?? '').includes('⚠')",
        timeout=DECODE_SECONDS * 1000)
    page.screenshot(path=str(ARTIFACTS / "demo-text.png"), full_page=True)
    assert "⚠" not in page.locator("#text-status").inner_text()
    speculative = page.locator("#text-spec textarea").input_value()
    assert speculative and speculative == page.locator("#text-base textarea").input_value()
    assert "✓ Identical" in page.locator("#text-verdict").inner_text()
    assert "tokens/s" in page.locator("#text-spec-timing").inner_text()
    assert "Acceptance" in page.locator("#text-acceptance").inner_text()


@pytest.mark.browser
def test_bad_files_get_a_message_and_the_server_keeps_serving(page, demo_url, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are meeting notes, not a recording\n" * 20)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    too_long = tmp_path / "long-silence.wav"
    with wave.open(str(too_long), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 16000 * (MAX_AUDIO_SECONDS + 3))

    _transcribe(page, not_audio)
    message = _wait_for_warning(page, not_audio.name)
    page.screenshot(path=str(ARTIFACTS / "demo-bad-file.png"), full_page=True)
    assert "notes.wav" in message and "could not be read as audio" in message, message

    _transcribe(page, empty)
    message = _wait_for_warning(page, empty.name)
    assert "empty.wav" in message and "empty" in message.split("empty.wav", 1)[1], message

    _transcribe(page, too_long)
    message = _wait_for_warning(page, too_long.name)
    assert "long-silence.wav" in message and f"at most {MAX_AUDIO_SECONDS} s" in message, message

    assert _answers(demo_url)
