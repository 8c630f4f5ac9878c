"""The external peers: transformers' own greedy ``generate`` on the target, its assisted generation, and
faster-whisper (CTranslate2), the engine CPU users pick.

transformers runs on the same loaded weights as ours, so a difference in speed is a difference between
decoding loops, not between models; faster-whisper runs on the very CTranslate2 bundle our offline
models are converted from, at its own compute type (int8 or float32). Assisted generation needs the
draft to share the target's tokenizer (transformers' Whisper assistant works on token ids); any other
pair is refused with ``UnsupportedPairError`` and reported as unsupported, never replaced by something else.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from whisper_spec.audio import SAMPLE_RATE
from whisper_spec.whisper.checkpoints import load_whisper


class UnsupportedPairError(ValueError):
    """transformers has no assisted generation for this target/draft pair."""


@dataclass(frozen=True)
class PeerOutput:
    tokens: tuple[int, ...]  # generated ids, prompt and end-of-text excluded (as ours report them)
    text: str
    target_calls: int  # forward passes of the target's decoder
    draft_calls: int  # forward passes of the assistant's decoder (0 without one)


class _CallCounter:
    """Counts forward passes of one module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1


class TransformersPeer:
    """``WhisperForConditionalGeneration.generate`` on a target, greedy, optionally with an assistant model.

    The assistant is a separate copy of the draft's weights even when draft == target, so that its
    decoder calls are counted apart from the target's and its generation config (which transformers
    reads the draft length from) is its own.
    """

    def __init__(self, target: str, draft: str | None = None, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, draft_length: int = 6):
        self.checkpoint = load_whisper(target, device=device, dtype=dtype)
        self.assistant = None
        if draft is not None:
            if draft.startswith("layers:"):
                raise UnsupportedPairError(
                    f"transformers' assisted generation has no layer-subset assistant ({draft!r})")
            draft_checkpoint = load_whisper(draft, device=device, dtype=dtype)
            if draft_checkpoint.tokenizer.get_vocab() != self.checkpoint.tokenizer.get_vocab():
                raise UnsupportedPairError(
                    f"transformers' Whisper assisted generation needs one tokenizer; {target!r} and {draft!r} differ")
            self.assistant = copy.deepcopy(draft_checkpoint.model)
            self.assistant.generation_config = copy.deepcopy(draft_checkpoint.generation_config)
            # transformers reads the draft length from the ASSISTANT's config (a generate() argument is ignored)
            self.assistant.generation_config.num_assistant_tokens = draft_length
            self.assistant.generation_config.num_assistant_tokens_schedule = "heuristic"
        self._target_calls = _CallCounter(self.checkpoint.model.model.decoder)
        self._draft_calls = _CallCounter(self.assistant.model.decoder) if self.assistant is not None else None
        tokenizer = self.checkpoint.tokenizer
        self._specials = frozenset(tokenizer.all_special_ids)

    @torch.inference_mode()
    def transcribe(self, samples: np.ndarray, language: str | None) -> PeerOutput:
        """Decode one window (at most 30 s of 16 kHz mono samples) greedily."""
        checkpoint = self.checkpoint
        model = checkpoint.model
        features = checkpoint.feature_extractor(
            [samples], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        features = features.to(device=model.device, dtype=model.dtype)
        target_before = self._target_calls.calls
        draft_before = self._draft_calls.calls if self._draft_calls else 0
        kwargs = {"language": language} if language and checkpoint.tokens.multilingual else {}
        if self.assistant is not None:  # an explicit assistant_model=None breaks Whisper's generate()
            kwargs["assistant_model"] = self.assistant
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # generate() warns about its own Whisper defaults per call
        try:
            ids = model.generate(features, generation_config=checkpoint.generation_config, task="transcribe",
                                 do_sample=False, num_beams=1, **kwargs)
        finally:
            transformers_logging.set_verbosity(verbosity)
        tokens = self._generated(ids[0].tolist())
        text = checkpoint.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
        return PeerOutput(tokens, text, self._target_calls.calls - target_before,
                          (self._draft_calls.calls - draft_before) if self._draft_calls else 0)

    def _generated(self, ids: list[int]) -> tuple[int, ...]:
        """The transcript's ids: transformers may or may not return the forced prompt; drop it and the end."""
        start = 0
        while start < len(ids) and ids[start] in self._specials:
            start += 1
        end = len(ids)
        while end > start and ids[end - 1] in self._specials:
            end -= 1
        return tuple(ids[start:end])


class FasterWhisperPeer:
    """faster-whisper's ``WhisperModel.transcribe``, greedy (beam 1, temperature 0 without fallback), no VAD,
    one window without timestamps or previous text: as ours decodes each evaluation file."""

    def __init__(self, target: str, compute_type: str = "int8", *, threads: int | None = None):
        try:
            from faster_whisper import WhisperModel as FasterWhisperModel
        except ImportError as error:
            raise UnsupportedPairError("faster-whisper is not installed (pip install -e '.[eval]')") from error
        from whisper_spec.whisper.checkpoints import bundle_ctranslate2_dir, bundled_models

        folder = bundle_ctranslate2_dir(target) if target in bundled_models() else target
        self.model = FasterWhisperModel(str(folder), device="cpu", compute_type=compute_type,
                                        cpu_threads=threads or torch.get_num_threads())
        self.specials = frozenset(self.model.hf_tokenizer.token_to_id(t) for t in ("<|endoftext|>",))

    def transcribe(self, samples: np.ndarray, language: str | None) -> PeerOutput:
        segments, _ = self.model.transcribe(
            samples, language=language, beam_size=1, best_of=1, temperature=[0.0], vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True, no_speech_threshold=None,
            log_prob_threshold=None, compression_ratio_threshold=None)
        segments = list(segments)
        tokens = tuple(t for s in segments for t in s.tokens if t not in self.specials)
        return PeerOutput(tokens, "".join(s.text for s in segments).strip(), 0, 0)
