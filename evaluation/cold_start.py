"""Cold start: wall time and peak resident memory of one short file transcribed from a fresh process.

Each configuration runs ``--repeats`` times, every run in a new process (the converted model cache is warm,
the process is not): ``whisper-spec transcribe`` with defaults and with ``--no-speculative``, and
faster-whisper 1.2.1 loading the same CTranslate2 bundle (int8 and float32), transcribing and printing.
A breakdown run times the stages of ours inside one fresh process. Prints a markdown table and writes it
to ``--out``.

    python -m evaluation.cold_start --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")

# faster-whisper on the CTranslate2 bundle our converter reads: the same weights, its own runtime.
_FASTER_WHISPER = """
import sys
from faster_whisper import WhisperModel
from whisper_spec.whisper.checkpoints import bundle_ctranslate2_dir
model = WhisperModel(str(bundle_ctranslate2_dir("base")), device="cpu", compute_type=sys.argv[2])
segments, _ = model.transcribe(sys.argv[1], beam_size=1, language="en")
print(" ".join(s.text.strip() for s in segments))
"""

# Stages of our cold start, each timed once inside one fresh process; printed as name=seconds,resident MB lines
# (resident memory after the stage, /proc/self/status VmRSS: memory-mapped weights count once they are read).
_BREAKDOWN = """
import sys, time
def resident():
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
t0 = time.perf_counter()
from whisper_spec.model import WhisperModel
from whisper_spec.audio import load_audio
from whisper_spec.whisper.checkpoints import load_whisper
t1 = time.perf_counter(); print(f"import={t1 - t0},{resident()}")
load_whisper("base")
t2 = time.perf_counter(); print(f"load target (base)={t2 - t1},{resident()}")
model = WhisperModel("base")
t3 = time.perf_counter(); print(f"load draft (base-distilled) and engine={t3 - t2},{resident()}")
samples = load_audio(sys.argv[1])
t4 = time.perf_counter(); print(f"first audio decode={t4 - t3},{resident()}")
model.transcribe(samples)
t5 = time.perf_counter(); print(f"transcribe={t5 - t4},{resident()}")
"""


# Runs argv (a JSON list) as its only child and reports that child's wall time and peak RSS (ru_maxrss, KiB on
# Linux) on stderr's last line: a fresh measuring process per run, so no other child's peak is mixed in.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)
seconds = time.perf_counter() - start
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr[-2000:])
sys.stderr.write(f"\\n{seconds} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}\\n")
sys.exit(done.returncode)
"""


@dataclass(frozen=True)
class Run:
    """One fresh process: wall seconds, peak resident memory in MB and what it printed."""

    seconds: float
    peak_mb: float
    stdout: str


def run_fresh(argv: list[str]) -> Run:
    """Run ``argv`` in a new process (through a fresh measuring process); raises naming it if it fails."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(argv)], capture_output=True, text=True)
    *rest, last = done.stderr.rstrip().splitlines() or [""]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {chr(10).join(rest)[-2000:]}")
    seconds, peak_mb = (float(v) for v in last.split())
    return Run(seconds, peak_mb, done.stdout)


def make_clip(directory: Path, seconds: float = 5.0) -> Path:
    """A ``seconds``-long mp3 of real speech (the offline LibriVox clip) made with ffmpeg."""
    clip = directory / "clip.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-t", str(seconds), "-i", str(SPEECH), "-ar", "44100",
                    "-codec:a", "libmp3lame", "-b:a", "64k", str(clip)], check=True)
    return clip


def configurations(clip: Path, out_dir: Path) -> dict[str, list[str]]:
    """Label -> argv of each measured cold start."""
    # --overwrite: every run transcribes (the resume rule would skip the file once its txt exists)
    ours = [sys.executable, "-m", "whisper_spec", "transcribe", str(clip), "--formats", "txt",
            "--output-dir", str(out_dir), "--overwrite"]
    return {
        "`whisper-spec transcribe clip.mp3 --formats txt` (defaults)": ours,
        "the same with `--no-speculative`": ours + ["--no-speculative"],
        "faster-whisper 1.2.1: load base int8, transcribe, print": [sys.executable, "-c", _FASTER_WHISPER,
                                                                      str(clip), "int8"],
        "faster-whisper 1.2.1: load base float32, transcribe, print": [sys.executable, "-c", _FASTER_WHISPER,
                                                                         str(clip), "float32"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per configuration (median)")
    parser.add_argument("--out", type=Path, default=Path("evaluation/results/cold-start.md"),
                        help="where the markdown table is written")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp))
        lines = [f"Cold start, one 5-s mp3 (44.1 kHz) of real speech, median of {args.repeats} fresh processes "
                 f"(`python -m evaluation.cold_start --repeats {args.repeats}`).", "",
                 "| | wall time | peak resident memory |", "|---|---:|---:|"]
        for label, cmd in configurations(clip, Path(tmp)).items():
            runs = []
            for i in range(args.repeats):
                print(f"{label}: run {i + 1}/{args.repeats}", file=sys.stderr, flush=True)
                runs.append(run_fresh(cmd))
            lines.append(f"| {label} | {statistics.median(r.seconds for r in runs):.2f} s | "
                         f"{statistics.median(r.peak_mb for r in runs):.0f} MB |")
        print("breakdown run", file=sys.stderr, flush=True)
        stages = run_fresh([sys.executable, "-c", _BREAKDOWN, str(clip)])
        lines += ["", "Breakdown of ours (defaults), one fresh process (`WhisperModel(\"base\")` is the two "
                  "load stages):", "", "| stage | seconds | resident after | added |", "|---|---:|---:|---:|"]
        previous = 0.0
        for line in stages.stdout.splitlines():
            name, _, values = line.partition("=")
            seconds, resident = (float(v) for v in values.split(","))
            lines.append(f"| {name} | {seconds:.2f} | {resident:.0f} MB | {resident - previous:+.0f} MB |")
            previous = resident
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
