"""The demo runs every torch call on one thread, whichever of Gradio's threads handles a request.

libgomp gives each thread that starts a parallel region a team of its own, and with more workers than
CPUs none of them spins between regions: torch work spread over handler threads ran a clip about 30 %
slower than on one thread (demo/app.py, ``TORCH_THREAD``).
"""

from __future__ import annotations

import threading

import pytest

app = pytest.importorskip("demo.app")

CLIP = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"


def test_transcriptions_and_generations_from_any_handler_thread_run_on_the_torch_thread(monkeypatch):
    ran_on: list[str] = []

    def fake_compare(samples, preset, models):
        ran_on.append(threading.current_thread().name)
        raise app.UserError("stopped here")  # the handler turns it into a message

    monkeypatch.setattr(app, "compare", fake_compare)
    messages = []
    handlers = [threading.Thread(target=lambda: messages.append(
        app.run_speech(CLIP, "base", app.DemoConfig(), models=None, downloads=None)[0]), name=f"handler-{i}")
        for i in range(2)]
    for handler in handlers:
        handler.start()
        handler.join()
    assert messages == ["⚠️ stopped here"] * 2

    def generation(on_text):
        ran_on.append(threading.current_thread().name)
        on_text("piece")
        return "result"

    assert list(app._streamed(generation)) == ["piece", "result"]
    assert len(ran_on) == 3 and len(set(ran_on)) == 1 and ran_on[0].startswith("torch")
