"""Whisper's decoder prompt (previous text, start of transcript, language, task, no-timestamps) and
language detection."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from whisper_spec.whisper.decoder import CachedWhisperDecoder

TASKS = ("transcribe", "translate")


def language_token(language: str) -> str:
    return f"<|{language}|>"


def decoder_prompt(generation_config, language: str | None, task: str, timestamps: bool = False,
                   previous: Sequence[int] = ()) -> list[int]:
    """The forced prefix of every window.

    [startofprev, *previous] (when ``previous`` is not empty) + [sot] (+ [language, task] if multilingual)
    (+ [no-timestamps] unless ``timestamps``). ``previous`` is text the model continues from (the
    transcript so far, in long-form transcription); the caller keeps it short enough to leave room.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    prompt = [generation_config.prev_sot_token_id, *previous] if previous else []
    prompt.append(generation_config.decoder_start_token_id)
    if getattr(generation_config, "is_multilingual", False):
        lang_to_id = generation_config.lang_to_id
        code = language_token(language or "en")
        if code not in lang_to_id:
            known = ", ".join(sorted(k.strip("<|>") for k in lang_to_id))
            raise ValueError(f"unknown language {language!r}; this model knows: {known}")
        prompt += [lang_to_id[code], generation_config.task_to_id[task]]
    elif task == "translate" or (language not in (None, "en")):
        raise ValueError(f"this checkpoint is English-only: language={language!r}, task={task!r} are not possible")
    if not timestamps:
        prompt.append(generation_config.no_timestamps_token_id)
    return prompt


@torch.inference_mode()
def detect_language(decoder: CachedWhisperDecoder, generation_config, batch_size: int) -> list[str]:
    """Most likely language of each window, from the decoder's scores after <|startoftranscript|>.

    ``decoder.begin`` must have been called with the windows' encoder outputs.
    """
    lang_to_id = generation_config.lang_to_id
    codes = list(lang_to_id)
    ids = torch.tensor([lang_to_id[c] for c in codes], device=decoder.device)
    rows = torch.arange(batch_size)
    tokens = torch.full((batch_size, 1), generation_config.decoder_start_token_id, dtype=torch.long)
    logits: Tensor = decoder.forward_cached(rows, tokens, torch.zeros(batch_size, dtype=torch.long),
                                            torch.zeros((batch_size, 1), dtype=torch.long))[:, 0]
    best = logits[:, ids].argmax(dim=-1).tolist()
    return [codes[i].strip("<|>") for i in best]
