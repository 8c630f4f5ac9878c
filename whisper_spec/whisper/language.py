"""Language detection: the most likely language of each window, from the target's first decoder step."""

from __future__ import annotations

import torch
from torch import Tensor

from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.tokens import WhisperTokens


@torch.inference_mode()
def detect_language(decoder: CachedWhisperDecoder, tokens: WhisperTokens, batch_size: int) -> list[str]:
    """Most likely language code of each window, from the decoder's scores after <|startoftranscript|>.

    ``decoder.begin`` must have been called with the windows' encoder outputs; ``tokens`` must be a
    multilingual vocabulary's.
    """
    codes = list(tokens.languages)
    ids = torch.tensor([tokens.languages[c] for c in codes], device=decoder.device)
    rows = torch.arange(batch_size)
    first = torch.full((batch_size, 1), tokens.sot, dtype=torch.long)
    logits: Tensor = decoder.forward_cached(rows, first, torch.zeros(batch_size, dtype=torch.long),
                                            torch.zeros((batch_size, 1), dtype=torch.long))[:, 0]
    best = logits[:, ids].argmax(dim=-1).tolist()
    return [codes[i] for i in best]
