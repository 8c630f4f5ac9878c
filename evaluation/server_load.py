"""Load benchmark of `whisper-spec serve` on loopback: requests per second and p50 / p95 latency at several
concurrencies, with and without speculation, beside `WhisperModel.transcribe()` on the same files.

    python -m evaluation.server_load --requests 16 --concurrency 1,2,4,8 --threads 2 \
        --out evaluation/results/server-load.md

Each server runs in its own fresh process (as users start it), is warmed up on every file, then takes a
bounded number of requests per concurrency level (files in turn). `transcribe()` is timed in this process
first, on the same files, before any server starts, so nothing else competes for the cores. The table says
what the targets ask: p50 at concurrency 1 against transcribe()'s median, and throughput at concurrency 8
against sequential transcribe() throughput.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
DEFAULT_FILES = [*sorted(LIBRIVOX.glob("*.wav")),
                 *(ALLISON / f"{name}.wav" for name in ("vm-review", "conf-onlyperson", "vm-intro"))]


@dataclass(frozen=True)
class Level:
    mode: str  # "speculative" or "baseline"
    concurrency: int
    requests: int
    wall_seconds: float
    latencies: tuple[float, ...]

    @property
    def throughput(self) -> float:
        return self.requests / self.wall_seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_transcribe(files: list[Path], threads: int, speculative: bool) -> list[float]:
    """Seconds of `WhisperModel.transcribe()` per file (after one warm-up pass), in this process."""
    import torch

    from whisper_spec.audio import load_audio
    from whisper_spec.model import WhisperModel

    torch.set_num_threads(threads)
    model = WhisperModel()
    model = model if speculative else model.with_draft(None)
    audio = [load_audio(f) for f in files]
    for samples in audio:
        model.transcribe(samples, language="en")
    seconds = []
    for samples in audio:
        started = time.perf_counter()
        model.transcribe(samples, language="en")
        seconds.append(time.perf_counter() - started)
    return seconds


def load_server(files: list[Path], mode: str, levels: list[int], requests: int, threads: int,
                max_batch: int) -> list[Level]:
    port = _free_port()
    command = [sys.executable, "-m", "whisper_spec", "serve", "--port", str(port), "--threads", str(threads),
               "--max-batch", str(max_batch)] + (["--no-speculative"] if mode == "baseline" else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    bodies = [(f.name, f.read_bytes()) for f in files]
    try:
        with httpx.Client(timeout=600) as http:
            deadline = time.monotonic() + 300
            while True:
                try:
                    http.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"the {mode} server did not start") from None
                    time.sleep(0.3)

            def call(i: int) -> float:
                name, body = bodies[i % len(bodies)]
                started = time.perf_counter()
                response = http.post(url, files={"file": (name, body)}, data={"model": "whisper-1", "language": "en"})
                response.raise_for_status()
                return time.perf_counter() - started

            for i in range(len(bodies)):  # warm-up: every file once
                call(i)
            results = []
            for concurrency in levels:
                with ThreadPoolExecutor(concurrency) as pool:
                    started = time.perf_counter()
                    latencies = tuple(pool.map(call, range(requests)))
                    wall = time.perf_counter() - started
                results.append(Level(mode, concurrency, requests, wall, latencies))
                print(f"  {mode:<11} concurrency {concurrency}: {requests / wall:.2f} req/s, "
                      f"p50 {results[-1].percentile(0.5):.2f} s", file=sys.stderr, flush=True)
            return results
    finally:
        server.terminate()
        server.wait(120)


def table(levels: list[Level], solo: dict[str, list[float]], files: list[Path], command: str) -> str:
    lines = [f"`{command}`", "",
             f"{len(files)} real-speech files ({', '.join(f.name for f in files)}), language en, greedy, "
             "loopback, one server process per mode.", "",
             "| mode | concurrency | requests | req/s | p50 s | p95 s | p50 / transcribe() median | "
             "req/s / sequential transcribe() |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        seconds = solo[level.mode]
        median, sequential = statistics.median(seconds), len(seconds) / sum(seconds)
        lines.append(f"| {level.mode} | {level.concurrency} | {level.requests} | {level.throughput:.2f} | "
                     f"{level.percentile(0.5):.2f} | {level.percentile(0.95):.2f} | "
                     f"{level.percentile(0.5) / median:.2f} | {level.throughput / sequential:.2f} |")
    lines += ["", "| transcribe() in one process | median s | files/s |", "|---|---:|---:|"]
    for mode, seconds in solo.items():
        lines.append(f"| {mode} | {statistics.median(seconds):.2f} | {len(seconds) / sum(seconds):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the server and of transcribe()")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--modes", default="speculative,baseline", help="speculative, baseline or both")
    parser.add_argument("--files", nargs="*", type=Path, default=DEFAULT_FILES, help="audio files to send")
    parser.add_argument("--out", type=Path, default=Path("evaluation/results/server-load.md"),
                        help="where the markdown table goes")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    solo = {}
    for mode in modes:
        print(f"transcribe(), {mode}", file=sys.stderr, flush=True)
        solo[mode] = time_transcribe(args.files, args.threads, mode == "speculative")
    results = []
    for mode in modes:
        print(f"server, {mode}", file=sys.stderr, flush=True)
        results += load_server(args.files, mode, levels, args.requests, args.threads, args.max_batch)
    command = "python -m evaluation.server_load " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(results, solo, args.files, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
