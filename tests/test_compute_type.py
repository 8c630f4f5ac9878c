"""The compute type names faster-whisper uses map to the target's precision, and bad names fail clearly."""

import pytest
import torch

from whisper_spec.compute_types import compute_dtype


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                             ("default", torch.float32), ("int8", torch.float32),
                                             ("int8_encoder", torch.float32)])
def test_cpu_compute_types(name, dtype):
    assert compute_dtype(name, "cpu") == dtype


def test_default_is_float16_on_cuda():
    assert compute_dtype("default", "cuda") == torch.float16
    assert compute_dtype("float16", "cuda:0") == torch.float16


@pytest.mark.parametrize("name", ["int4", "fp32", ""])
def test_unknown_compute_type_names_the_choices(name):
    with pytest.raises(ValueError, match="unknown compute type.*float32"):
        compute_dtype(name, "cpu")


def test_float16_off_cuda_is_refused():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        compute_dtype("float16", "cpu")


@pytest.fixture(scope="module")
def librivox_clips():
    from conftest import LIBRIVOX

    from whisper_spec.audio import load_audio

    return [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))[:3]]


def test_bfloat16_speculation_is_bfloat16_greedy(librivox_clips):
    """At bfloat16 the shipped draft (distilled for float32 base) still fits its target, and speculative
    tokens equal bfloat16 greedy tokens on real speech, file by file and batched."""
    from whisper_spec.model import WhisperModel

    speculative = WhisperModel("base", compute_type="bfloat16")
    greedy = speculative.with_draft(None)
    assert speculative.engine.target.model.dtype == torch.bfloat16 and speculative.draft is not None
    for clip in librivox_clips:
        ours = speculative.transcribe(clip)
        assert [s.tokens for s in ours.segments] == [s.tokens for s in greedy.transcribe(clip).segments]
        assert len(ours.text.split()) > 3
    def batched(model):
        done = {p.key: p.transcription for p in model.transcribe_files(list(enumerate(librivox_clips)), batch_size=3)
                if p.transcription is not None}
        return [[s.tokens for s in done[i].segments] for i in range(len(librivox_clips))]

    assert batched(speculative) == batched(greedy)


def _tokens(transcription):
    return [s.tokens for s in transcription.segments]


@pytest.mark.parametrize("compute_type", ["int8", "int8_encoder"])
def test_int8_speculation_is_int8_greedy(compute_type, librivox_clips, tmp_path):
    """At int8 (every linear map of base on int8 weights) and at int8_encoder (its encoder alone),
    speculative tokens equal the same compute type's greedy tokens on real speech: file by file, batched,
    and over two minutes through the long-form path; the transcripts stay close to float32's."""
    from evaluation.manifests import allison_manifest, longform_manifest
    from evaluation.metrics import wer
    from whisper_spec.model import WhisperModel
    from whisper_spec.whisper.int8_decoder import Int8WhisperDecoder

    speculative = WhisperModel("base", compute_type=compute_type)
    greedy = speculative.with_draft(None)
    assert speculative.compute_type.int8 and speculative.draft is not None
    assert isinstance(speculative.engine.decoder, Int8WhisperDecoder) == (compute_type == "int8")
    float32 = WhisperModel("base", None, compute_type="float32")
    references, hypotheses = [], []
    for clip in librivox_clips:
        ours = speculative.transcribe(clip)
        assert _tokens(ours) == _tokens(greedy.transcribe(clip))
        references.append(float32.transcribe(clip).text)
        hypotheses.append(ours.text)
    assert wer(references, hypotheses) < 0.1

    def batched(model):
        done = {p.key: p.transcription for p in model.transcribe_files(list(enumerate(librivox_clips)), batch_size=3)
                if p.transcription is not None}
        return [_tokens(done[i]) for i in range(len(librivox_clips))]

    assert batched(speculative) == batched(greedy)
    long = longform_manifest(allison_manifest(limit=60), tmp_path, target_seconds=120.0)[0]
    ours = speculative.transcribe(long.audio)
    assert ours.audio_seconds > 100 and len(ours.segments) > 4
    assert _tokens(ours) == _tokens(greedy.transcribe(long.audio))
