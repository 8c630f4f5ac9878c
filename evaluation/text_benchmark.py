"""Tokens per second of text generation: plain greedy, our drafts, and transformers' assisted generation.

Run ``python -m evaluation.text_benchmark`` (defaults: Qwen2.5-Coder-1.5B target on the CPU, 2 threads,
3 code-editing and 3 chat prompts, 128 new tokens each). Every method decodes greedily, so each must
reproduce transformers' own greedy output; the table counts how many outputs did. Each method runs in
its own process; loading is not timed, and each method first runs one short warm-up generation.

Methods:
- ``transformers greedy``: ``model.generate(do_sample=False)``, the baseline users have.
- ``ours, no draft``: our incremental forward, one token per step, through the same loop.
- ``ours + <draft>``: speculative decoding with the 0.5B model (same tokenizer), prompt lookup (no
  model) and SmolLM2-135M (another tokenizer, through text).
- ``transformers assisted + 0.5B``: ``model.generate(assistant_model=...)``; its draft length comes
  from the ASSISTANT's generation config (``--hf-assistant-tokens``; transformers ignores the argument
  of ``generate()``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from whisper_spec.generation import GenerateOptions, generate
from whisper_spec.text.checkpoints import load_text_model
from whisper_spec.text.drafts import render_prompt

_FUNCTION = '''def load_orders(path):
    orders = []
    with open(path) as handle:
        for line in handle:
            fields = line.strip().split(",")
            if len(fields) != 4:
                continue
            order_id, customer, amount, status = fields
            orders.append({"id": order_id, "customer": customer, "amount": float(amount), "status": status})
    return orders


def total_by_customer(orders):
    totals = {}
    for order in orders:
        if order["status"] != "paid":
            continue
        totals[order["customer"]] = totals.get(order["customer"], 0.0) + order["amount"]
    return totals
'''

_CLASS = '''class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count):
        if count <= 0:
            raise ValueError("count must be positive")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count):
        if self.items.get(name, 0) < count:
            raise KeyError(name)
        self.items[name] -= count
        if self.items[name] == 0:
            del self.items[name]

    def total(self):
        return sum(self.items.values())
'''

CODE_PROMPTS = (
    f"Add type hints to every function in this code. Reply with the complete code only.\n\n{_FUNCTION}",
    f"Rename the class Inventory to Stock and the attribute items to levels. Reply with the complete code "
    f"only.\n\n{_CLASS}",
    f"Add a docstring to each function in this code. Reply with the complete code only.\n\n{_FUNCTION}",
)
CHAT_PROMPTS = (
    "Explain the difference between a process and a thread, with an example of when to use each.",
    "What are the main causes of the seasons on Earth? Explain it to a curious twelve-year-old.",
    "Give me five tips for writing clear technical documentation, with one sentence of explanation each.",
)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _hf_generate(checkpoint, prompt, max_new_tokens: int, assistant=None) -> tuple[list[int], float]:
    ids = torch.tensor([render_prompt(checkpoint.tokenizer, prompt)])
    started = time.perf_counter()
    with torch.inference_mode():
        out = checkpoint.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                        do_sample=False, eos_token_id=list(checkpoint.stop_token_ids),
                                        assistant_model=assistant)
    seconds = time.perf_counter() - started
    return out[0, ids.shape[1]:].tolist(), seconds


def _strip(tokens: list[int], stops) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i]
    return tokens


def _run_method(args, method: str, reference_file: Path) -> dict:
    """Run one method in this process; returns its counts (JSON-ready)."""
    torch.set_num_threads(args.threads)
    sets = {"code": [_messages(p) for p in CODE_PROMPTS[: args.prompts]],
            "chat": [_messages(p) for p in CHAT_PROMPTS[: args.prompts]]}
    warm_prompt = _messages("Say hello.")
    result = {"method": method, "tokens": {}, "seconds": {}, "identical": {}, "drafted": 0, "accepted": 0}
    if method.startswith("transformers"):
        checkpoint = load_text_model(args.target)
        assistant = None
        if method == "transformers-assisted":
            assistant = load_text_model(args.hf_assistant).model
            if args.hf_assistant_tokens is not None:
                assistant.generation_config.num_assistant_tokens = args.hf_assistant_tokens
        reference = json.loads(reference_file.read_text()) if assistant is not None else {}
        _hf_generate(checkpoint, warm_prompt, 8, assistant)
        for name, prompts in sets.items():
            outputs = []
            result["seconds"][name] = 0.0
            result["tokens"][name] = 0
            for prompt in prompts:
                tokens, seconds = _hf_generate(checkpoint, prompt, args.max_new_tokens, assistant)
                outputs.append(_strip(tokens, checkpoint.stop_token_ids))
                result["seconds"][name] += seconds
                result["tokens"][name] += len(tokens)
            if assistant is None:
                reference[name] = outputs
            result["identical"][name] = sum(o == r for o, r in zip(outputs, reference[name]))
        if assistant is None:
            reference_file.write_text(json.dumps(reference))
        return result
    draft = None if method == "ours" else method.split(":", 1)[1]
    reference = json.loads(reference_file.read_text())
    options = GenerateOptions(max_new_tokens=args.max_new_tokens)
    if args.draft_length is not None:
        options = replace(options, draft_length=args.draft_length)
    if args.draft_confidence is not None:
        options = replace(options, draft_confidence=args.draft_confidence)
    generate(warm_prompt, args.target, draft, options, max_new_tokens=8)
    for name, prompts in sets.items():
        result["seconds"][name], result["tokens"][name], result["identical"][name] = 0.0, 0, 0
        for prompt, expected in zip(prompts, reference[name]):
            generation = generate(prompt, args.target, draft, options)
            result["identical"][name] += list(generation.tokens) == expected
            result["seconds"][name] += generation.stats.wall_seconds
            result["tokens"][name] += generation.stats.tokens
            result["drafted"] += generation.stats.drafted
            result["accepted"] += generation.stats.accepted
    return result


def _label(args, method: str) -> str:
    if method == "transformers-greedy":
        return "transformers greedy"
    if method == "transformers-assisted":
        setting = (f"num_assistant_tokens={args.hf_assistant_tokens}" if args.hf_assistant_tokens is not None
                   else "transformers' default draft length")
        return f"transformers assisted + {args.hf_assistant} ({setting})"
    return "ours, no draft" if method == "ours" else f"ours + {method.split(':', 1)[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b", help="the target model")
    parser.add_argument("--drafts", default="qwen2.5-coder-0.5b,prompt-lookup,smollm2-135m,"
                                            "prompt-lookup+qwen2.5-coder-0.5b",
                        help="comma-separated drafts for our speculative decoding")
    parser.add_argument("--hf-assistant", default="qwen2.5-coder-0.5b",
                        help="the assistant model for transformers' assisted generation ('' skips it)")
    parser.add_argument("--hf-assistant-tokens", type=int, default=None,
                        help="num_assistant_tokens set on the assistant's generation config (default: "
                             "transformers' own default)")
    parser.add_argument("--draft-length", type=int,
                        help="our largest draft length per round (default: GenerateOptions' default)")
    parser.add_argument("--draft-confidence", type=float,
                        help="our draft stops a round after a token it gave less than this probability "
                             "(default: GenerateOptions' default)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=3, help="how many prompts of each set (at most 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one method in this process
    parser.add_argument("--reference-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.method:
        print("RESULT " + json.dumps(_run_method(args, args.method, args.reference_file)), flush=True)
        return

    # Each method runs in its own process: a 1.5B target, its packed weights and a draft fill most of a
    # 24 GiB machine, and memory left over from one method must not slow down the next.
    methods = ["transformers-greedy", "ours"] + [f"ours:{d}" for d in args.drafts.split(",") if d]
    if args.hf_assistant:
        methods.append("transformers-assisted")
    n = args.prompts
    base: dict[str, float] = {}
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        reference_file = Path(folder) / "reference.json"
        for method in methods:
            command = [sys.executable, "-m", "evaluation.text_benchmark", "--method", method,
                       "--reference-file", str(reference_file)] + sys.argv[1:]
            out = subprocess.run(command, capture_output=True, text=True)
            results = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not results:
                print(f"{method} failed:\n{out.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(results[-1][len("RESULT "):])
            rates = {name: r["tokens"][name] / r["seconds"][name] for name in ("code", "chat")}
            base = base or rates  # the first method, transformers greedy, is the baseline
            acceptance = f"{r['accepted'] / r['drafted']:.2f}" if r["drafted"] else "-"
            lines.append(f"| {_label(args, method)} | {rates['code']:.2f} | {rates['code'] / base['code']:.2f}x | "
                         f"{rates['chat']:.2f} | {rates['chat'] / base['chat']:.2f}x | {acceptance} | "
                         f"{sum(r['identical'].values())}/{2 * n} |")
            print(f"done: {lines[-1]}", flush=True)  # partial results survive an interrupted run

    print(f"\n{args.target} on {args.threads} CPU threads, float32, {n} code + {n} chat prompts x "
          f"{args.max_new_tokens} new tokens (greedy)\n")
    print("| method | code tokens/s | code speed-up | chat tokens/s | chat speed-up | acceptance | "
          "identical to transformers greedy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
