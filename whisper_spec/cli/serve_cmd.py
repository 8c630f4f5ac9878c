"""``whisper-spec serve``: an OpenAI-compatible transcription server (see ``whisper_spec.server``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from whisper_spec import compute_types
from whisper_spec.cli import VERBS
from whisper_spec.compute_types import COMPUTE_TYPES
from whisper_spec.presets import DEFAULT, PRESETS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help=VERBS["serve"],
        description="Serve OpenAI's audio API (POST /v1/audio/transcriptions and /v1/audio/translations, "
                    "GET /v1/models, GET /health) over one loaded model. The windows of concurrent requests "
                    "decode together in one batched speculative loop, joining it between rounds; every "
                    "transcript is the target's own, as `whisper-spec transcribe` gives it. SIGTERM or "
                    "Ctrl-C finishes the requests in flight, then exits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named target/draft pair (default: 'base' when no --target is given)")
    parser.add_argument("--target", help="the model whose transcript you get: bundled name, folder or hub id")
    parser.add_argument("--draft", default=DEFAULT,
                        help="the draft (as for `whisper-spec transcribe`); 'default' takes the preset's")
    parser.add_argument("--no-speculative", action="store_true", help="serve the target alone (the baseline)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--compute-type", default="default", choices=("default", *COMPUTE_TYPES),
                        help=f"model {compute_types.HELP}")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for decoding (default: torch's choice, one per core)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="the most windows of concurrent requests decoded together")
    parser.add_argument("--max-upload-mb", type=float, default=25.0,
                        help="uploads larger than this are refused with 413")
    parser.add_argument("--model-name", default="whisper-1",
                        help="the model id /v1/models lists (requests may name any model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from whisper_spec.model import WhisperModel
    from whisper_spec.presets import resolve_models
    from whisper_spec.server.app import ServerOptions, create_app
    from whisper_spec.server.batcher import Batcher

    if args.max_batch < 1 or args.max_upload_mb <= 0:
        print("whisper-spec serve: --max-batch must be at least 1 and --max-upload-mb above 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        target, draft = resolve_models(args.preset, args.target, args.draft)
    except ValueError as error:
        print(f"whisper-spec serve: {error}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = WhisperModel(target, None if args.no_speculative else draft, device=device,
                             compute_type=args.compute_type)
    except ValueError as error:
        print(f"whisper-spec serve: {error}", file=sys.stderr)
        return 2
    batcher = Batcher(model, args.max_batch)
    app = create_app(model, ServerOptions(args.max_batch, args.max_upload_mb, args.model_name), batcher)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))

    def shut_down(signum, frame) -> None:
        # uvicorn stops taking connections and waits for the requests in flight, which need the decoder
        # to go on; once it has finished, the decoder stops too
        server.should_exit = True

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)

    def serve() -> None:
        try:
            server.run()
        finally:
            batcher.stop(timeout=0)

    http = threading.Thread(target=serve, name="whisper-spec-http")
    print(f"whisper-spec serve: {model.target} + {model.draft or 'no draft'} on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    http.start()
    # decoding on the thread that loaded the model: torch work spread over two threads gets two OpenMP
    # teams, more workers than CPUs, and slower parallel operations (measurements-behind-the-defaults.md)
    batcher.run()
    http.join()
    return 0 if server.started else 1
