"""``whisper-spec transcribe --ray`` and ``whisper_spec.cluster`` on a local Ray with 2 CPUs and real speech:
the same outputs as the local CLI, resume, a bad file among good ones, and an actor killed mid-job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALLISON, LIBRIVOX

from whisper_spec.cli import main
from whisper_spec.output_formats import FORMATS

ray = pytest.importorskip("ray")

from whisper_spec.cluster import EXIT_ONCE_ENV, transcribe_dataset  # noqa: E402

CLIPS = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav", ALLISON / "vm-review.wav",
         ALLISON / "vm-goodbye.wav"]
MODELS = ["--target", "tiny.en", "--draft", "layers:0,1", "--language", "en"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ["RAY_DISABLE_USAGE_STATS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    inbox = tmp_path_factory.mktemp("inbox")
    for clip in CLIPS:
        shutil.copy(clip, inbox / clip.name)
    return inbox


@pytest.fixture(scope="module")
def local_outputs(folder, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local")
    assert main(["transcribe", str(folder), "-o", str(out), *MODELS, "--no-progress"]) == 0
    return _files(out)


def _files(out: Path) -> dict[str, object]:
    """Every output file's bytes; json files parsed, without what says how fast or how it was decoded
    (timings, speculation counts, per-token draft provenance), which no two runs share."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.suffix == ".json":
            content = json.loads(content)
            content.pop("timings"), content.pop("speculation")
            for segment in content["segments"]:
                segment.pop("from_draft", None)
        files[str(path.relative_to(out))] = content
    return files


def _same(a, b) -> bool:
    """Equal, floats within a relative 1e-4: actors run on another thread count, which rounds the
    probabilities in the json (never the tokens or the text) differently."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_ray_writes_the_local_clis_outputs_then_resumes_what_is_missing(folder, local_outputs, tmp_path, capsys):
    out = tmp_path / "ray"
    assert len(local_outputs) == len(CLIPS) * len(FORMATS)
    assert main(["transcribe", str(folder), "-o", str(out), *MODELS, "--ray", "auto", "--workers", "2",
                 "--no-progress"]) == 0
    assert _same(_files(out), local_outputs)
    # an interrupted job: one file's outputs never written, another's half written
    first, second = (Path(c).stem for c in CLIPS[:2])
    for name in FORMATS:
        (out / f"{first}.{name}").unlink()
    (out / f"{second}.json").unlink()
    capsys.readouterr()
    assert main(["transcribe", str(folder), "-o", str(out), *MODELS, "--ray", "auto", "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "files transcribed             2" in summary and "files skipped (already done)  1" in summary
    assert _same(_files(out), local_outputs)


def test_a_bad_file_is_reported_and_the_good_ones_finish(folder, local_outputs, tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.copy(folder / CLIPS[1].name, blobs / CLIPS[1].name)
    (blobs / "notes.wav").write_text("these are meeting notes, not audio\n")
    dataset = ray.data.read_binary_files(str(blobs), include_paths=True)  # audio as bytes
    out = tmp_path / "out"
    rows = {Path(r["path"]).name: r for r in transcribe_dataset(
        dataset, out, target="tiny.en", draft="layers:0,1",
        options=_options(), workers=1).iter_rows()}
    assert rows["notes.wav"]["status"] == "failed" and rows["notes.wav"]["reason"]
    assert rows[CLIPS[1].name]["status"] == "ok" and rows[CLIPS[1].name]["text"].strip()
    assert _same(_files(out), {k: v for k, v in local_outputs.items() if k.startswith(CLIPS[1].stem + ".")})


def test_an_actor_killed_mid_job_is_restarted_and_every_output_written(folder, local_outputs, tmp_path):
    marker = tmp_path / "exited-once"
    dataset = ray.data.from_items([{"path": str(folder / c.name)} for c in CLIPS])
    out = tmp_path / "out"
    rows = transcribe_dataset(dataset, out, target="tiny.en", draft="layers:0,1", options=_options(), workers=2,
                              ray_remote_args={"runtime_env": {"env_vars": {EXIT_ONCE_ENV: str(marker)}}}).take_all()
    assert marker.exists()  # an actor did exit
    assert sorted(r["status"] for r in rows) == ["ok"] * len(CLIPS)
    assert _same(_files(out), local_outputs)


def test_the_default_path_never_imports_ray(folder, tmp_path):
    code = ("import sys; from whisper_spec.cli import main; "
            f"main(['transcribe', {str(folder / 'missing.wav')!r}, '-o', {str(tmp_path)!r}, '--no-progress']); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def _options():
    from whisper_spec.transcription import TranscribeOptions
    return TranscribeOptions(language="en", timestamps=True)
