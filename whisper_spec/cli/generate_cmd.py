"""``whisper-spec generate``: generate text with a causal LM, streamed to the terminal as it is committed."""

from __future__ import annotations

import argparse
import sys

from whisper_spec.cli import VERBS
from whisper_spec.generation import DEFAULT, DEFAULT_TARGET, GenerateOptions, generate
from whisper_spec.text.checkpoints import bundled_text_models


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help=VERBS["generate"],
        description="Generate text with speculative decoding. Greedy output is the target model's own: the "
                    "draft only makes it faster. The text streams to standard output as it is committed; "
                    "statistics go to standard error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("prompt", nargs="?",
                        help="the prompt; '-' or nothing reads it from standard input")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message through the model's chat template "
                             "(default: continue the raw text)")
    parser.add_argument("--system", help="a system message to put before the prompt (implies --chat)")
    parser.add_argument("--target", default=DEFAULT_TARGET,
                        help=f"the model whose text you get: {', '.join(bundled_text_models())}, a .gguf "
                             f"file, a checkpoint folder or a hub id")
    parser.add_argument("--draft", default=DEFAULT,
                        help="the draft: 'prompt-lookup' (no model), a model name (same or another "
                             "tokenizer), or 'default' for the best measured draft for the target")
    parser.add_argument("--no-speculative", action="store_true", help="run the target alone (the baseline)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 for greedy decoding; above 0 samples from the target's distribution")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--draft-length", type=int, default=GenerateOptions.draft_length,
                        help="the most draft tokens per round (default %(default)s)")
    parser.add_argument("--draft-confidence", type=float, default=GenerateOptions.draft_confidence,
                        help="a draft model ends its round once the probability it gives its whole proposal "
                             "(the product of its token probabilities) falls below this (default %(default)s; "
                             "0: draft --draft-length tokens, or an adaptive k below it)")
    parser.add_argument("--fixed-draft-length", action="store_true",
                        help="draft every round: up to --draft-length tokens, exactly that many with "
                             "--draft-confidence 0 (default: adapt, down to plain decoding while the draft "
                             "measures slower than the target alone, probing now and then)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda, ...)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="do not print statistics to standard error")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    text = args.prompt if args.prompt not in (None, "-") else sys.stdin.read()
    if not text.strip():
        print("whisper-spec generate: the prompt is empty", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt = text
    if args.chat or args.system:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": text}]
    try:
        options = GenerateOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  draft_length=args.draft_length, seed=args.seed,
                                  adaptive_draft_length=not args.fixed_draft_length,
                                  draft_confidence=args.draft_confidence)
        options.decode_options()  # validates the values
    except ValueError as error:
        print(f"whisper-spec generate: {error}", file=sys.stderr)
        return 2

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = generate(prompt, args.target, None if args.no_speculative else args.draft, options,
                      device=args.device, on_text=show)
    sys.stdout.write("\n")
    if not args.quiet:
        stats = result.stats
        print(f"[{result.target} + {result.draft or 'no draft'}] {stats.tokens} tokens in "
              f"{stats.wall_seconds:.2f} s = {result.tokens_per_second:.2f} tokens/s; "
              f"{stats.target_calls} target calls, acceptance {stats.acceptance_rate:.2f} "
              f"({stats.accepted}/{stats.drafted}), mean accepted length {stats.mean_accepted_length:.2f}",
              file=sys.stderr)
    return 0
