"""``whisper-spec``: one command, one verb per job. Each verb lives in its own module of this package
and exposes ``add_parser(subparsers)``, which registers its options and sets ``func`` to the function
that runs it (returning the process exit status).

Only the verb being run is imported: each verb's imports (torch, the text stack, the evaluation and
its plotting) stay inside its own module, so ``whisper-spec --help`` and one verb start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

# verb -> its one-line help (module whisper_spec.cli.<verb>_cmd), shown without importing the module
VERBS = {
    "transcribe": "transcribe audio files into txt, json, srt, vtt and tsv",
    "generate": "generate text with a causal LM, streaming it to the terminal",
    "eval": "measure WER, parity, latency and speed-up against the baseline and the peers",
    "distill": "distil a cheap draft for a Whisper target from unlabeled audio",
    "serve": "serve OpenAI's audio transcription API, batching concurrent requests through one speculative loop",
}


def build_parser(verbs: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser with every option of ``verbs`` (default all); other verbs are only listed."""
    full = set(VERBS) if verbs is None else set(verbs)
    parser = argparse.ArgumentParser(
        prog="whisper-spec",
        description="Lossless speculative decoding for Whisper and text LLMs: a small draft proposes "
                    "tokens, the target verifies them in one pass; greedy output is the target's own.")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, summary in VERBS.items():
        if verb in full:
            importlib.import_module(f"whisper_spec.cli.{verb}_cmd").add_parser(subparsers)
        else:
            subparsers.add_parser(verb, help=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = [argv[0]] if argv and argv[0] in VERBS else []
    args = build_parser(chosen).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
