"""Saving, loading and running a distilled draft.

A checkpoint holds only the draft's own weights (matrices as int8 with one scale per row, the rest
float16: a draft's precision changes what it proposes, never the output), the full-vocabulary ids of its output rows,
the target layers it started from, and a ``TargetRecord`` of the target it was distilled for; loading
it beside another target raises ``WrongTargetError``. ``DistilledDraft`` is the Whisper draft the
engine runs: a shared-encoder draft whose restricted scores are scattered back into target ids; a
feature-level draft runs through ``FeatureDrafter``, which feeds it the target's hidden states.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from whisper_spec.core.model_roles import (LogitRules, ModelDrafter, PrefixHidingDrafter, draft_step, extend_drafts,
                                           no_rules, stack_q)
from whisper_spec.core.prefix_cache import IncrementalModel
from whisper_spec.core.protocols import DraftRequest, Drafter, Proposal
from whisper_spec.distill.data import TargetRecord
from whisper_spec.distill.donor import DonorDecoder
from whisper_spec.distill.model import DistilledDecoder, DraftLayers
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import WindowBatch

FORMAT = "whisper-spec distilled draft"
VERSION = 2  # 2: int8 matrices; a donor draft's encoder adapter (linear map + MLP)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "drafts"  # drafts that come with the package
SUFFIX = ".pt"
# Distilled drafts run on int8 weights on a CPU (CPU float32 only; ignored elsewhere): the draft started
# from tiny.en ran 5 held-out 28-s windows at 1.16x with int8 against 1.04x in float32 (k = 5, same
# acceptance); it has no encoder of its own, unlike tiny.en, which int8 does not make pay on short clips.
INT8 = True
# Distilled drafts end their rounds once the probability they give their proposal falls below this
# (``WindowOptions.draft_confidence`` None takes it), and the draft length controller then only switches
# them on or off from measured round rates: the tiny.en-started draft's agreements come in runs, which
# the per-token geometric model underrates (on 7 held-out joined files with transcribe()'s k <= 6: switched
# off, 1.00x; self-stopping, 1.10x). Once draft steps got cheaper (1.8 ms), a higher threshold and a longer
# cap paid more (same 7 files, adaptive: confidence 0.4 / 0.5 / 0.6 at k <= 12: 1.27x / 1.31x / 1.30x;
# 0.5 at k <= 6 / 8 / 16: 1.28x / 1.28x / 1.29x).
DRAFT_CONFIDENCE = 0.5
DRAFT_LENGTH = 12  # the most tokens a round drafts (``WindowOptions.draft_length`` None takes it)


class WrongTargetError(ValueError):
    """A distilled draft was loaded beside a target other than the one it was distilled for."""


def save_draft(model: DraftLayers, target: TargetRecord, path: str | os.PathLike,
               training: dict | None = None) -> Path:
    """Write the draft's own weights and its target's record to ``path`` (atomically); returns the path.

    ``training`` is a small record of how it was made (steps, data, held-out acceptance), kept as is.
    """
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

    Per-row int8 halves a float16 checkpoint; on the tiny.en-started draft it changed held-out agreement
    by less than 0.001.
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
        model = DonorDecoder(donor["config"], payload["init_layers"], payload["vocab_ids"], weight.shape[1],
                             weight.shape[0], donor["name"], donor["adapter_hidden"])
    else:
        model = DistilledDecoder(decoder, payload["init_layers"], payload["vocab_ids"], payload.get("features", False))
    derived = set(model.state_dict()) - set(model.own_state()) | {"vocab_ids"}  # the target's, or rebuilt
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - derived:
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


class FeatureDrafter:
    """Drafts with a feature-level draft: the target's hidden states where known, zeros beyond.

    Per row it remembers how many positions its cache holds computed from the TARGET's states
    (``synced``). Each round it first reads the positions committed since (the verify pass has computed
    their target states, all but the newest), which also yields its first draft token; each further
    step reads a draft token whose previous state is unknown (zeros, as trained). Those positions are
    overwritten once the target's states for them exist, so the draft never builds on guesses for
    committed text.
    """

    def __init__(self, model: DistilledDecoder, decoder: CachedWhisperDecoder, target_states: Tensor,
                 vocab_size: int, rules: LogitRules = no_rules, stop_token_ids: Sequence[int] = ()):
        """
        Args:
            model: the feature-level draft (``model.features``).
            decoder: a ``CachedWhisperDecoder`` over ``model``, begun on the target's encoder outputs.
            target_states: [B, P, D] the target's final hidden state at each position of each batch row,
                valid at least for every committed position but the last when ``propose`` is called.
            vocab_size: the target's vocabulary size (proposals are full-vocabulary ids).
        """
        self.model = model
        self.decoder = decoder
        self.target_states = target_states
        self.vocab_size = vocab_size
        self.rules = rules
        self.stop_token_ids = frozenset(stop_token_ids)
        self.synced = [0] * target_states.shape[0]

    def _scores(self, rows: Tensor, restricted: Tensor, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """Restricted logits [b, R] -> full-vocabulary logits [b, V] under the target's rules."""
        full = restricted.new_full((restricted.shape[0], self.vocab_size), -torch.inf)
        full.index_copy_(1, self.model.vocab_ids, restricted)
        return self.rules(rows, prefixes, [[] for _ in prefixes], full[:, None])[:, 0].float()

    @torch.inference_mode()
    def _read(self, rows: list[int], tokens: list[list[int]], starts: list[int],
              states: list[Tensor] | None) -> Tensor:
        """Feed each row's ``tokens`` from position ``starts`` with ``states`` [n, D] as h_{t-1} (None:
        unknown, zeros); returns the logits [b, R] after each row's last token."""
        width = max(len(t) for t in tokens)
        device = self.decoder.device
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        previous = torch.zeros(len(rows), width, self.model.output_weight.shape[1], device=device,
                               dtype=self.decoder.dtype)
        for i, t in enumerate(tokens):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            if states is not None:
                previous[i, : len(t)] = states[i]
        start = torch.tensor(starts, device=device)
        positions = (start[:, None] + torch.arange(width, device=device)).clamp_max(self.decoder.max_positions - 1)
        embeds = self.model.input_embeds(ids, positions, previous)
        last = torch.tensor([[len(t) - 1] for t in tokens], device=device)
        return self.decoder.forward_cached(torch.tensor(rows), ids, start, last, inputs_embeds=embeds)[:, 0]

    def propose(self, request: DraftRequest) -> Proposal:
        rows = request.rows.tolist()
        sequences = [list(s) for s in request.sequences]
        dim = self.model.output_weight.shape[1]
        # catch up: positions synced .. L-1 with the target's states h_{t-1} (zeros before position 0)
        starts = [min(self.synced[r], len(s) - 1) for r, s in zip(rows, sequences)]
        states = []
        for r, s, start in zip(rows, sequences, starts):
            h = self.target_states[r, max(start - 1, 0): len(s) - 1].to(self.decoder.dtype)
            if start == 0:
                h = torch.cat([h.new_zeros(1, dim), h])
            states.append(h)
        logits = self._read(rows, [s[start:] for s, start in zip(sequences, starts)], starts, states)
        for r, s in zip(rows, sequences):
            self.synced[r] = len(s)
        drafts: list[list[int]] = [[] for _ in rows]
        alive = list(range(len(rows)))
        q_steps: list[tuple[list[int], Tensor]] = []
        calls = 1
        confidence = None  # [len(alive)]
        for step in range(request.k):
            alive_rows = request.rows[alive]
            tokens, probs, confidence, going_on = draft_step(
                self._scores(alive_rows, logits, [sequences[i] + drafts[i] for i in alive]), request, confidence)
            if probs is not None:
                q_steps.append((list(alive), probs))
            alive, confidence = extend_drafts(drafts, alive, tokens, going_on, self.stop_token_ids, confidence)
            if step == request.k - 1 or not alive:
                break
            positions = [len(sequences[i]) + len(drafts[i]) - 1 for i in alive]
            logits = self._read([rows[i] for i in alive], [[drafts[i][-1]] for i in alive], positions, None)
            calls += 1
        return Proposal(tokens=drafts, forward_calls=calls, q_draft=stack_q(q_steps, drafts) if q_steps else None)


class DistilledDraft:
    """A distilled draft as a ``WhisperDraft``: reads the target's encoder outputs, runs its own layers."""

    kind = "shared-encoder"

    def __init__(self, model: DraftLayers, target, int8: bool | None = None):
        """``int8``: run the draft's linear maps on int8 weights (default ``INT8``; CPU float32 only)."""
        self.model = model
        self.decoder = CachedWhisperDecoder(model, output_weight=model.output_weight,
                                            int8=INT8 if int8 is None else int8)
        self.vocab_size = target.model.model.decoder.embed_tokens.weight.shape[0]
        self.full: IncrementalModel = _FullVocabulary(self.decoder, model.vocab_ids, self.vocab_size)
        self.eot_token_id = target.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.sot_token_id = target.generation_config.decoder_start_token_id
        self.reads_target_states = model.features  # the engine records them for it
        self.draft_confidence = DRAFT_CONFIDENCE
        self.draft_length = DRAFT_LENGTH

    @classmethod
    def load(cls, path: str | os.PathLike, target) -> "DistilledDraft":
        return cls(load_draft(path, target), target)

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        if not self.model.features:
            # Per window, the adapter and the cross-attention keys/values are 1500-frame matrix products;
            # where the draft keeps those keys in bfloat16 anyway, they run in it (22 -> 7 ms a window).
            low = (torch.autocast("cpu", dtype=torch.bfloat16) if self.decoder.cross_dtype == torch.bfloat16
                   else contextlib.nullcontext())
            with torch.inference_mode(), low:
                self.decoder.begin(self.model.encoder_input(batch.target_encoder_hidden))
            # The draft never saw previous-text prompts in training (long-form windows have them): it
            # drafts from the start of transcript on, as it was trained.
            previous = [p[: p.index(self.sot_token_id)] if self.sot_token_id in p else [] for p in batch.prompts]
            return PrefixHidingDrafter(lambda rules: ModelDrafter(self.full, len(batch.prompts), rules=rules,
                                                                  stop_token_ids=[self.eot_token_id],
                                                                  vocabulary=self.model.vocab_ids),
                                       batch.rules, previous), 0.0
        if batch.target_states is None:
            raise ValueError("a feature-level draft needs the target's hidden states: decode with an engine "
                             "that records them (SpeculativeWhisper does when its draft asks)")
        self.decoder.begin(batch.target_encoder_hidden)
        return FeatureDrafter(self.model, self.decoder, batch.target_states, self.vocab_size, batch.rules,
                              [self.eot_token_id]), 0.0
