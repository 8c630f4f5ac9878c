"""`whisper-spec serve` driven live on 127.0.0.1 with the real `openai` client and raw multipart (httpx), on
real speech: every response format, concurrent requests of different lengths (short and long-form, in two
decoding modes) each identical to its solo transcription, bad input answered 4xx while the server goes on,
a client that disconnects, and SIGTERM finishing the request in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import srt
import torch
import uvicorn
import webvtt
from conftest import ALLISON, LIBRIVOX
from openai import BadRequestError, OpenAI

from whisper_spec.audio import SAMPLE_RATE, load_audio
from whisper_spec.model import WhisperModel
from whisper_spec.server.app import ServerOptions, create_app
from whisper_spec.transcription import TranscribeOptions

SHORT = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav", ALLISON / "vm-review.wav",
         ALLISON / "conf-onlyperson.wav"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"no server at {url}")


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    """About 40 s of real speech: every LibriVox clip and two of Allison's prompts, half a second apart."""
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    clips = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    clips += [load_audio(ALLISON / "vm-review.wav"), load_audio(ALLISON / "vm-intro.wav")]
    path = tmp_path_factory.mktemp("server") / "long.wav"
    soundfile.write(path, np.concatenate([piece for clip in clips for piece in (clip, gap)]), SAMPLE_RATE)
    return path


@pytest.fixture(scope="module")
def model() -> WhisperModel:
    torch.set_num_threads(2)
    return WhisperModel()  # the offline base target and its shipped distilled draft


@pytest.fixture(scope="module")
def server(model):
    port = _free_port()
    app = create_app(model, ServerOptions(max_batch=4, max_upload_mb=2))
    live = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url)
    yield url
    live.should_exit = True
    thread.join(60)


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=600)


def _alone(model: WhisperModel, path: Path, **options):
    samples = load_audio(path)
    timestamps = options.pop("timestamps", samples.size / SAMPLE_RATE > 30)
    return model.transcribe(samples, TranscribeOptions(timestamps=timestamps, **options))


def test_every_response_format_through_the_openai_client(client, model):
    path = SHORT[0]
    alone = _alone(model, path, language="en")
    timed = _alone(model, path, language="en", timestamps=True, word_timestamps=True)
    with path.open("rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, language="en")
    assert plain.text == alone.text and "Dashwood" in plain.text
    with path.open("rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", response_format="text")
    assert text.strip() == alone.text
    with path.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"], language="en")
    assert verbose.language == "english" and abs(verbose.duration - timed.audio_seconds) < 0.01
    assert [s.text for s in verbose.segments] == [s.text for s in timed.segments]
    assert [t for s in verbose.segments for t in s.tokens] == list(timed.tokens)
    assert [w.word for w in verbose.words] == [w.word.strip() for s in timed.segments for w in s.words]
    with path.open("rb") as f:
        subtitles = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", response_format="srt")
    cues = list(srt.parse(subtitles))
    assert " ".join(c.content for c in cues) == " ".join(s.text.strip() for s in timed.segments)
    with path.open("rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", response_format="vtt")
    assert [c.text for c in webvtt.from_string(vtt)] == [s.text.strip() for s in timed.segments]
    with path.open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, language="en", stream=True))
    assert [e.type for e in events][-1] == "transcript.text.done" and events[-1].text == alone.text
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta").strip() == alone.text
    with path.open("rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # this client version marks translations deprecated
        translated = client.audio.translations.create(model="whisper-1", file=f)  # English into English
    assert translated.text == _alone(model, path, task="translate").text
    assert [m.id for m in client.models.list().data] == ["whisper-1"]


def test_concurrent_requests_of_different_lengths_each_equal_their_solo_transcription(client, model, long_file):
    """Short and long-form, json (no timestamps for short audio) and verbose_json (timestamps): two decoding
    modes and windows of different lengths sharing the decoding loop, all at once."""
    jobs = [(path, fmt) for path in [*SHORT, long_file] for fmt in ("json", "verbose_json")]

    def call(job):
        path, fmt = job
        with path.open("rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f, language="en", response_format=fmt)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(call, jobs))
    for (path, fmt), answer in zip(jobs, answers):
        if fmt == "json":
            assert answer.text == _alone(model, path, language="en").text, path.name
        else:
            alone = _alone(model, path, language="en", timestamps=True)
            assert [t for s in answer.segments for t in s.tokens] == list(alone.tokens), path.name
    assert answers[-1].duration > 30 and len(answers[-1].segments) >= 3


@pytest.mark.parametrize("name,content,form,status", [
    ("notes.wav", b"this is not audio at all", {}, 400),
    ("empty.wav", b"", {}, 400),
    ("cut.wav", None, {}, 400),  # a wav cut inside its header
    ("big.wav", b"\0" * (4 * 1024 * 1024), {}, 413),
    ("clip.wav", "real", {"response_format": "docx"}, 400),
    ("clip.wav", "real", {"language": "klingon"}, 400),
    ("clip.wav", "real", {"timestamp_granularities[]": "word"}, 400),  # needs verbose_json
    ("clip.wav", "real", {"temperature": "7"}, 400),
    ("clip.wav", "real", {"temperature": "warm"}, 400),
])
def test_bad_requests_get_a_4xx_error_object_and_the_server_goes_on(server, name, content, form, status):
    real = SHORT[2].read_bytes()
    content = real if content == "real" else real[:30] if content is None else content
    response = httpx.post(f"{server}/v1/audio/transcriptions", files={"file": (name, content)},
                          data={"model": "whisper-1", **form}, timeout=120)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    good = httpx.post(f"{server}/v1/audio/transcriptions", files={"file": ("clip.wav", real)},
                      data={"model": "whisper-1", "language": "en"}, timeout=120)
    assert good.status_code == 200 and good.json()["text"]


def test_a_request_without_a_file_is_refused_and_the_openai_client_sees_the_reason(server, client):
    response = httpx.post(f"{server}/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    with pytest.raises(BadRequestError, match="not a readable audio file"):
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"nonsense"))


def test_a_client_that_disconnects_mid_request_leaves_the_server_serving(server, long_file):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/audio/transcriptions", files={"file": ("long.wav", long_file.read_bytes())},
                   data={"model": "whisper-1", "language": "en"}, timeout=httpx.Timeout(30, read=1.5))
    deadline = time.monotonic() + 60
    while httpx.get(f"{server}/health").json()["requests_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert httpx.get(f"{server}/health").json()["requests_in_flight"] == 0  # the abandoned job left the batch
    good = httpx.post(f"{server}/v1/audio/transcriptions", files={"file": ("c.wav", SHORT[1].read_bytes())},
                      data={"model": "whisper-1", "language": "en"}, timeout=120)
    assert good.status_code == 200 and good.json()["text"]


def test_sigterm_finishes_the_request_in_flight_then_exits(tmp_path, long_file):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "whisper_spec", "serve", "--port", str(port), "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        answer = {}

        def call():
            response = httpx.post(f"{url}/v1/audio/transcriptions",
                                  files={"file": ("long.wav", long_file.read_bytes())},
                                  data={"model": "whisper-1", "language": "en"}, timeout=600)
            answer["status"], answer["body"] = response.status_code, response.text

        caller = threading.Thread(target=call)
        caller.start()
        while not httpx.get(f"{url}/health").json()["requests_in_flight"]:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        caller.join(600)
        assert answer["status"] == 200 and len(json.loads(answer["body"])["text"]) > 200
        # uvicorn, once shut down gracefully, re-raises the signal it caught, as the process's own ending
        assert process.wait(120) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
