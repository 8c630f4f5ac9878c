"""``whisper-spec serve``: an OpenAI-compatible transcription server over one ``WhisperModel``.

- ``batcher``: one decoding thread; the windows of concurrent requests decode together in one batched
  speculative loop, joining it between rounds (continuous batching) and leaving as they finish.
- ``openai_api``: what OpenAI's audio API takes and returns (forms, response formats, stream events,
  error objects), as pure functions of our typed results.
- ``app``: the FastAPI application: uploads, limits, streaming, disconnects, health.
"""
