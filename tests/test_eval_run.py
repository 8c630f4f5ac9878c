"""evaluation.run / report / peers / gpu_timing and the ``whisper-spec eval`` verb.

The end-to-end test runs the real offline models (``base``, and ``tiny.en`` to be refused as a
transformers assistant) on two LibriVox clips through the CLI and checks the written report; the timing
mode runs at its tiny scale. No test asserts on time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.gpu_timing import TimingOptions, run_timing, timing_table
from evaluation.report import first_divergence
from evaluation.run import Configuration, EvalOptions, MemoryProbe
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
    # k fixed: the untrained layers:0,5 draft (acceptance 0) would be switched off by the adaptive length
    # after the warm-up, and this run checks that drafting statistics reach the report
    status = main(["eval", "--librivox", "--limit", "2", "--out", str(out), "--no-progress", "--fixed-draft-length",
                   "--config", "ours:base", "--config", "ours:base+layers:0,5", "--config", "transformers:base",
                   "--config", "transformers:base+tiny.en", "--config", "faster-whisper:base@int8"])
    assert status == 0
    return json.loads((out / "report.json").read_text()), out


def test_end_to_end_report_files(eval_report):
    report, out = eval_report
    for name in ("report.md", "report.json", "speedup_vs_acceptance.png", "latency.png", "wer.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    markdown = (out / "report.md").read_text()
    assert "| ours:base+layers:0,5 |" in markdown and "Fastest:" in markdown


def test_end_to_end_parity_wer_and_speed_numbers(eval_report):
    report, _ = eval_report
    summaries = {c["name"]: c for c in report["configurations"]}
    assert set(summaries) == {"ours:base", "ours:base+layers:0,5", "transformers:base", "transformers:base+tiny.en",
                              "faster-whisper:base@int8"}
    baseline, drafted = summaries["ours:base"], summaries["ours:base+layers:0,5"]
    # lossless: the speculative ids are the target's own greedy ids on every file
    assert drafted["parity_identical"] == drafted["parity_files"] == 2
    assert drafted["wer"] == baseline["wer"] == drafted["wer_baseline"]
    assert baseline["wer"] < 0.15  # base transcribes these clear audiobook sentences well
    assert baseline["speedup"] == pytest.approx(1.0)
    assert 0 <= drafted["acceptance_rate"] <= 1 and drafted["draft_calls"] > 0
    assert drafted["target_calls"] <= baseline["target_calls"]
    for summary in (baseline, drafted, summaries["transformers:base"]):
        assert summary["files"] == 2 and summary["rtfx"] > 0 and summary["latency_p90"] >= summary["latency_median"]
        assert summary["weight_bytes"] > 100 * 2**20  # base's 74M float32 parameters
    # the same model in transformers agrees with our baseline word for word
    assert summaries["transformers:base"]["wer"] == pytest.approx(baseline["wer"])
    # a pair transformers cannot assist is reported, not faked
    refused = summaries["transformers:base+tiny.en"]
    assert refused["supported"] is False and "tokenizer" in refused["reason"] and refused["files"] == 0
    # faster-whisper, the CPU peer, on the same CTranslate2 bundle at int8: timed, and close to base's words
    faster = summaries["faster-whisper:base@int8"]
    assert faster["supported"] and faster["files"] == 2 and faster["rtfx"] > 0 and faster["wer"] < 0.2
    files = [f for f in report["files"] if f["configuration"] == "ours:base"]
    assert len(files) == 2 and all(f["tokens"] and f["seconds"] > 0 for f in files)


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


def _record(configuration: str, file_id: str, tokens, seconds: float, text: str = "a b", **counts):
    from evaluation.metrics import char_errors, word_errors
    from evaluation.run import FileRecord

    return FileRecord(configuration=configuration, file_id=file_id, audio_seconds=2.0, reference="a b", text=text,
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
