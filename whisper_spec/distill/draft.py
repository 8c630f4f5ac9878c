"""Saving, loading and running a distilled draft.

A checkpoint holds only the draft's own weights (float16), the full-vocabulary ids of its output rows,
the target layers it started from, and a ``TargetRecord`` of the target it was distilled for; loading
it beside another target raises ``WrongTargetError``. ``DistilledDraft`` is the Whisper draft the
engine runs: a shared-encoder draft whose restricted scores are scattered back into target ids.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.prefix_cache import IncrementalModel
from whisper_spec.core.protocols import Drafter
from whisper_spec.distill.data import TargetRecord
from whisper_spec.distill.model import DistilledDecoder
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import WindowBatch

FORMAT = "whisper-spec distilled draft"
VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "drafts"  # drafts that come with the package
SUFFIX = ".pt"


class WrongTargetError(ValueError):
    """A distilled draft was loaded beside a target other than the one it was distilled for."""


def save_draft(model: DistilledDecoder, target: TargetRecord, path: str | os.PathLike,
               training: dict | None = None) -> Path:
    """Write the draft's own weights and its target's record to ``path`` (atomically); returns the path.

    ``training`` is a small record of how it was made (steps, data, held-out acceptance), kept as is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "version": VERSION, "target": asdict(target),
        "init_layers": list(model.init_layers), "vocab_ids": model.vocab_ids.cpu(),
        "state": {k: v.detach().to("cpu", torch.float16) for k, v in model.own_state().items()
                  if k != "vocab_ids"},
        "training": training or {},
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def read_draft_file(path: str | os.PathLike) -> dict:
    """The raw checkpoint contents, after checking that it is a distilled draft."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable distilled draft: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a whisper-spec distilled draft (made by `whisper-spec distill`)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: distilled draft format version {payload.get('version')}, this code reads {VERSION}")
    return payload


def load_draft(path: str | os.PathLike, target) -> DistilledDecoder:
    """Rebuild a draft beside ``target`` (a loaded ``WhisperCheckpoint``) on its device and dtype.

    Raises:
        WrongTargetError: the draft was distilled for another target.
    """
    payload = read_draft_file(path)
    made_for = TargetRecord(**payload["target"])
    actual = TargetRecord.of(target)
    if not made_for.same_model(actual):
        raise WrongTargetError(
            f"draft {path} was distilled for target {made_for.name!r} (weights {made_for.fingerprint}, "
            f"vocabulary {made_for.vocab_size}), but the target is {actual.name!r} (weights "
            f"{actual.fingerprint}, vocabulary {actual.vocab_size}); distil a draft for this target with "
            f"`whisper-spec distill --target {actual.name} --audio DIR`")
    decoder = target.model.model.decoder
    model = DistilledDecoder(decoder, payload["init_layers"], payload["vocab_ids"])
    weight = decoder.embed_tokens.weight
    missing, unexpected = model.load_state_dict(payload["state"], strict=False)
    if unexpected or any(not (".encoder_attn.k_proj." in k or ".encoder_attn.v_proj." in k or k == "vocab_ids")
                         for k in missing):
        raise ValueError(f"{path}: weights do not fit the draft (missing {missing}, unexpected {unexpected})")
    return model.to(device=weight.device, dtype=weight.dtype).eval()


def shipped_drafts() -> dict[str, Path]:
    """Short name -> file of the drafts in the package (``whisper_spec/drafts/<name>.pt``)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob(f"*{SUFFIX}"))}


def find_draft_file(spec: str, target_name: str) -> Path | None:
    """The distilled draft a spec names, or None when it names none.

    Specs: a path to a ``.pt`` file; a shipped draft's short name (``base-distilled``); or
    ``distilled``: the shipped draft for the target's short name.
    """
    if spec == "distilled":
        spec = f"{target_name}-distilled"
        if spec not in shipped_drafts():
            raise ValueError(f"no distilled draft ships for target {target_name!r}; shipped: "
                             f"{', '.join(shipped_drafts()) or 'none'}; make one with `whisper-spec distill`")
    if spec in shipped_drafts():
        return shipped_drafts()[spec]
    if spec.endswith(SUFFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"distilled draft {path} does not exist")
        return path
    return None


class _FullVocabulary:
    """An ``IncrementalModel`` that scatters a restricted-output model's scores into full-vocabulary rows."""

    def __init__(self, inner: CachedWhisperDecoder, vocab_ids: Tensor, vocab_size: int):
        self.inner = inner
        self.vocab_ids = vocab_ids
        self.vocab_size = vocab_size

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward_cached(self, rows: Tensor, tokens: Tensor, start: Tensor, output_index: Tensor) -> Tensor:
        """See ``IncrementalModel``: logits [b, N, V] with -inf for ids the draft cannot emit."""
        restricted = self.inner.forward_cached(rows, tokens, start, output_index)  # [b, N, R]
        full = restricted.new_full((*restricted.shape[:2], self.vocab_size), -torch.inf)
        return full.index_copy_(2, self.vocab_ids, restricted)


class DistilledDraft:
    """A distilled draft as a ``WhisperDraft``: reads the target's encoder outputs, runs its own layers."""

    kind = "shared-encoder"

    def __init__(self, model: DistilledDecoder, target):
        self.model = model
        self.decoder = CachedWhisperDecoder(model, output_weight=model.output_weight)
        self.full: IncrementalModel = _FullVocabulary(self.decoder, model.vocab_ids,
                                                      target.model.model.decoder.embed_tokens.weight.shape[0])
        self.eot_token_id = target.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    @classmethod
    def load(cls, path: str | os.PathLike, target) -> "DistilledDraft":
        return cls(load_draft(path, target), target)

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        self.decoder.begin(batch.target_encoder_hidden)
        return ModelDrafter(self.full, len(batch.prompts), rules=batch.rules,
                            stop_token_ids=[self.eot_token_id]), 0.0
