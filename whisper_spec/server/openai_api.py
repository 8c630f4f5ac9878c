"""OpenAI's audio API in our terms: request forms checked into ``TranscribeOptions``, results rendered as
``json``, ``text``, ``srt``, ``vtt`` or ``verbose_json``, stream events, and OpenAI's error objects.

Shapes follow OpenAI's API reference (``/v1/audio/transcriptions`` and ``/v1/audio/translations``), so
the ``openai`` client and tools built for it work unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from whisper_spec.output_formats import to_srt, to_vtt
from whisper_spec.transcription import TranscribeOptions, Transcription
from whisper_spec.whisper.features import WINDOW_SECONDS

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")


class RequestError(Exception):
    """A request the server refuses, answered as OpenAI's error object with this HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class AudioRequest:
    """One checked transcription or translation request (everything but the audio)."""

    task: str  # "transcribe" or "translate"
    language: str | None
    prompt: str | None
    response_format: str
    temperature: float
    words: bool  # word timestamps asked for
    stream: bool

    def options(self, audio_seconds: float) -> TranscribeOptions:
        """The options ``WhisperModel.transcribe`` would be given for this request alone (language and
        prompt travel per file). Timestamps are decoded where the answer shows them, for words, and for
        audio longer than one window, which is what ``transcribe()`` itself chooses."""
        timestamps = (self.response_format in ("srt", "vtt", "verbose_json") or self.words
                      or audio_seconds > WINDOW_SECONDS)
        return TranscribeOptions(task=self.task, temperature=self.temperature, timestamps=timestamps,
                                 word_timestamps=self.words)


def check_request(task: str, languages: dict[str, int] | None, *, language: str | None, prompt: str | None,
                  response_format: str | None, temperature: float | None, granularities: list[str] | None,
                  stream: bool | None) -> AudioRequest:
    """An ``AudioRequest`` from the form's fields, or ``RequestError`` naming the field that is wrong.

    ``languages``: the target's language codes (None: English only).
    """
    response_format = response_format or "json"
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(f"response_format '{response_format}' is not one of {', '.join(RESPONSE_FORMATS)}",
                           "response_format")
    if language:
        language = language.strip().lower()
        known = languages if languages is not None else {"en": 0}
        if language not in known:
            raise RequestError(f"language '{language}' is not one this model knows (ISO-639-1 codes such as "
                               f"{', '.join(sorted(known)[:8])})", "language")
    temperature = 0.0 if temperature is None else float(temperature)
    if not 0.0 <= temperature <= 1.0:
        raise RequestError(f"temperature must be between 0 and 1, got {temperature}", "temperature")
    granularities = [g for g in (granularities or []) if g]
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise RequestError(f"timestamp_granularities[] '{unknown[0]}' is not one of {', '.join(GRANULARITIES)}",
                           "timestamp_granularities[]")
    if granularities and response_format != "verbose_json":
        raise RequestError("timestamp_granularities[] needs response_format verbose_json", "timestamp_granularities[]")
    if stream and response_format not in ("json", "text"):
        raise RequestError(f"stream=true gives text events; response_format '{response_format}' cannot stream",
                           "stream")
    return AudioRequest(task, language or None, prompt or None, response_format, temperature,
                        "word" in granularities, bool(stream))


def render(result: Transcription, request: AudioRequest, language_names: dict[str, str]) -> tuple[str, str]:
    """(body, media type) of ``result`` in the request's response format."""
    kind = request.response_format
    if kind == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if kind == "srt":
        return to_srt(result), "application/x-subrip; charset=utf-8"
    if kind == "vtt":
        return to_vtt(result), "text/vtt; charset=utf-8"
    if kind == "json":
        return json.dumps({"text": result.text, "usage": usage(result)}, ensure_ascii=False), "application/json"
    return json.dumps(verbose(result, request, language_names), ensure_ascii=False), "application/json"


def usage(result: Transcription) -> dict:
    return {"type": "duration", "seconds": round(result.audio_seconds, 3)}


def verbose(result: Transcription, request: AudioRequest, language_names: dict[str, str]) -> dict:
    """OpenAI's verbose_json: task, language (its English name), duration, text, segments and words."""
    document = {
        "task": "translate" if request.task == "translate" else "transcribe",
        "language": language_names.get(result.language, result.language),
        "duration": round(result.audio_seconds, 3),
        "text": result.text,
        "segments": [{"id": s.id, "seek": round(s.start * 100), "start": s.start, "end": s.end, "text": s.text,
                      "tokens": list(s.tokens), "temperature": request.temperature,
                      "avg_logprob": s.avg_logprob if s.avg_logprob is not None else 0.0,
                      "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}
                     for s in result.segments],
        "usage": usage(result),
    }
    if request.words:
        document["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                             for s in result.segments for w in s.words]
    return document


def delta_event(text: str) -> str:
    """A server-sent event with text decoded since the last one."""
    return _event({"type": "transcript.text.delta", "delta": text})


def done_event(result: Transcription) -> str:
    return _event({"type": "transcript.text.done", "text": result.text, "usage": usage(result)})


def error_event(message: str) -> str:
    return _event(error_body(message, "server_error"))


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
