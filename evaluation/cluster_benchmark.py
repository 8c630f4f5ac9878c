"""Files per second of `whisper-spec transcribe` on this machine: the local CLI, and Ray Data with 1 worker x 2
threads and 2 workers x 1 thread, on the same folder of real speech, so that Ray's overhead is known.

    python -m evaluation.cluster_benchmark --out evaluation/results/cluster.md

Each configuration runs as a fresh `whisper-spec transcribe` process (as users run it, model loading and, for
Ray, starting a local Ray included) into a fresh output folder; the wall time of the whole command is what a
user waits for. Medians over `--repeats`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")

CONFIGURATIONS = {
    "local CLI (2 threads)": [],
    "Ray, 1 worker x 2 threads": ["--ray", "--workers", "1", "--threads-per-worker", "2"],
    "Ray, 2 workers x 1 thread": ["--ray", "--workers", "2", "--threads-per-worker", "1"],
}


def corpus(folder: Path, allison: int) -> list[Path]:
    """The LibriVox clips and the first ``allison`` of Allison's prompts, copied into ``folder``."""
    sources = sorted(LIBRIVOX.glob("*.wav")) + sorted(ALLISON.glob("*.wav"))[:allison]
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy(source, folder / source.name)
    return sorted(folder.glob("*.wav"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--allison", type=int, default=20, help="Allison prompts added to the 5 LibriVox clips")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--out", type=Path, default=Path("evaluation/results/cluster.md"),
                        help="where the markdown table goes")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="whisper-spec-cluster-") as tmp:
        files = corpus(Path(tmp) / "in", args.allison)
        for label, extra in CONFIGURATIONS.items():
            seconds = []
            for repeat in range(args.repeats):
                out = Path(tmp) / f"out-{len(rows)}-{repeat}"
                # the local CLI takes torch's default: one thread per core (2 here)
                command = [sys.executable, "-m", "whisper_spec", "transcribe", str(Path(tmp) / "in"), "-o", str(out),
                           "--language", "en", "--no-progress", *extra]
                print(f"{label}: run {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                seconds.append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise RuntimeError(f"{label} failed: {done.stderr[-2000:]}")
                written = len(list(out.glob("*.txt")))
                if written != len(files):
                    raise RuntimeError(f"{label} wrote {written} of {len(files)} transcripts")
            rows.append((label, statistics.median(seconds)))
    local = rows[0][1]
    command = " ".join(["python -m evaluation.cluster_benchmark", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"`{command}`", "",
             f"{len(files)} real-speech files (5 LibriVox clips, {args.allison} Allison prompts), language en, "
             "base + its distilled draft, each configuration a fresh process on this 2-core machine "
             "(model loading and Ray's start included).", "",
             "| configuration | wall s | files/s | vs local CLI |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {wall:.1f} | {len(files) / wall:.2f} | {local / wall:.2f}x |" for label, wall in rows]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
