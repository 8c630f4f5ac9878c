"""The distilled draft's checkpoint format: saving, loading, and the drafts that ship with the package.

A checkpoint holds only the draft's own weights (matrices as int8 with one scale per row, the rest
float16: a draft's precision changes what it proposes, never the output), the full-vocabulary ids of
its output rows, the target layers it started from, and a ``TargetRecord`` of the target it was
distilled for; loading it beside another target raises ``WrongTargetError``. What runs a loaded draft
is ``whisper_spec.whisper.drafts.distilled``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from whisper_spec.distill.data import TargetRecord
from whisper_spec.distill.model import DistilledDecoder, DraftLayers
from whisper_spec.memory import release_pages

FORMAT = "whisper-spec distilled draft"
VERSION = 2  # 2: int8 matrices; a donor draft's encoder adapter (linear map + MLP)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "shipped_drafts"  # drafts that come with the package
SUFFIX = ".pt"


class WrongTargetError(ValueError):
    """A distilled draft was loaded beside a target other than the one it was distilled for."""


def save_draft(model: DraftLayers, target: TargetRecord, path: str | os.PathLike,
               training: dict | None = None) -> Path:
    """Write the draft's own weights and its target's record to ``path`` (atomically); returns the path.

    ``training`` is a small record of how it was made (steps, data, held-out acceptance), kept as is.
    """
    # transformers' layers: imported only when a donor draft is saved or loaded
    from whisper_spec.distill.donor import DonorDecoder

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "version": VERSION, "target": asdict(target),
        "init_layers": list(model.init_layers), "vocab_ids": model.vocab_ids.cpu(), "features": model.features,
        "donor": ({"name": model.donor_name, "config": model.donor_config,
                   "adapter_hidden": model.encoder_map.hidden} if isinstance(model, DonorDecoder) else None),
        "state": {k: _stored(v.detach().cpu()) for k, v in model.own_state().items() if k != "vocab_ids"},
        "training": training or {},
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def _stored(tensor: Tensor) -> Tensor | dict[str, Tensor]:
    """A weight as saved: a float matrix as {"int8": [out, in] int8, "scale": [out, 1] float16}, else float16.

    Per-row int8 halves a float16 checkpoint and changes a draft's held-out agreement by a rounding error
    (evaluation/results/measurements-behind-the-defaults.md).
    """
    if tensor.is_floating_point() and tensor.dim() == 2:
        scale = (tensor.float().abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        return {"int8": torch.round(tensor.float() / scale).to(torch.int8), "scale": scale.to(torch.float16)}
    return tensor.to(torch.float16) if tensor.is_floating_point() else tensor


def _restored(value: Tensor | dict[str, Tensor]) -> Tensor:
    """The inverse of ``_stored`` (float32)."""
    if isinstance(value, dict):
        return value["int8"].float() * value["scale"].float()
    return value.float() if value.is_floating_point() else value


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


def load_draft(path: str | os.PathLike, target) -> DraftLayers:
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
    weight = decoder.embed_tokens.weight
    donor = payload.get("donor")
    state = {k: _restored(v) for k, v in payload["state"].items()}
    if donor:
        # imports transformers: only drafts built on a donor pay for it
        from whisper_spec.distill.donor import DonorDecoder

        model = DonorDecoder(donor["config"], payload["init_layers"], payload["vocab_ids"], weight.shape[1],
                             weight.shape[0], donor["name"], donor["adapter_hidden"])
    else:
        model = DistilledDecoder(decoder, payload["init_layers"], payload["vocab_ids"], payload.get("features", False))
    derived = set(model.state_dict()) - set(model.own_state()) | {"vocab_ids"}  # the target's, or rebuilt
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - derived:
        raise ValueError(f"{path}: weights do not fit the draft (missing {missing}, unexpected {unexpected})")
    # the fingerprint and the gathered output rows read the whole target embedding; the target itself reads
    # it only row by row (its output projection runs on a packed copy)
    release_pages([weight])
    return model.to(device=weight.device, dtype=weight.dtype).eval()


def shipped_drafts() -> dict[str, Path]:
    """Short name -> file of the drafts in the package (``whisper_spec/shipped_drafts/<name>.pt``)."""
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
