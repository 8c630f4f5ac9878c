"""Losslessness on the real offline checkpoints and real speech, for every draft kind, in one batch.

The reference is transformers' own greedy ``generate`` on the target, clip by clip: code outside this
package. Each draft kind decodes all clips together in one batch (clips of different lengths, each row
accepting its own number of tokens per round) and must give exactly the reference ids.
"""

from __future__ import annotations

import re
import time

import jiwer
import pytest
import torch
from conftest import ALLISON, LIBRIVOX, OracleDrafter

from whisper_spec.audio import load_audio
from whisper_spec.draft_specs import resolve_draft
from whisper_spec.whisper.checkpoints import load_transformers_whisper, load_whisper
from whisper_spec.whisper.drafts.cross_tokenizer import CrossTokenizerDraft
from whisper_spec.whisper.drafts.protocol import Admitting
from whisper_spec.whisper.drafts.separate_encoder import SeparateEncoderDraft
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions, WindowRequest

CLIPS = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav",
         LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0890.wav",
         LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav",
         ALLISON / "vm-review.wav",
         ALLISON / "conf-onlyperson.wav"]


def _words(text: str) -> str:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " "))


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(2)
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        pytest.fail("speech assets missing (apt-get install pocketsphinx-testdata asterisk-core-sounds-en-wav): "
                    f"{missing}")
    return load_whisper("base")


@pytest.fixture(scope="module")
def audio():
    return [load_audio(c) for c in CLIPS]


@pytest.fixture(scope="module")
def reference(base, audio):
    """transformers' greedy generate, one clip at a time: the target's own output."""
    eot = base.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = load_transformers_whisper("base")
    ids = []
    for samples in audio:
        features = base.feature_extractor([samples])
        with torch.inference_mode():
            out = model.generate(features, language="en", task="transcribe")[0].tolist()
        ids.append(tuple(t for t in out if t < eot))
    return ids


def test_the_reference_transcribes_the_librivox_clips_correctly(base, reference):
    truth = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, utt = line.rsplit("(", 1)
        truth[utt.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    for clip, ids in zip(CLIPS[:3], reference):
        hypothesis = _words(base.tokenizer.decode(list(ids)))
        assert jiwer.wer(truth[clip.stem], hypothesis) < 0.15, hypothesis


DRAFTS = {
    "none": lambda base: None,
    "shared-encoder (target's layers 0 and 5)": lambda base: resolve_draft("layers:0,5", base),
    "separate-encoder (a copy of the target)": lambda base: SeparateEncoderDraft(base),
    "cross-tokenizer (tiny.en)": lambda base: CrossTokenizerDraft(load_whisper("tiny.en"), base),
}


@pytest.mark.parametrize("kind", list(DRAFTS))
def test_every_draft_kind_gives_the_targets_own_tokens_on_a_batch_of_real_clips(kind, base, audio, reference):
    engine = SpeculativeWhisper(base, DRAFTS[kind](base))
    windows = engine.decode_windows(audio, WindowOptions(language="en", draft_length=5))
    assert [w.tokens for w in windows] == reference
    total_drafted = sum(w.stats.drafted for w in windows)
    if kind == "none":
        assert total_drafted == 0
    else:
        assert total_drafted > 0
        saved = sum(len(r) + 1 for r in reference) - sum(w.stats.target_calls for w in windows)
        if not kind.startswith("shared"):  # an untrained two-layer draft may save nothing; the others must
            assert saved > 0


def test_fixed_draft_lengths_one_to_eight_stay_lossless(base, audio, reference):
    engine = SpeculativeWhisper(base, CrossTokenizerDraft(load_whisper("tiny.en"), base))
    for k in (1, 3, 8):
        options = WindowOptions(language="en", draft_length=k, adaptive_draft_length=False)
        windows = engine.decode_windows(audio[:2], options)
        assert [w.tokens for w in windows] == reference[:2], f"k={k}"


def test_one_clip_alone_equals_the_same_clip_in_a_batch(base, audio, reference):
    engine = SpeculativeWhisper(base, resolve_draft("layers:0,5", base))
    alone = engine.decode_windows(audio[2:3], WindowOptions(language="en"))
    assert alone[0].tokens == reference[2]


def test_english_only_target_matches_transformers(audio):
    tiny = load_whisper("tiny.en")
    eot = tiny.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    features = tiny.feature_extractor(audio[:1])
    with torch.inference_mode():
        expected = tuple(t for t in load_transformers_whisper("tiny.en").generate(features)[0].tolist() if t < eot)
    engine = SpeculativeWhisper(tiny, resolve_draft("layers:0,3", tiny))
    assert engine.decode_windows(audio[:1])[0].tokens == expected


def test_the_whole_start_of_a_draft_is_priced_not_only_its_encoder(base, audio, reference):
    """A shared-encoder draft reports no encoder time, but its start is not free (its cross-attention keys
    over 1500 frames: ~90 ms a window when base drafts for itself); the engine times all of it. A perfect,
    free draft that takes a second to start must be switched off once that second is priced against the
    few rounds of a short clip, with output unchanged."""
    eot = base.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    class SlowStartingOracle:
        draft_length = 6
        draft_confidence = 0.0
        reads_target_states = False

        def start(self, setup):
            time.sleep(1.0)
            # the rules' prompt lengths are the rows' own, updated as windows join
            oracle = OracleDrafter({0: list(reference[0]) + [eot]}, setup.rules.prompt_lengths,
                                   base.model.config.vocab_size, right=True)
            return Admitting(oracle, lambda batch: 0.0)  # no encoder of its own

    engine = SpeculativeWhisper(base, SlowStartingOracle())
    options = WindowOptions(language="en")
    first = engine.decode_windows(audio[:1], options)[0]
    assert first.tokens == reference[0] and first.stats.drafted > 0
    again = engine.decode_windows(audio[:1], options)[0]
    assert again.tokens == reference[0]
    assert again.stats.drafted == 0


def test_fixed_shape_steps_batched_speculation_gives_every_rows_own_greedy_tokens(base, audio, reference):
    """The GPU fast path (fixed-shape steps of the whole batch, CUDA graphs on a GPU; eager here) in both the
    target and a shared-encoder draft: clips of different lengths in one batch, rows finishing at
    different rounds, each equal to its own greedy decoding by transformers."""
    draft = resolve_draft("layers:0,5", base, static_steps=True)
    engine = SpeculativeWhisper(base, draft, static_steps=True)
    options = WindowOptions(language="en", draft_length=4, adaptive_draft_length=False)
    windows = engine.decode_windows(audio, options)
    assert [w.tokens for w in windows] == reference
    assert sum(w.stats.drafted for w in windows) > 0
    # every pass went through the fixed-shape steps, one shape per (tokens, outputs) seen
    assert engine.decoder._steps._shapes and draft.decoder._steps._shapes
    assert {len(w.tokens) for w in windows} != {len(windows[0].tokens)}  # rows really finish apart


CONTINUOUS_DRAFTS = {**DRAFTS, "distilled (shipped)": lambda base: resolve_draft("distilled", base)}


@pytest.mark.parametrize("kind", list(CONTINUOUS_DRAFTS))
def test_windows_that_join_a_running_batch_get_the_targets_own_tokens(kind, base, audio, reference):
    """Continuous batching: two rows, five clips; each clip joins as soon as a row frees up, while the
    other row is mid-decode, and still decodes to transformers' greedy tokens for it alone."""
    engine = SpeculativeWhisper(base, CONTINUOUS_DRAFTS[kind](base))
    slots = engine.slots(2, WindowOptions(language="en", draft_length=5, adaptive_draft_length=False))
    waiting = list(range(len(audio)))
    decoded, joined_mid_decode = {}, 0
    while waiting or slots.busy:
        joining = [(i, WindowRequest(audio[i], (), None)) for i in waiting[: len(slots.free)]]
        if joining:
            joined_mid_decode += slots.busy
            slots.admit(joining)
            waiting = waiting[len(joining):]
        decoded.update(slots.round())
    slots.close()
    assert [decoded[i].tokens for i in range(len(audio))] == reference
    assert joined_mid_decode >= 2
    if engine.draft is not None:
        assert sum(w.stats.drafted for w in decoded.values()) > 0


def test_a_window_dropped_mid_decode_frees_its_row_and_disturbs_no_other(base, audio, reference):
    engine = SpeculativeWhisper(base, resolve_draft("distilled", base))
    slots = engine.slots(2, WindowOptions(language="en"))
    slots.admit([("gone", WindowRequest(audio[0], (), None)), (1, WindowRequest(audio[1], (), None))])
    slots.round()
    slots.cancel("gone")
    assert slots.free == [0]
    slots.admit([(2, WindowRequest(audio[2], (), None))])
    decoded = {}
    while slots.busy:
        decoded.update(slots.round())
    assert "gone" not in decoded and [decoded[1].tokens, decoded[2].tokens] == reference[1:3]
