"""Which CPU kernel a linear map should run on: MKL's ``F.linear`` against oneDNN with the weight packed once.

``whisper_spec.projection.Projection`` runs every call of a packed linear map on the packed copy; this
prints the measurement behind that choice for Whisper base's decoder shapes (and a text model's), at
1, 2 and 6 rows (a step, a short and a typical verify pass), median of several timed loops.

``--int8`` times the integer products instead (int8 activations and weights, int32 sums, without the
rows' quantization around them): oneDNN's u8 x s8 product on a packed weight (what
``whisper_spec.quantization`` runs), ``torch._int_mm`` with the weight kept as [out, in] or as [in, out],
and fbgemm's dynamic-quantized linear (what int8 drafts run, its quantization included).

    python -m evaluation.projection_kernels --threads 2
    python -m evaluation.projection_kernels --threads 2 --int8 --rows 1 2 5 13
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from whisper_spec import quantization
from whisper_spec.projection import _quantized

# (rows of the weight, columns): base's output projection, fused q/k/v, fc1, fc2, an output map; Qwen-1.5B's MLP
SHAPES = ((51865, 512), (1536, 512), (2048, 512), (512, 2048), (512, 512), (8960, 1536))


def median_microseconds(call, loops: int, repeats: int = 5) -> float:
    for _ in range(max(3, loops // 10)):  # warm-up
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        times.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(times)


def float_table(rows: list[int]) -> None:
    print("| weight (out x in) | rows | MKL F.linear | oneDNN packed | packed / F.linear |")
    print("|---|---:|---:|---:|---:|")
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        loops = max(20, int(2e7 / weight.numel()))
        for n in rows:
            x = torch.randn(n, in_features)
            plain = median_microseconds(lambda x=x, w=weight: F.linear(x, w), loops)
            onednn = median_microseconds(
                lambda x=x, p=packed: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], ""), loops)
            print(f"| {out_features} x {in_features} | {n} | {plain:.0f} | {onednn:.0f} | {onednn / plain:.2f} |")


def int8_table(rows: list[int]) -> None:
    print("| weight (out x in) | rows | oneDNN u8 x s8 packed | _int_mm, weight [out, in] | "
          "_int_mm, weight [in, out] | fbgemm dynamic |")
    print("|---|---:|---:|---:|---:|---:|")
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features)
        int8 = quantization.quantize_weight(weight, bits=8)
        q = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8)
        q_t = q.t().contiguous()
        fbgemm = _quantized(weight, None)
        loops = max(20, int(2e7 / weight.numel()))
        for n in rows:
            x = torch.randn(n, in_features)
            x_u8, _ = quantization.quantize_rows(x)
            x_i8 = (x_u8.int() - 128).to(torch.int8)
            timings = [
                median_microseconds(lambda x=x_u8, w=int8: quantization._product(x, w.packed, w.scale, w.zero_points),
                                    loops),
                median_microseconds(lambda x=x_i8, w=q: torch._int_mm(x, w.t()), loops),
                median_microseconds(lambda x=x_i8, w=q_t: torch._int_mm(x, w), loops),
                median_microseconds(lambda x=x, w=fbgemm: torch.ops.quantized.linear_dynamic(x, w, True), loops),
            ]
            print(f"| {out_features} x {in_features} | {n} | " + " | ".join(f"{t:.0f}" for t in timings) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 6], help="rows per call")
    parser.add_argument("--int8", action="store_true",
                        help="time the int8 x int8 -> int32 kernels instead of the float32 ones")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads; microseconds per call (median of 5 loops)\n")
    (int8_table if args.int8 else float_table)(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
