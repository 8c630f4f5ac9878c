"""Whisper without transformers: whisper_spec.whisper.{modeling, tokenizer, features} and the loader.

The loader reads the converted checkpoints into the package's own modules, tokenizer and front end;
transformers reads the same directory into its classes. On real speech the two front ends and the two
encoders must give the same bits (the same operations in the same order), the decoders the same hidden
states within float32 rounding, and the two tokenizers the same ids and text on real transcripts.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from whisper_spec.audio import load_audio
from whisper_spec.memory import release_pages
from whisper_spec.whisper.checkpoints import checkpoint_dir, load_transformers_whisper, load_whisper
from whisper_spec.whisper.modeling import Whisper, WhisperConfig

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ALLISON_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


@pytest.fixture(scope="module")
def base():
    return load_whisper("base")


@pytest.fixture(scope="module")
def reference():
    """transformers' model, tokenizer and feature extractor read from the same converted directory."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    directory = checkpoint_dir("base")
    return (load_transformers_whisper("base"), WhisperTokenizerFast.from_pretrained(directory),
            WhisperFeatureExtractor.from_pretrained(directory))


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """Real clips of several lengths, one longer than a window and one resampled from 24 kHz."""
    clips = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    assert len(clips) >= 3
    resampled = soxr.resample(clips[1], 24000, 16000)[:40000]
    return [clips[0], np.concatenate(clips)[: 16000 * 35], resampled, clips[2][:800]]


def _transcripts() -> list[str]:
    texts = [re.sub(r"</?s>|\(.*\)", "", line).strip().lower()
             for line in (LIBRIVOX / "transcription").read_text().splitlines()]
    with gzip.open(ALLISON_TEXT, "rt", encoding="utf-8") as lines:
        texts += [line.split(":", 1)[1].strip() for line in lines if ":" in line and "[" not in line][:300]
    return texts + ["Grüße aus Köln — 東京は晴れ. ¿Qué tal?", "  two  spaces ", "It's 3:45 p.m., isn't it?"]


def test_front_end_gives_transformers_features(base, reference, speech):
    _, _, extractor = reference
    ours = base.feature_extractor(speech)
    theirs = extractor(speech, sampling_rate=16000, return_tensors="pt").input_features
    assert ours.shape == (len(speech), 80, 3000)
    assert torch.equal(ours, theirs)


def test_encoder_gives_transformers_outputs(base, reference, speech):
    model, _, _ = reference
    features = base.feature_extractor(speech[:2])
    with torch.inference_mode():
        ours = base.model.model.encoder(features)
        theirs = model.model.encoder(features).last_hidden_state
    assert torch.equal(ours, theirs)


def test_decoder_matches_transformers(base, reference, speech):
    model, _, _ = reference
    features = base.feature_extractor(speech[:1])
    with torch.inference_mode():
        hidden = base.model.model.encoder(features)
        tokens = model.generate(features, language="en", task="transcribe")
        ours = base.model.model.decoder(tokens, hidden)
        theirs = model.model.decoder(input_ids=tokens, encoder_hidden_states=hidden).last_hidden_state
    assert tokens.shape[1] > 10
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_tokenizer_matches_transformers(base, reference):
    _, theirs, _ = reference
    ours = base.tokenizer
    assert len(ours) == len(theirs) and ours.get_vocab() == theirs.get_vocab()
    assert ours.all_special_ids == sorted(theirs.all_special_ids)
    assert ours.eos_token_id == theirs.eos_token_id == 50257
    texts = _transcripts()
    assert len(texts) > 100
    for text in texts:
        ids = ours.encode(" " + text)
        assert ids == theirs.encode(" " + text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids) == " " + text
    mixed = [50258, 50259, 50359, 50364, *ours.encode(" Hello there."), 50400, 50257]
    for skip in (False, True):
        assert ours.decode(mixed, skip_special_tokens=skip) == theirs.decode(mixed, skip_special_tokens=skip)
    tokens = ours.convert_ids_to_tokens(ours.encode(" naïve café"))
    assert tokens == theirs.convert_ids_to_tokens(theirs.encode(" naïve café", add_special_tokens=False))
    assert ours.convert_tokens_to_string(tokens) == " naïve café"


def test_loading_imports_no_transformers():
    """A fresh process loads base and its default draft, and transcribes, without importing transformers."""
    clip = str(sorted(LIBRIVOX.glob("*.wav"))[0])
    code = ("import sys; from whisper_spec.model import WhisperModel; from whisper_spec.audio import load_audio; "
            f"m = WhisperModel('base'); print(m.transcribe(load_audio({clip!r})).text); "
            "print(sorted(n for n in ('transformers', 'torch._dynamo', 'librosa') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out[0].split()) > 5 and out[-1] == "[]", out


def test_weights_are_mapped_from_the_file_and_released_safely(base):
    """The embedding lives in a file mapping of the checkpoint (no copy); released pages read back the
    same numbers, and memory that is not an unmodified file mapping is never released."""
    weight = base.model.model.decoder.embed_tokens.weight
    address = weight.data_ptr()
    with open("/proc/self/maps", encoding="utf-8") as maps:
        spans = [(line, *(int(x, 16) for x in line.split()[0].split("-"))) for line in maps]
    mapped = [line for line, start, end in spans if start <= address < end]
    assert mapped and mapped[0].rstrip().endswith("model.safetensors"), mapped
    before = weight[::997].clone()
    release_pages([weight])
    assert torch.equal(weight[::997], before)
    anonymous = torch.randn(300_000)
    copy = anonymous.clone()
    release_pages([anonymous])
    assert torch.equal(anonymous, copy)


def test_bad_configs_and_state_dicts_are_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not a Whisper model"):
        WhisperConfig.from_json(tmp_path / "config.json")
    config = WhisperConfig.from_json(checkpoint_dir("tiny.en") / "config.json")
    with torch.device("meta"):
        state = Whisper(config).state_dict()
    state.pop("model.decoder.layer_norm.bias")
    with pytest.raises(ValueError, match="missing.*model.decoder.layer_norm.bias"):
        Whisper.from_state_dict(config, state)
