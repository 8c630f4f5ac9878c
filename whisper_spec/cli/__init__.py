"""``whisper-spec``: one command, one verb per job. Each verb lives in its own module of this package
and exposes ``add_parser(subparsers)``, which registers its options and sets ``func`` to the function
that runs it (returning the process exit status)."""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ("transcribe", "generate", "eval", "distill")  # module names under whisper_spec.cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-spec",
        description="Lossless speculative decoding for Whisper and text LLMs: a small draft proposes "
                    "tokens, the target verifies them in one pass; greedy output is the target's own.")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        # imported one by one so that a verb's heavy imports stay inside its own module
        importlib.import_module(f"whisper_spec.cli.{verb}_cmd").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
