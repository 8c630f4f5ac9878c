"""Tokens per second of text generation: plain greedy, our drafts, and transformers' assisted generation.

Run ``python -m evaluation.text_benchmark`` (defaults: Qwen2.5-Coder-1.5B target on the CPU, 2 threads,
3 code-editing and 3 chat prompts, 128 new tokens each). Every method decodes greedily, so each must
reproduce transformers' own greedy output; the table counts how many outputs did. Loading is not
timed; each method first runs one short warm-up generation.

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
import time
from dataclasses import dataclass

import torch

from whisper_spec.core.stats import SpeculationStats
from whisper_spec.generate import GenerateOptions, generate, load_text_draft, load_text_engine
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


@dataclass
class Row:
    method: str
    tokens: dict[str, int]  # prompt set -> generated tokens
    seconds: dict[str, float]
    identical: dict[str, int]  # prompt set -> outputs equal to transformers' greedy
    stats: SpeculationStats


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b", help="the target model")
    parser.add_argument("--drafts", default="qwen2.5-coder-0.5b,prompt-lookup,smollm2-135m",
                        help="comma-separated drafts for our speculative decoding")
    parser.add_argument("--hf-assistant", default="qwen2.5-coder-0.5b",
                        help="the assistant model for transformers' assisted generation ('' skips it)")
    parser.add_argument("--hf-assistant-tokens", type=int, default=None,
                        help="num_assistant_tokens set on the assistant's generation config (default: "
                             "transformers' own default)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=3, help="how many prompts of each set (at most 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sets = {"code": [_messages(p) for p in CODE_PROMPTS[: args.prompts]],
            "chat": [_messages(p) for p in CHAT_PROMPTS[: args.prompts]]}
    engine = load_text_engine(args.target)
    checkpoint = engine.checkpoint
    stops = checkpoint.stop_token_ids
    drafts = [d for d in args.drafts.split(",") if d]
    for draft in drafts:
        load_text_draft(args.target, draft)
    assistant = None
    if args.hf_assistant:
        assistant = load_text_model(args.hf_assistant).model
        if args.hf_assistant_tokens is not None:
            assistant.generation_config.num_assistant_tokens = args.hf_assistant_tokens
    options = GenerateOptions(max_new_tokens=args.max_new_tokens)
    warm_prompt = _messages("Say hello.")

    rows: list[Row] = []
    reference: dict[str, list[list[int]]] = {}

    def run_hf(method: str, model=None) -> None:
        _hf_generate(checkpoint, warm_prompt, 8, model)
        row = Row(method, {}, {}, {}, SpeculationStats())
        for name, prompts in sets.items():
            outputs, seconds = [], 0.0
            for prompt in prompts:
                tokens, s = _hf_generate(checkpoint, prompt, args.max_new_tokens, model)
                outputs.append(_strip(tokens, stops))
                seconds += s
                row.tokens[name] = row.tokens.get(name, 0) + len(tokens)
            if model is None:
                reference[name] = outputs
            row.seconds[name] = seconds
            row.identical[name] = sum(o == r for o, r in zip(outputs, reference[name]))
        rows.append(row)
        print(f"done: {method}", flush=True)

    def run_ours(method: str, draft: str | None) -> None:
        generate(warm_prompt, args.target, draft, options, max_new_tokens=8)
        row = Row(method, {}, {}, {}, SpeculationStats())
        for name, prompts in sets.items():
            identical, seconds, tokens = 0, 0.0, 0
            for prompt, expected in zip(prompts, reference[name]):
                result = generate(prompt, args.target, draft, options)
                identical += list(result.tokens) == expected
                seconds += result.stats.wall_seconds
                tokens += result.stats.tokens
                row.stats = row.stats + result.stats
            row.tokens[name], row.seconds[name], row.identical[name] = tokens, seconds, identical
        rows.append(row)
        print(f"done: {method}", flush=True)

    run_hf("transformers greedy")
    run_ours("ours, no draft", None)
    for draft in drafts:
        run_ours(f"ours + {draft}", draft)
    if assistant is not None:
        config = assistant.generation_config
        setting = (f"num_assistant_tokens={config.num_assistant_tokens}" if config.num_assistant_tokens
                   else "transformers' default draft length")
        run_hf(f"transformers assisted + {args.hf_assistant} ({setting})", assistant)

    base = {name: rows[0].tokens[name] / rows[0].seconds[name] for name in sets}
    n = args.prompts
    print(f"\n{args.target} on {torch.get_num_threads()} CPU threads, float32, {n} code + {n} chat prompts x "
          f"{args.max_new_tokens} new tokens (greedy)\n")
    print("| method | code tokens/s | code speed-up | chat tokens/s | chat speed-up | acceptance | "
          "identical to transformers greedy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        rates = {name: row.tokens[name] / row.seconds[name] for name in sets}
        acceptance = f"{row.stats.acceptance_rate:.2f}" if row.stats.drafted else "-"
        same = sum(row.identical.values())
        print(f"| {row.method} | {rates['code']:.2f} | {rates['code'] / base['code']:.2f}x | {rates['chat']:.2f} | "
              f"{rates['chat'] / base['chat']:.2f}x | {acceptance} | {same}/{2 * n} |")


if __name__ == "__main__":
    main()
