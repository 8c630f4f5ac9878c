"""The external peers: transformers' own greedy ``generate`` on the target, its assisted generation, and
faster-whisper (CTranslate2), the engine CPU users pick.

transformers runs the same checkpoint as ours (its own classes on the same weights), so a difference in
speed is a difference between decoding loops, not between models; faster-whisper runs on the very
CTranslate2 bundle our offline models are converted from, at its own compute type (int8 or float32).
Assisted generation needs the draft to share the target's tokenizer (transformers' Whisper assistant
works on token ids); any other pair is refused with ``UnsupportedPairError`` and reported as unsupported,
never replaced by something else.

Audio of one 30-s window is decoded as one plain window (no timestamps, no previous text, no thresholds);
longer audio through each engine's own long-form algorithm, run as users run it and as ours runs it:
timestamps, the previous text as prompt, and Whisper's no-speech and compression-ratio thresholds (ours'
defaults, ``TranscribeOptions``). Where an engine cannot decode a long file, ``UnsupportedFileError`` says
why, and the evaluation reports that file as not supported for that peer.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from whisper_spec.audio import SAMPLE_RATE
from whisper_spec.transcription import TranscribeOptions
from whisper_spec.whisper.checkpoints import checkpoint_dir, load_transformers_whisper
from whisper_spec.whisper.features import WINDOW_SECONDS

LONGFORM = TranscribeOptions()  # the thresholds every engine's long-form algorithm runs with


class UnsupportedPairError(ValueError):
    """The peer cannot run this configuration at all (transformers has no assisted generation for the pair,
    faster-whisper is missing or refuses the compute type)."""


class UnsupportedFileError(ValueError):
    """The peer cannot decode this file (e.g. long-form audio where its long-form path fails)."""


def is_longform(samples: np.ndarray) -> bool:
    """More than one 30-s window of 16 kHz samples: decoded by the long-form algorithms."""
    return samples.shape[0] > WINDOW_SECONDS * SAMPLE_RATE


@dataclass(frozen=True)
class PeerOutput:
    tokens: tuple[int, ...]  # generated ids, prompt and end-of-text excluded (as ours report them)
    text: str
    target_calls: int  # forward passes of the target's decoder
    draft_calls: int  # forward passes of the assistant's decoder (0 without one)
    seconds: float | None = None  # the engine's own time for the call, where it runs in another process


class _CallCounter:
    """Counts forward passes of one module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1


class TransformersPeer:
    """``WhisperForConditionalGeneration.generate`` on a target, greedy, optionally with an assistant model.

    The assistant is loaded as a model of its own even when draft == target, so that its decoder calls
    are counted apart from the target's and its generation config (which transformers reads the draft
    length from) is its own.
    """

    def __init__(self, target: str, draft: str | None = None, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, draft_length: int = 6):
        from transformers import WhisperProcessor

        self.model = load_transformers_whisper(target, device=device, dtype=dtype)
        processor = WhisperProcessor.from_pretrained(checkpoint_dir(target))
        self.feature_extractor, self.tokenizer = processor.feature_extractor, processor.tokenizer
        self.assistant = None
        if draft is not None:
            if draft.startswith("layers:"):
                raise UnsupportedPairError(
                    f"transformers' assisted generation has no layer-subset assistant ({draft!r})")
            draft_vocab = WhisperProcessor.from_pretrained(checkpoint_dir(draft)).tokenizer.get_vocab()
            if draft_vocab != self.tokenizer.get_vocab():
                raise UnsupportedPairError(
                    f"transformers' Whisper assisted generation needs one tokenizer; {target!r} and {draft!r} differ")
            self.assistant = load_transformers_whisper(draft, device=device, dtype=dtype)
            # transformers reads the draft length from the ASSISTANT's config (a generate() argument is ignored)
            self.assistant.generation_config.num_assistant_tokens = draft_length
            self.assistant.generation_config.num_assistant_tokens_schedule = "heuristic"
        self._target_calls = _CallCounter(self.model.model.decoder)
        self._draft_calls = _CallCounter(self.assistant.model.decoder) if self.assistant is not None else None
        self._specials = frozenset(self.tokenizer.all_special_ids)

    @property
    def models(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.assistant] if self.assistant is not None else [])

    @torch.inference_mode()
    def transcribe(self, samples: np.ndarray, language: str | None) -> PeerOutput:
        """Decode 16 kHz mono samples greedily: one window, or transformers' long-form generate beyond 30 s.

        Raises:
            UnsupportedFileError: long-form audio with an assistant, where transformers' generate fails.
        """
        model = self.model
        longform = is_longform(samples)
        # long-form input keeps all its frames (the default cuts to 30 s), with the mask generate() asks for
        features = self.feature_extractor(
            [samples], sampling_rate=SAMPLE_RATE, return_tensors="pt",
            **(dict(truncation=False, padding="longest", return_attention_mask=True) if longform else {}))
        kwargs = {"language": language} if language and model.generation_config.is_multilingual else {}
        if longform:
            kwargs.update(attention_mask=features.attention_mask.to(model.device), return_timestamps=True,
                          condition_on_prev_tokens=LONGFORM.condition_on_previous_text, temperature=0.0,
                          compression_ratio_threshold=LONGFORM.compression_ratio_threshold,
                          logprob_threshold=LONGFORM.logprob_threshold,
                          no_speech_threshold=LONGFORM.no_speech_threshold)
        if self.assistant is not None:  # an explicit assistant_model=None breaks Whisper's generate()
            kwargs["assistant_model"] = self.assistant
        target_before = self._target_calls.calls
        draft_before = self._draft_calls.calls if self._draft_calls else 0
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # generate() warns about its own Whisper defaults per call
        try:
            ids = model.generate(features.input_features.to(device=model.device, dtype=model.dtype),
                                 task="transcribe", do_sample=False, num_beams=1, **kwargs)
        except Exception as error:  # transformers' long-form loop with an assistant fails inside generate()
            if not (longform and self.assistant is not None):
                raise
            raise UnsupportedFileError(f"transformers' long-form generate with an assistant model failed "
                                       f"({type(error).__name__}: {error})") from error
        finally:
            transformers_logging.set_verbosity(verbosity)
        tokens = self._generated(ids[0].tolist())
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
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
    """faster-whisper's ``WhisperModel.transcribe``, greedy (beam 1, temperature 0 without fallback), no VAD:
    one window without timestamps or previous text, as ours decodes a file of one window; longer files
    through its long-form algorithm with timestamps, previous text and ours' thresholds.

    It runs in a worker process of its own (``evaluation.faster_whisper_worker``, which says why), as users
    run it: loaded beside torch, CTranslate2 slows every later torch call of the process. The worker times
    each call itself, so ``PeerOutput.seconds`` is faster-whisper's time from samples to text, without the
    pipe. ``close`` (or the object's end) stops the worker.
    """

    def __init__(self, target: str, compute_type: str = "int8", *, threads: int | None = None):
        from whisper_spec.whisper.checkpoints import bundle_ctranslate2_dir, bundled_models

        folder = bundle_ctranslate2_dir(target) if target in bundled_models() else target
        self.compute_type = compute_type
        self._worker = subprocess.Popen([sys.executable, "-m", "evaluation.faster_whisper_worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._close = weakref.finalize(self, _stop_worker, self._worker)
        status, detail = self._ask("load", str(folder), compute_type, threads or torch.get_num_threads())
        if status == "missing":
            self.close()
            raise UnsupportedPairError(f"faster-whisper is not installed (pip install -e '.[eval]'): {detail}")
        if status == "refused":  # CTranslate2 refuses a compute type it does not know or support here
            self.close()
            raise UnsupportedPairError(f"faster-whisper cannot run {target!r} at {compute_type!r}: {detail}")
        self._check(status, detail, f"loading {folder}")

    def _ask(self, *request) -> tuple[str, object]:
        if self._worker.poll() is not None:
            raise RuntimeError(f"faster-whisper's worker process exited with status {self._worker.returncode}")
        pickle.dump(request, self._worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._worker.stdin.flush()
        try:
            return pickle.load(self._worker.stdout)
        except EOFError:
            raise RuntimeError(f"faster-whisper's worker process ended during {request[0]!r} "
                               f"(status {self._worker.wait()})") from None

    @staticmethod
    def _check(status: str, value, doing: str):
        if status != "ok":
            raise RuntimeError(f"faster-whisper failed {doing}: {value}")
        return value

    def _options(self, samples: np.ndarray) -> dict:
        if is_longform(samples):
            return dict(condition_on_previous_text=LONGFORM.condition_on_previous_text, without_timestamps=False,
                        no_speech_threshold=LONGFORM.no_speech_threshold, log_prob_threshold=LONGFORM.logprob_threshold,
                        compression_ratio_threshold=LONGFORM.compression_ratio_threshold)
        return dict(condition_on_previous_text=False, without_timestamps=True, no_speech_threshold=None,
                    log_prob_threshold=None, compression_ratio_threshold=None)

    def transcribe(self, samples: np.ndarray, language: str | None) -> PeerOutput:
        tokens, text, seconds = self._check(*self._ask("transcribe", samples, language, self._options(samples)),
                                            "to transcribe")
        return PeerOutput(tokens, text, 0, 0, seconds)

    def peak_memory(self, samples: np.ndarray, language: str | None) -> int:
        """Bytes: the growth of the worker's resident memory during one more, untimed call."""
        return self._check(*self._ask("memory", samples, language, self._options(samples)), "to transcribe")

    def close(self) -> None:
        self._close()


def _stop_worker(worker: subprocess.Popen) -> None:
    """End of input stops the worker; one that does not stop is killed."""
    if worker.poll() is None:
        worker.stdin.close()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
