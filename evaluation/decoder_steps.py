"""What a target decoder's pass costs on a CPU at float32 and at the int8 compute type, by model size.

The int8 decoder (``whisper_spec.whisper.int8_decoder``) reads a quarter of the weight bytes, but its
attention reads half again the float bytes of the window's keys and values and runs more small
operations: which wins depends on how large the weights are against the per-operation costs. This
times one decoder pass of 1 token (a greedy step) and of 5 tokens (a verify pass) after 100 cached
positions, over 30 s of (random) encoder outputs, for Whisper's shapes with random weights (no hub
here), median of several passes, each configuration in the same process.

    python -m evaluation.decoder_steps --threads 2 --models base small large-v3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch

from whisper_spec.memory import reuse_freed_memory
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.int8_decoder import Int8WhisperDecoder
from whisper_spec.whisper.modeling import WhisperConfig, WhisperDecoder

# (d_model, decoder layers, heads): the openai/whisper-* configs (MLP width 4 d_model, 1500 frames)
SHAPES = {"tiny": (384, 4, 6), "base": (512, 6, 8), "small": (768, 12, 12), "medium": (1024, 24, 16),
          "large-v3": (1280, 32, 20), "large-v3-turbo": (1280, 4, 20)}
CACHED = 100


def random_decoder(name: str) -> WhisperDecoder:
    d, layers, heads = SHAPES[name]
    config = WhisperConfig(vocab_size=51866, num_mel_bins=128, d_model=d, encoder_layers=1,
                           encoder_attention_heads=heads, encoder_ffn_dim=4 * d, decoder_layers=layers,
                           decoder_attention_heads=heads, decoder_ffn_dim=4 * d)
    torch.manual_seed(0)
    return WhisperDecoder(config).eval().requires_grad_(False)


def median_ms(call, repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def pass_times(decoder: CachedWhisperDecoder, d_model: int, repeats: int) -> tuple[float, float]:
    """Median ms of a 1-token and of a 5-token pass after ``CACHED`` positions."""
    decoder.begin(torch.randn(1, 1500, d_model))
    rows = torch.tensor([0])
    tokens = torch.randint(0, 50000, (1, CACHED + 5))
    decoder.forward_cached(rows, tokens[:, :CACHED], torch.tensor([0]), torch.tensor([[CACHED - 1]]))

    def run(t: int):
        return decoder.forward_cached(rows, tokens[:, CACHED: CACHED + t], torch.tensor([CACHED]),
                                      torch.tensor([list(range(t))]))

    return median_ms(lambda: run(1), repeats), median_ms(lambda: run(5), repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=["base", "small", "large-v3"], choices=sorted(SHAPES),
                        help="Whisper shapes to time (random weights)")
    parser.add_argument("--repeats", type=int, default=9, help="timed passes per configuration (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as WhisperModel does: passes reuse freed memory instead of faulting pages in
    print(f"{args.threads} threads; ms per decoder pass after {CACHED} cached positions, 1500 encoder frames, "
          f"median of {args.repeats}\n")
    print("| shape | float32, 1 token | int8, 1 token | float32 / int8 | float32, 5 tokens | int8, 5 tokens "
          "| float32 / int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for name in args.models:
            d_model = SHAPES[name][0]
            times = {}
            for kind, build in (("float32", CachedWhisperDecoder), ("int8", Int8WhisperDecoder)):
                decoder = build(random_decoder(name))
                times[kind] = pass_times(decoder, d_model, args.repeats)
                del decoder
                gc.collect()
            (f1, f5), (i1, i5) = times["float32"], times["int8"]
            print(f"| {name} | {f1:.1f} | {i1:.1f} | {f1 / i1:.2f} | {f5:.1f} | {i5:.1f} | {f5 / i5:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
