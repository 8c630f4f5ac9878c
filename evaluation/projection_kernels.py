"""Which CPU kernel a linear map should run on: MKL's ``F.linear`` against oneDNN with the weight packed once.

``whisper_spec.projection.Projection`` runs every call of a packed linear map on the packed copy; this
prints the measurement behind that choice for Whisper base's decoder shapes (and a text model's), at
1, 2 and 6 rows (a step, a short and a typical verify pass), median of several timed loops.

    python -m evaluation.projection_kernels --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 6], help="rows per call")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads; microseconds per call (median of 5 loops)\n")
    print("| weight (out x in) | rows | MKL F.linear | oneDNN packed | packed / F.linear |")
    print("|---|---:|---:|---:|---:|")
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        loops = max(20, int(2e7 / weight.numel()))
        for rows in args.rows:
            x = torch.randn(rows, in_features)
            plain = median_microseconds(lambda x=x, w=weight: F.linear(x, w), loops)
            onednn = median_microseconds(
                lambda x=x, p=packed: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], ""), loops)
            print(f"| {out_features} x {in_features} | {rows} | {plain:.0f} | {onednn:.0f} | {onednn / plain:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
