"""evaluation.run / report / peers / gpu_timing and the ``whisper-spec eval`` verb.

The end-to-end test runs the real offline models (``base``, and ``tiny.en`` to be refused as a
transformers assistant) on two LibriVox clips and one long recording joined from LibriVox clips (over 30
s: every engine's long-form path) through the CLI and checks the written report; the timing mode runs
at its tiny scale. No test asserts on time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.gpu_timing import TimingOptions, run_timing, timing_table
from evaluation.manifests import librivox_manifest, longform_manifest, write_manifest
from evaluation.metrics import word_errors
from evaluation.peers import FasterWhisperPeer, UnsupportedPairError
from evaluation.report import DURATION_GROUPS, EXPOSURE_GROUPS, duration_group, first_divergence
from evaluation.run import Configuration, EvalOptions, MemoryProbe
from whisper_spec.audio import load_audio
from whisper_spec.cli import build_parser, main

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_configuration_specs_parse_and_bad_ones_are_refused():
    assert Configuration.parse("ours:base+layers:0,5") == Configuration("ours", "base", "layers:0,5")
    assert Configuration.parse("transformers:base").draft is None
    assert Configuration.parse("ours:base").is_baseline
    assert not Configuration.parse("transformers:base").is_baseline
    assert Configuration.parse("ours:base+tiny.en").name == "ours:base+tiny.en"
    for bad in ("base", "mine:base", "ours:", "ours:base+", "ours:+tiny.en"):
        with pytest.raises(ValueError, match="configuration"):
            Configuration.parse(bad)
    with pytest.raises(ValueError, match="repeats"):
        EvalOptions(repeats=0)


def test_configurations_name_their_compute_type():
    spec = Configuration.parse("ours:base@bfloat16+distilled")
    assert (spec.target, spec.compute_type, spec.draft) == ("base", "bfloat16", "distilled")
    assert spec.name == "ours:base@bfloat16+distilled" and not spec.is_baseline
    cpu = EvalOptions()
    assert spec.resolved_compute_type(cpu) == "bfloat16"
    assert Configuration.parse("ours:base").resolved_compute_type(cpu) == "float32"  # "default" on a CPU
    assert Configuration.parse("ours:base").resolved_compute_type(EvalOptions(compute_type="bfloat16")) == "bfloat16"
    faster = Configuration.parse("faster-whisper:base")
    assert faster.resolved_compute_type(cpu) == "int8" and faster.name == "faster-whisper:base"
    assert Configuration.parse("faster-whisper:base@float32").resolved_compute_type(cpu) == "float32"
    for bad in ("ours:base@", "faster-whisper:base+distilled"):
        with pytest.raises(ValueError, match="configuration"):
            Configuration.parse(bad)
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        Configuration.parse("ours:base@float16").resolved_compute_type(cpu)
    with pytest.raises(ValueError, match="unknown compute type"):
        EvalOptions(compute_type="int4")


def test_eval_refuses_a_compute_type_the_device_cannot_run(capsys):
    assert main(["eval", "--librivox", "--compute-type", "float16", "--no-progress"]) == 2
    assert "float16 needs a CUDA device" in capsys.readouterr().err


def test_duration_groups_put_one_window_apart_from_long_form():
    assert [duration_group(s) for s in (3.0, 9.99, 10.0, 30.0, 30.01, 124.0)] == [
        DURATION_GROUPS[0], DURATION_GROUPS[0], DURATION_GROUPS[1], DURATION_GROUPS[1], DURATION_GROUPS[2],
        DURATION_GROUPS[2]]


def test_first_divergence_positions():
    assert first_divergence((1, 2, 3), (1, 2, 3)) is None
    assert first_divergence((1, 2, 3), (1, 5, 3)) == 1
    assert first_divergence((1, 2), (1, 2, 3)) == 2
    assert first_divergence((), (7,)) == 0


def test_memory_probe_sees_an_allocation_made_inside_it():
    with MemoryProbe("cpu") as probe:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
    del block
    assert probe.peak_bytes >= 48 * 2**20
    with MemoryProbe("cpu") as idle:
        pass
    assert idle.peak_bytes < 16 * 2**20


def test_faster_whisper_decodes_in_a_process_of_its_own():
    """Loaded beside torch, CTranslate2 joins torch's OpenMP runtime and slows every later torch call of the
    process (evaluation.faster_whisper_worker): the peer runs in a worker, and this process never loads it."""
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip("needs the Debian package pocketsphinx-testdata")
    clip = librivox_manifest()[0]
    samples = load_audio(clip.audio)
    peer = FasterWhisperPeer("base", "int8", threads=2)
    try:
        out = peer.transcribe(samples, "en")
        assert word_errors(clip.text, out.text).rate < 0.2 and out.tokens and 0 < out.seconds
        assert peer.peak_memory(samples, "en") > 0  # the worker's own resident memory grew while decoding
    finally:
        peer.close()
    assert peer._worker.returncode == 0  # end of input stopped it
    assert "ctranslate2" not in sys.modules and "faster_whisper" not in sys.modules
    with pytest.raises(UnsupportedPairError, match="cannot run 'base' at 'int3'"):
        FasterWhisperPeer("base", "int3")  # CTranslate2's refusal, reported as an unsupported configuration


def test_every_eval_option_has_a_help_sentence():
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    eval_parser = verbs.choices["eval"]
    for action in eval_parser._actions:
        if action.dest != "help":
            assert action.help and len(action.help.split()) >= 3, action.dest


@pytest.fixture(scope="module")
def eval_report(tmp_path_factory) -> tuple[dict, Path]:
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip("needs the Debian package pocketsphinx-testdata")
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("eval")
    clips = librivox_manifest()
    # one recording over 30 s (the five clips, then the first again): the long-form path of every engine
    (long,) = longform_manifest(clips + clips[:1], out / "long", target_seconds=60)
    manifest = write_manifest(clips[:2] + [long], out / "manifest.jsonl")
    # k fixed: the untrained layers:0,5 draft (acceptance 0) would be switched off by the adaptive length
    # after the warm-up, and this run checks that drafting statistics reach the report. No memory pass:
    # it doubles the decoding, and MemoryProbe has its own test.
    status = main(["eval", "--manifest", str(manifest), "--out", str(out), "--no-progress", "--fixed-draft-length",
                   "--no-memory", "--threads", "2",
                   "--config", "ours:base", "--config", "ours:base+layers:0,5", "--config", "transformers:base",
                   "--config", "transformers:base+tiny.en", "--config", "transformers:base+base",
                   "--config", "faster-whisper:base@int8"])
    assert status == 0
    return json.loads((out / "report.json").read_text()), out


def test_end_to_end_report_files(eval_report):
    report, out = eval_report
    for name in ("report.md", "report.json", "speedup_vs_acceptance.png", "latency.png", "wer.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    markdown = (out / "report.md").read_text()
    assert "| ours:base+layers:0,5 | float32 |" in markdown and "Fastest:" in markdown
    assert "## By duration" in markdown and "| over 30 s (long-form) | ours:base+layers:0,5 | float32 | 1 |" in markdown
    assert "## Speech the shipped draft never saw" in markdown and "x faster-whisper:base@int8" in markdown
    assert report["environment"]["cpu"] and f"({report['environment']['cpu']})" in markdown  # results are per machine


def test_end_to_end_parity_wer_and_speed_numbers(eval_report):
    report, _ = eval_report
    summaries = {c["name"]: c for c in report["configurations"]}
    assert set(summaries) == {"ours:base", "ours:base+layers:0,5", "transformers:base", "transformers:base+tiny.en",
                              "transformers:base+base", "faster-whisper:base@int8"}
    baseline, drafted = summaries["ours:base"], summaries["ours:base+layers:0,5"]
    assert baseline["compute_type"] == drafted["compute_type"] == summaries["transformers:base"]["compute_type"]
    assert baseline["compute_type"] == "float32" and summaries["faster-whisper:base@int8"]["compute_type"] == "int8"
    # lossless: the speculative ids are the target's own greedy ids on every file, the long one included
    assert drafted["parity_identical"] == drafted["parity_files"] == 3
    assert drafted["wer"] == baseline["wer"] == drafted["wer_baseline"]
    assert baseline["wer"] < 0.15  # base transcribes these clear audiobook sentences well
    assert baseline["speedup"] == pytest.approx(1.0)
    assert 0 <= drafted["acceptance_rate"] <= 1 and drafted["draft_calls"] > 0
    assert drafted["target_calls"] <= baseline["target_calls"]
    for summary in (baseline, drafted, summaries["transformers:base"]):
        assert summary["files"] == 3 and summary["rtfx"] > 0 and summary["latency_p90"] >= summary["latency_median"]
        assert summary["weight_bytes"] > 100 * 2**20  # base's 74M float32 parameters
    # the same model in transformers agrees with our baseline word for word
    assert summaries["transformers:base"]["wer"] == pytest.approx(baseline["wer"])
    # a pair transformers cannot assist is reported, not faked
    refused = summaries["transformers:base+tiny.en"]
    assert refused["supported"] is False and "tokenizer" in refused["reason"] and refused["files"] == 0
    # faster-whisper, the CPU peer, on the same CTranslate2 bundle at int8: timed, and close to base's words
    faster = summaries["faster-whisper:base@int8"]
    assert faster["supported"] and faster["files"] == 3 and faster["rtfx"] > 0 and faster["wer"] < 0.2
    files = [f for f in report["files"] if f["configuration"] == "ours:base"]
    assert len(files) == 3 and all(f["tokens"] and f["seconds"] > 0 for f in files)
    # transformers' assisted generation: the long file is decoded or reported as not supported, never dropped
    assisted = summaries["transformers:base+base"]
    assert assisted["files"] + assisted["unsupported_files"] == 3
    assert assisted["files"] == 3 or "long-form" in assisted["unsupported_reason"]


def test_end_to_end_long_form_and_groups(eval_report):
    report, _ = eval_report
    files = {(f["configuration"], f["file_id"]): f for f in report["files"]}
    long = files[("ours:base", "longform-000")]
    assert long["audio_seconds"] > 30 and long["source"] == "longform:librivox"
    # decoded by the long-form algorithm (timestamps on), and transcribed well: every clip's words are there
    assert sum(token >= 50364 for token in long["tokens"]) >= 4  # <|0.00|> and later timestamps of base
    assert long["wer"] < 0.15 and files[("faster-whisper:base@int8", "longform-000")]["wer"] < 0.2
    assert files[("transformers:base", "longform-000")]["wer"] < 0.15
    groups = {kind: {label: {s["name"]: s for s in summaries} for label, summaries in chosen.items()}
              for kind, chosen in report["groups"].items()}
    by_duration = groups["duration"]
    assert set(by_duration) == {DURATION_GROUPS[0], DURATION_GROUPS[2]}  # two short clips, one long recording
    assert by_duration[DURATION_GROUPS[0]]["ours:base"]["files"] == 2
    longform = by_duration[DURATION_GROUPS[2]]
    assert longform["ours:base"]["files"] == 1 and longform["ours:base"]["audio_seconds"] > 30
    assert longform["ours:base+layers:0,5"]["parity_identical"] == longform["ours:base+layers:0,5"]["parity_files"] == 1
    # every file is LibriVox speech, which the shipped draft never trained on
    assert set(groups["draft exposure"]) == {EXPOSURE_GROUPS[0]}
    assert groups["draft exposure"][EXPOSURE_GROUPS[0]]["ours:base"]["files"] == 3
    ratios = {(t["configuration"], t["peer"]): t for t in report["times_faster_than_faster_whisper"]}
    assert ratios[("ours:base", "faster-whisper:base@int8")]["files"] == 3
    assert ratios[("ours:base", "faster-whisper:base@int8")]["ratio"] > 0


def test_timing_mode_at_tiny_scale_is_lossless_and_driven_by_the_oracle():
    torch.set_num_threads(2)
    for static in (False, True):  # the plain path, then fixed-shape steps (CUDA graphs on a GPU, eager here)
        result = run_timing(TimingOptions(architecture="tiny", probabilities=(0.0, 1.0), new_tokens=12, repeats=1,
                                          batch_size=2, adaptive_draft_length=False, draft_length=4, device="cpu",
                                          static_steps=static))
        never, always = result.points
        assert never.acceptance_rate == 0.0 and never.mean_accepted_length == 0.0
        assert always.acceptance_rate == 1.0
        # all-right drafts of 4: each verify pass commits 5 tokens, so 12 tokens need 3 target calls
        assert always.target_calls == 3
        assert never.target_calls == 12
        assert never.identical_rows == always.identical_rows == 2  # float32: every row is its greedy output
        assert result.baseline_seconds > 0 and all(p.speedup > 0 for p in result.points)
        assert result.transformers_seconds > 0 and always.vs_transformers > 0 and result.tokens_per_row == 12
        assert result.static_steps is static and (result.plain_seconds is not None) is static
        table = timing_table(result)
        assert "transformers `generate`" in table and ("plain path" in table) and "| 2/2 |" in table


def _record(configuration: str, file_id: str, tokens, seconds: float, text: str = "a b", audio_seconds: float = 2.0,
            source: str | None = None, **counts):
    from evaluation.metrics import char_errors, word_errors
    from evaluation.run import FileRecord

    return FileRecord(configuration=configuration, file_id=file_id, audio_seconds=audio_seconds, reference="a b",
                      text=text, source=source,
                      tokens=tuple(tokens), seconds=seconds, repeat_seconds=(seconds,), peak_memory_bytes=0,
                      target_calls=counts.get("target_calls", len(tokens)), draft_calls=counts.get("draft_calls", 0),
                      rounds=counts.get("rounds", 0), drafted=counts.get("drafted", 0),
                      accepted=counts.get("accepted", 0), word_errors=word_errors("a b", text),
                      char_errors=char_errors("a b", text))


def test_summary_speedup_parity_and_fastest_on_hand_made_records():
    from evaluation.report import summarize
    from evaluation.run import ConfigurationStatus, EvalRun, RunEnvironment

    base, spec = Configuration.parse("ours:m"), Configuration.parse("ours:m+d")
    records = (
        _record("ours:m", "f1", [1, 2, 3], 2.0), _record("ours:m", "f2", [4, 5], 4.0),
        _record("ours:m+d", "f1", [1, 2, 3], 1.0, rounds=1, drafted=3, accepted=2, draft_calls=3, target_calls=1),
        _record("ours:m+d", "f2", [4, 6], 1.0, text="a c", rounds=2, drafted=2, accepted=1, target_calls=2),
    )
    environment = RunEnvironment("cpu", "float32", "x", 2, 2, "linux", "rss", "now", 1.0)
    run = EvalRun(EvalOptions(), environment, (ConfigurationStatus(base, True), ConfigurationStatus(spec, True)),
                  records, (), ("hand-made",))
    report = summarize(run)
    baseline, drafted = report.summaries
    assert baseline.speedup == pytest.approx(1.0) and baseline.parity_identical == 2
    assert drafted.speedup == pytest.approx(6.0 / 2.0)
    assert drafted.speedup_median_per_file == pytest.approx(3.0)  # median of 2.0 and 4.0
    assert drafted.rtfx == pytest.approx(4.0 / 2.0) and drafted.tokens_per_second == pytest.approx(5 / 2.0)
    assert drafted.acceptance_rate == pytest.approx(3 / 5) and drafted.mean_accepted_length == pytest.approx(1.0)
    assert drafted.parity_identical == 1 and drafted.parity_files == 2
    (divergence,) = drafted.divergences
    assert (divergence.file_id, divergence.position, divergence.text) == ("f2", 1, "a c")
    assert drafted.wer == pytest.approx(1 / 4) and drafted.wer_baseline == 0.0
    assert report.fastest == "ours:m+d" and "3.00x the baseline" in report.fastest_note


def test_baselines_per_compute_type_groups_and_unsupported_files_on_hand_made_records():
    from evaluation.report import group_reports, group_table, summarize
    from evaluation.run import ConfigurationStatus, EvalRun, RunEnvironment, SkippedFile

    configurations = [Configuration.parse(c) for c in ("ours:m", "ours:m@bfloat16", "ours:m@bfloat16+d",
                                                        "transformers:m+a", "faster-whisper:m")]
    types = ("float32", "bfloat16", "bfloat16", "float32", "int8")
    statuses = tuple(ConfigurationStatus(c, True, compute_type=t) for c, t in zip(configurations, types))
    short, long = dict(source="librivox"), dict(audio_seconds=40.0, source="longform:allison")
    records = (
        _record("ours:m", "short", [1, 2], 2.0, **short), _record("ours:m", "long", [3, 4], 8.0, **long),
        _record("ours:m@bfloat16", "short", [1, 2], 1.0, **short),
        _record("ours:m@bfloat16", "long", [3, 4], 4.0, **long),
        _record("ours:m@bfloat16+d", "short", [1, 2], 0.5, **short),
        _record("ours:m@bfloat16+d", "long", [3, 4], 2.0, **long),
        _record("transformers:m+a", "short", [1, 2], 1.0, **short),
        _record("faster-whisper:m", "short", [1, 2], 1.5, **short),
        _record("faster-whisper:m", "long", [3, 4], 3.0, **long),
    )
    skipped = (SkippedFile("long", "no long-form here", "transformers:m+a", 40.0, "longform:allison"),)
    environment = RunEnvironment("cpu", "float32", "x", 2, 2, "linux", "rss", "now", 1.0)
    run = EvalRun(EvalOptions(), environment, statuses, records, skipped, ("hand-made",))
    report = {s.name: s for s in summarize(run).summaries}
    # the bfloat16 draft is compared with bfloat16 greedy (5.0 s / 2.5 s), not with float32's 10 s
    assert report["ours:m@bfloat16+d"].speedup == pytest.approx(2.0)
    assert report["ours:m@bfloat16+d"].parity_identical == 2
    peer = report["transformers:m+a"]
    assert (peer.files, peer.unsupported_files, peer.unsupported_reason) == (1, 1, "no long-form here")
    assert peer.speedup == pytest.approx(2.0)  # against ours:m at float32, on the one file it decoded
    assert report["faster-whisper:m"].speedup is None  # another engine at another precision: no baseline
    groups = group_reports(run)
    short_group, long_group = (groups["duration"][label] for label in (DURATION_GROUPS[0], DURATION_GROUPS[2]))
    assert DURATION_GROUPS[1] not in groups["duration"]
    assert {s.name: s.unsupported_files for s in long_group.summaries}["transformers:m+a"] == 1
    assert {s.name: s.unsupported_files for s in short_group.summaries}["transformers:m+a"] == 0
    ratios = {(t.configuration, t.peer): t.ratio for t in long_group.times_faster}
    assert ratios[("ours:m@bfloat16+d", "faster-whisper:m")] == pytest.approx(1.5)
    assert set(groups["draft exposure"]) == {EXPOSURE_GROUPS[0], EXPOSURE_GROUPS[1]}  # LibriVox; Allison's speaker
    assert {s.name: s.files for s in groups["draft exposure"][EXPOSURE_GROUPS[1]].summaries}["ours:m"] == 1
    table = group_table(groups["duration"])
    long_rows = [row.removeprefix("| over 30 s (long-form) ") for row in table.splitlines()]
    assert any(row.startswith("| transformers:m+a | float32 | not supported (files: 1): no long-form here |")
               for row in long_rows)
    assert "| ours:m@bfloat16+d | bfloat16 | 1 | 40 | 2.0 | 20.00 | 2.00x | 0.00 | 1.50x |" in long_rows


def test_longform_option_adds_long_recordings_seen_and_unseen_by_the_draft(tmp_path):
    pytest.importorskip("hibari")
    from evaluation.manifests import ALLISON_DIR
    from evaluation.report import draft_exposure
    from whisper_spec.audio import audio_duration
    from whisper_spec.cli.eval_cmd import _entries

    if not ALLISON_DIR.is_dir():
        pytest.skip("needs the Debian package asterisk-core-sounds-en-wav")
    args = build_parser().parse_args(["eval", "--longform", "--out", str(tmp_path / "report"),
                                      "--audio-dir", str(tmp_path / "audio")])
    entries, names = _entries(args)
    assert len(names) == 1 and "long-form" in names[0]  # --longform alone: no short clips added
    by_source: dict[str, list] = {}
    for entry in entries:
        by_source.setdefault(entry.source, []).append(entry)
    assert set(by_source) == {"longform:allison", "longform:tts"}
    assert len(by_source["longform:tts"]) == 2 and len(by_source["longform:allison"]) >= 1
    assert all(audio_duration(entry.audio) > 30 for entry in entries)
    assert all(entry.audio.is_relative_to(tmp_path / "audio") for entry in entries)  # none in the report's folder
    assert {draft_exposure(source) for source in by_source} == {EXPOSURE_GROUPS[0], EXPOSURE_GROUPS[1]}
