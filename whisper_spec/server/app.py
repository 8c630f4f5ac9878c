"""The FastAPI application of ``whisper-spec serve`` (see ``whisper_spec.server``)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, load_audio
from whisper_spec.model import WhisperModel
from whisper_spec.server.batcher import Batcher, Job
from whisper_spec.server.openai_api import (
    RequestError,
    check_request,
    delta_event,
    done_event,
    error_body,
    error_event,
    render,
)
from whisper_spec.transcription import Transcription

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServerOptions:
    max_batch: int = 4  # the most windows of concurrent requests decoded together
    max_upload_mb: float = 25.0  # larger uploads are refused with 413 (OpenAI's limit)
    model_name: str = "whisper-1"  # what /v1/models lists; requests may name any model


def create_app(model: WhisperModel, options: ServerOptions = ServerOptions(),
               batcher: Batcher | None = None) -> FastAPI:
    """The server's application over ``model``. Requests decode through ``batcher``, which the caller runs
    (``serve`` runs it on the main thread); without one, the application starts its own decoding thread
    and stops it when it shuts down."""
    state: dict[str, Batcher] = {}
    tokens = model.checkpoint.tokens
    languages = dict(tokens.languages) if tokens.multilingual else None
    names = _language_names()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = batcher or Batcher(model, options.max_batch).start()
        yield
        if batcher is None:  # uvicorn has already waited for the requests in flight; this ends the thread
            await asyncio.to_thread(state["batcher"].stop)

    app = FastAPI(title="whisper-spec", lifespan=lifespan,
                  description="OpenAI-compatible speech-to-text with lossless speculative decoding")
    limit = int(options.max_upload_mb * 1024 * 1024)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        param = str(first.get("loc", ["", "?"])[-1])
        return JSONResponse(error_body(f"{param}: {first.get('msg', 'invalid value')}", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(error.detail)), status_code=error.status_code)

    @app.middleware("http")
    async def upload_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + _CHUNK:
            return JSONResponse(error_body(f"the upload is {int(length) / 1e6:.1f} MB; the limit is "
                                           f"{options.max_upload_mb:g} MB", param="file", code="file_too_large"),
                                status_code=413)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        batcher = state.get("batcher")
        return {"status": "ok", "target": model.target, "draft": model.draft,
                "requests_in_flight": batcher.in_flight if batcher else 0}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": 0,
                                            "owned_by": "whisper-spec", "target": model.target,
                                            "draft": model.draft}]}

    async def handle(request: Request, task: str, file: UploadFile, language: str | None, prompt: str | None,
                     response_format: str | None, temperature: float | None, granularities: list[str] | None,
                     stream: bool | None) -> Response:
        checked = check_request(task, languages, language=language, prompt=prompt, response_format=response_format,
                                temperature=temperature, granularities=granularities, stream=stream)
        samples = await _read_audio(file, limit)
        seconds = samples.size / SAMPLE_RATE
        job = state["batcher"].submit(samples, checked.options(seconds), checked.language, checked.prompt)
        if checked.stream:
            return StreamingResponse(_stream(job, request), media_type="text/event-stream")
        result = await _wait(job, request)
        if result is None:  # the client left; nobody reads this
            return Response(status_code=499)
        body, media = render(result, checked, names)
        return Response(body, media_type=media)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File()],
        model_name: Annotated[str | None, Form(alias="model")] = None,
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str | None, Form()] = None,
        temperature: Annotated[float | None, Form()] = None,
        granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
        stream: Annotated[bool | None, Form()] = None,
    ) -> Response:
        return await handle(request, "transcribe", file, language, prompt, response_format, temperature,
                            granularities, stream)

    @app.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: Annotated[UploadFile, File()],
        model_name: Annotated[str | None, Form(alias="model")] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str | None, Form()] = None,
        temperature: Annotated[float | None, Form()] = None,
    ) -> Response:
        if not tokens.multilingual:
            raise RequestError(f"{model.target} is English-only: it cannot translate", "model")
        return await handle(request, "translate", file, None, prompt, response_format, temperature, None, None)

    return app


async def _read_audio(file: UploadFile, limit: int):
    """The upload's samples (16 kHz mono), or ``RequestError`` saying why it is not usable audio."""
    name = file.filename or "upload"
    with tempfile.TemporaryDirectory(prefix="whisper-spec-") as folder:
        path = Path(folder) / ("audio" + Path(name).suffix[:16])
        size = 0
        with path.open("wb") as out:
            while chunk := await file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise RequestError(f"{name}: the upload is over the {limit / 1024 / 1024:g} MB limit",
                                       "file", status=413, code="file_too_large")
                out.write(chunk)
        if size == 0:
            raise RequestError(f"{name}: the file is empty", "file")
        try:
            samples = await asyncio.to_thread(load_audio, path)
        except AudioLoadError as error:
            raise RequestError(f"{name}: {error.reason}", "file") from None
    if samples.size == 0:
        raise RequestError(f"{name}: no audio samples", "file")
    return samples


async def _next(job: Job, request: Request):
    """The job's next event; None once the client has disconnected (the job is then cancelled)."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled = True
                return None


async def _wait(job: Job, request: Request) -> Transcription | None:
    while True:
        event = await _next(job, request)
        if event is None:
            return None
        if isinstance(event, Exception):
            raise RequestError(f"decoding failed: {event}", status=500, kind="server_error")
        if event.transcription is not None:
            return event.transcription


async def _stream(job: Job, request: Request) -> AsyncIterator[str]:
    """Server-sent events: a text delta as each window's segments are decoded, then the whole text."""
    finished = False
    try:
        while True:
            event = await _next(job, request)
            if event is None:
                return
            if isinstance(event, Exception):
                yield error_event(f"decoding failed: {event}")
                return
            text = "".join(segment.text for segment in event.segments)
            if text:
                yield delta_event(text)
            if event.transcription is not None:
                finished = True
                yield done_event(event.transcription)
                return
    finally:
        if not finished:  # the client went away mid-stream (Starlette closes this generator)
            job.cancelled = True


def _language_names() -> dict[str, str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)


__all__ = ["ServerOptions", "create_app"]
