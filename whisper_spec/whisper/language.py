"""Language detection: the most likely language of each window, from the target's first decoder step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.tokens import WhisperTokens


@torch.inference_mode()
def detect_language(decoder: CachedWhisperDecoder, tokens: WhisperTokens, rows: Sequence[int]) -> list[str]:
    """Most likely language code of the window in each of ``rows``, from the decoder's scores after
    <|startoftranscript|>.

    ``decoder.begin_rows`` must have been called for those rows with their windows' encoder outputs;
    ``tokens`` must be a multilingual vocabulary's. Writes position 0 of those rows' caches, which their
    prompts then overwrite.
    """
    batch_size = len(rows)
    codes = list(tokens.languages)
    ids = torch.tensor([tokens.languages[c] for c in codes], device=decoder.device)
    first = torch.full((batch_size, 1), tokens.sot, dtype=torch.long)
    index = torch.tensor(list(rows), dtype=torch.long)
    logits: Tensor = decoder.forward_cached(index, first, torch.zeros(batch_size, dtype=torch.long),
                                            torch.zeros((batch_size, 1), dtype=torch.long))[:, 0]
    best = logits[:, ids].argmax(dim=-1).tolist()
    return [codes[i] for i in best]
