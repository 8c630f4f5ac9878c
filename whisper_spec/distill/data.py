"""Training data for a distilled draft: what the TARGET does on unlabeled audio, computed once and cached.

For each clip the target runs once: its encoder (the draft reads these outputs, so they are inputs),
its own greedy transcript (the labels: a greedy draft is accepted exactly when it predicts these), and
its final hidden state at every position (times the output projection, the target's full distribution,
for a distillation loss; a hidden state is 512 numbers where a distribution is 51,865). Each clip is one
file in a cache directory named after the target's fingerprint, so a rerun, a resumed training or a
second training on the same audio computes nothing again.

Windows can be labelled in either of the target's decoding modes: plain text, or with Whisper's
timestamp tokens (``timestamps=True``), the mode ``transcribe()`` decodes audio longer than one window
in. A draft trained on one mode only proposes the other mode's tokens poorly, so the two are labelled
(and cached) separately and can be trained on together.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from whisper_spec.audio import AudioLoadError, load_audio
from whisper_spec.core.loop import DecodeOptions, speculative_decode
from whisper_spec.core.model_roles import ModelVerifier
from whisper_spec.memory import release_pages
from whisper_spec.whisper.checkpoints import load_whisper
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.features import WINDOW_SECONDS, encode_audio
from whisper_spec.whisper.language import detect_language

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class TargetRecord:
    """Which target a draft (or a data cache) was made for: its name and a fingerprint of its weights."""

    name: str  # what it was loaded as ("base", a directory, a hub id)
    fingerprint: str  # sha256 (first 16 hex digits) of its decoder's embedding and final layer norm
    d_model: int
    vocab_size: int
    decoder_layers: int

    @classmethod
    def of(cls, checkpoint) -> TargetRecord:
        decoder = checkpoint.model.model.decoder
        if decoder.embed_tokens.weight.dtype == torch.bfloat16:
            # bfloat16 has rounded the weights to values float16 does not give: hash the checkpoint's own
            # float32 weights (memory-mapped, so little is read), and a draft fits its target at every type
            decoder = load_whisper(checkpoint.name).model.model.decoder
        digest = hashlib.sha256()
        hashed = (decoder.embed_tokens.weight, decoder.layer_norm.weight, decoder.layer_norm.bias,
                  decoder.layers[-1].fc2.weight)
        # float16 bytes: the same target loaded in float32 on a CPU or float16 on a GPU hashes alike
        for tensor in hashed:
            digest.update(tensor.detach().to("cpu", torch.float16).numpy().tobytes())
        release_pages(hashed)
        weight = decoder.embed_tokens.weight
        return cls(checkpoint.name, digest.hexdigest()[:16], weight.shape[1], weight.shape[0], len(decoder.layers))

    def same_model(self, other: TargetRecord) -> bool:
        """True when both describe the same weights (the name may differ: a path versus a short name)."""
        return (self.fingerprint, self.d_model, self.vocab_size) == (other.fingerprint, other.d_model, other.vocab_size)


@dataclass(frozen=True)
class DistillExample:
    """One clip as the target sees it."""

    id: str  # the audio file it came from
    encoder_hidden: Tensor  # [S, D] float16: the target's encoder outputs (S = 1500)
    tokens: Tensor  # [T] long: prompt + greedy transcript + end-of-text, target ids
    prompt_length: int  # tokens[:prompt_length] is the forced prompt
    target_hidden: Tensor  # [T-1, D] float16: the target's final (layer-normed) hidden state at positions 0..T-2

    @property
    def generated(self) -> Tensor:
        """[T - prompt_length] the tokens a draft must predict (the transcript and end-of-text)."""
        return self.tokens[self.prompt_length:]


def audio_files(folder: str | os.PathLike) -> list[Path]:
    """Every audio file under ``folder`` (recursively), sorted, so that splits are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    return files


GAP_SECONDS = 0.5  # silence between packed clips


def pack_clips(files: Sequence[Path], pack_seconds: float) -> list[list[tuple[Path, np.ndarray]]]:
    """Group consecutive files into windows of at most ``pack_seconds`` (0: one file per window).

    Each entry is (path, samples); samples are loaded only to measure them, and files that are not
    audio or are empty are left out.
    """
    limit = min(pack_seconds, WINDOW_SECONDS) * SAMPLE_RATE
    groups: list[list[tuple[Path, np.ndarray]]] = []
    length = 0
    for path in files:
        try:
            samples = load_audio(path)[: WINDOW_SECONDS * SAMPLE_RATE]
        except AudioLoadError:
            continue
        if not samples.size:
            continue
        gap = GAP_SECONDS * SAMPLE_RATE
        if groups and pack_seconds > 0 and length + gap + samples.size <= limit:
            groups[-1].append((path, samples))
            length += gap + samples.size
        else:
            groups.append([(path, samples)])
            length = samples.size
    return groups


def join_clips(clips: Sequence[np.ndarray]) -> np.ndarray:
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    pieces = []
    for clip in clips:
        pieces += [gap, clip] if pieces else [clip]
    return np.concatenate(pieces).astype(np.float32)


def default_cache_dir() -> Path:
    from whisper_spec.whisper.checkpoints import cache_dir

    return Path(cache_dir()) / "distill"


def _clip_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]


class TargetLabeler:
    """Runs the target over clips and caches one ``DistillExample`` per clip."""

    def __init__(self, checkpoint, cache_dir: str | os.PathLike | None = None, language: str | None = None,
                 timestamps: bool = False):
        """
        Args:
            checkpoint: the target ``WhisperCheckpoint``.
            cache_dir: where labels are kept (default: ``<whisper_spec cache>/distill``); one subfolder per target.
            language: decode every clip in this language; None detects it per clip, as ``transcribe`` does.
            timestamps: decode with Whisper's timestamp tokens (under the target's timestamp rules).
        """
        self.checkpoint = checkpoint
        self.record = TargetRecord.of(checkpoint)
        self.language = language
        self.timestamps = timestamps
        self.folder = Path(cache_dir or default_cache_dir()) / self.record.fingerprint
        self.decoder = CachedWhisperDecoder(checkpoint.model.model.decoder)
        weight = checkpoint.model.model.decoder.embed_tokens.weight
        identity = torch.eye(weight.shape[1], device=weight.device, dtype=weight.dtype)
        self.hidden_decoder = CachedWhisperDecoder(checkpoint.model.model.decoder, output_weight=identity)
        self.eot = checkpoint.tokens.eot

    def cached_path(self, group: Sequence[Path]) -> Path:
        key = hashlib.sha1("|".join(_clip_key(p) for p in group).encode()).hexdigest()[:20]
        return self.folder / (f"{key}-timestamps.pt" if self.timestamps else f"{key}.pt")

    def examples(self, files: Sequence[Path], batch_size: int = 4, pack_seconds: float = 0.0,
                 progress: Callable[[Iterable], Iterable] | None = None) -> list[DistillExample]:
        """Labels for every file, from the cache or computed now; files that are not audio are skipped.

        ``pack_seconds`` > 0 joins consecutive short clips (0.5 s of silence apart) into windows of up to
        that length: the encoder costs the same for 2 s as for 30 s, so packing ten prompts into one window
        makes labelling ten times cheaper. Clips longer than a window are cut to its first 30 s.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        groups = pack_clips(files, pack_seconds)
        missing = [g for g in groups if not self.cached_path([p for p, _ in g]).is_file()]
        batches = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
        for batch in (progress(batches) if progress else batches):
            audio = [join_clips([samples for _, samples in group]) for group in batch]
            names = ["+".join(str(p) for p, _ in group) for group in batch]
            for group, example in zip(batch, self._label(audio, names)):
                path = self.cached_path([p for p, _ in group])
                temporary = path.with_suffix(".tmp")
                torch.save(example.__dict__, temporary)
                temporary.replace(path)  # atomic: a crash never leaves half a file
        out = []
        for group in groups:
            cached = self.cached_path([p for p, _ in group])
            if cached.is_file():
                out.append(DistillExample(**torch.load(cached, weights_only=True)))
        return out

    @torch.inference_mode()
    def _label(self, audio: list[np.ndarray], ids: list[str]) -> list[DistillExample]:
        checkpoint = self.checkpoint
        hidden, _ = encode_audio(checkpoint, audio)
        self.decoder.begin(hidden)
        batch = len(audio)
        tokens = checkpoint.tokens
        if self.language is None and tokens.multilingual:
            languages = detect_language(self.decoder, tokens, range(batch))
        else:
            languages = [self.language or "en"] * batch
        prompts = [tokens.prompt(language, "transcribe", self.timestamps) for language in languages]
        rules = tokens.rules([len(p) for p in prompts], self.timestamps)  # the engine's own
        verifier = ModelVerifier(self.decoder, batch, rules)
        budget = self.decoder.max_positions - max(len(p) for p in prompts)
        result = speculative_decode(verifier, None, prompts, [self.eot], DecodeOptions(max_new_tokens=budget),
                                    device=self.decoder.device)
        sequences = []
        for prompt, row in zip(prompts, result.rows):
            tokens = list(prompt) + list(row.tokens)
            if tokens[-1] != self.eot:  # ran out of positions: the label still ends the window
                tokens = tokens[: self.decoder.max_positions - 1] + [self.eot]
            sequences.append(tokens)
        states = self._final_hidden(sequences, hidden)
        return [DistillExample(id=ids[i], encoder_hidden=hidden[i].to("cpu", torch.float16).clone(),
                               tokens=torch.tensor(tokens, dtype=torch.long), prompt_length=len(prompts[i]),
                               target_hidden=states[i, : len(tokens) - 1].to("cpu", torch.float16).clone())
                for i, tokens in enumerate(sequences)]

    def _final_hidden(self, sequences: Sequence[Sequence[int]], encoder_hidden: Tensor) -> Tensor:
        """[B, T-1, D] the target's layer-normed final hidden states over each sequence but its last token.

        One teacher-forced pass of a cached decoder whose output projection is the identity, so that
        its "logits" are the hidden states.
        """
        width = max(len(s) for s in sequences) - 1
        tokens = torch.zeros(len(sequences), width, dtype=torch.long)
        for i, sequence in enumerate(sequences):
            tokens[i, : len(sequence) - 1] = torch.tensor(sequence[:-1])
        self.hidden_decoder.begin(encoder_hidden)
        positions = torch.arange(width).expand(len(sequences), -1)
        return self.hidden_decoder.forward_cached(torch.arange(len(sequences)), tokens,
                                                  torch.zeros(len(sequences), dtype=torch.long), positions)
