"""Word-level timestamps: the target's cross-attention on its alignment heads, aligned by dynamic time warping.

Whisper's method (openai/whisper ``timing.py``): run the decoder once over a window's final text, read
the cross-attention scores of the heads known to track time (``generation_config.alignment_heads``),
normalise and median-filter them, and find the monotonic token-to-frame path of least cost. A word
starts where the path first reaches its first token. The text is fixed before this runs, so word times
are the same with and without speculative decoding.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from whisper_spec.whisper.timestamps import TIME_PRECISION

MEDIAN_FILTER_WIDTH = 7  # frames: smooths the attention maps along time, as Whisper does
PREPEND_PUNCTUATION = "\"'“¿([{-"  # glued to the word after them
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"  # glued to the word before them
SENTENCE_END_MARKS = ".。!！?？"
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}  # words are split on characters, not spaces


@dataclass(frozen=True)
class WordTiming:
    word: str  # with its leading space, as the tokenizer spells it
    tokens: tuple[int, ...]
    start: float  # seconds from the start of the window
    end: float
    probability: float  # mean probability of the word's tokens


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The monotonic path of least total cost through ``cost`` [N, M]: (row indices, column indices).

    Whisper's recursion and tie-breaking, computed one anti-diagonal at a time (cells on a diagonal
    depend only on the two before it).
    """
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = -np.ones((n + 1, m + 1), dtype=np.int8)
    total[0, 0] = 0
    x = cost.astype(np.float32)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2)).astype(np.int8)
        total[i, j] = x[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    path = np.array(path[::-1])
    return path[:, 0], path[:, 1]


def _median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of ``width`` along the last axis of [H, T, F], reflect-padded."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    return F.pad(x, (pad, pad), mode="reflect").unfold(-1, width, 1).median(dim=-1).values


def split_words(tokenizer, tokens: Sequence[int], eot_token_id: int, language: str) -> list[tuple[str, list[int]]]:
    """Group token ids into words (a token that starts with a space, punctuation or a special starts a word)."""
    pieces: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for token in tokens:
        current.append(token)
        text = tokenizer.decode(current)
        if "\ufffd" not in text:  # a whole character: multi-byte characters span tokens
            pieces.append((text, current))
            current = []
    if language in NO_SPACE_LANGUAGES:
        return pieces
    words: list[tuple[str, list[int]]] = []
    for text, ids in pieces:
        starts_word = ids[0] >= eot_token_id or text.startswith(" ") or text.strip() in string.punctuation
        if starts_word or not words:
            words.append((text, list(ids)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + ids)
    return words


@torch.inference_mode()
def align_words(checkpoint, encoder_output: Tensor, prefix: Sequence[int], text_tokens: Sequence[int],
                num_frames: int, language: str) -> list[WordTiming]:
    """Word timings (seconds from the window start) for ``text_tokens`` spoken in one window.

    Args:
        checkpoint: the target ``WhisperCheckpoint`` (its ``generation_config.alignment_heads`` are used).
        encoder_output: [S, D] the target's encoder output for the window.
        prefix: the window's no-timestamps decoder prompt (start of transcript ... <|notimestamps|>).
        text_tokens: the window's text ids (no timestamps, no end-of-text).
        num_frames: mel frames (10 ms each) of real audio in the window; attention past them is ignored.
    """
    if not text_tokens:
        return []
    tokenizer = checkpoint.tokenizer
    eot = checkpoint.tokens.eot
    decoder = checkpoint.model.model.decoder
    heads = [tuple(h) for h in checkpoint.generation_config.alignment_heads]
    layers = sorted({layer for layer, _ in heads})
    queries: dict[int, Tensor] = {}
    hooks = [decoder.layers[layer].encoder_attn_layer_norm.register_forward_hook(
        lambda _module, _inputs, output, layer=layer: queries.__setitem__(layer, output))
        for layer in layers]
    tokens = torch.tensor([[*prefix, *text_tokens, eot]], device=encoder_output.device)
    hidden = encoder_output[None].to(decoder.embed_tokens.weight.dtype)
    try:
        last = decoder(tokens, hidden)[0]
    finally:
        for hook in hooks:
            hook.remove()
    first_text = len(prefix) - 1  # the position of <|notimestamps|> predicts the first text token
    logits = last[first_text: first_text + len(text_tokens)].float() @ decoder.embed_tokens.weight[:eot].float().T
    probabilities = logits.softmax(dim=-1)[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].cpu().numpy()

    maps = []
    for layer, head in heads:
        attention = decoder.layers[layer].encoder_attn
        head_dim = attention.head_dim
        q = attention.q_proj(queries[layer][0]).view(tokens.shape[1], -1, head_dim)[:, head].float()
        k = attention.k_proj(hidden[0]).view(hidden.shape[1], -1, head_dim)[:, head].float()
        maps.append((q @ k.T) * head_dim ** -0.5)
    weights = torch.stack(maps)[:, :, : num_frames // 2].softmax(dim=-1)  # [heads, tokens, frames]
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = _median_filter((weights - mean) / std, MEDIAN_FILTER_WIDTH)
    matrix = weights.mean(dim=0)[first_text:-1]  # rows: <|notimestamps|>'s successor ... the last text token, eot
    text_indices, time_indices = dtw(-matrix.cpu().numpy())

    words = split_words(tokenizer, [*text_tokens, eot], eot, language)
    if len(words) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(ids) for _, ids in words[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] * TIME_PRECISION
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    return [WordTiming(text, tuple(ids), float(start), float(end), float(np.mean(probabilities[i:j])))
            for (text, ids), start, end, i, j in zip(words[:-1], starts, ends, boundaries[:-1], boundaries[1:])]


def tidy_words(words: list[WordTiming]) -> list[WordTiming]:
    """Whisper's clean-up: cap overlong words at sentence ends, glue punctuation to its word."""
    durations = np.array([w.end - w.start for w in words])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    items = [[w.word, list(w.tokens), w.start, w.end, w.probability] for w in words]
    if len(durations):
        for i in range(1, len(items)):
            if items[i][3] - items[i][2] > longest:
                if items[i][0] in SENTENCE_END_MARKS:
                    items[i][3] = items[i][2] + longest
                elif items[i - 1][0] in SENTENCE_END_MARKS:
                    items[i][2] = items[i][3] - longest
    # prepended punctuation joins the following word, scanning right to left
    i, j = len(items) - 2, len(items) - 1
    while i >= 0:
        if items[i][0].startswith(" ") and items[i][0].strip() in PREPEND_PUNCTUATION:
            items[j][0] = items[i][0] + items[j][0]
            items[j][1] = items[i][1] + items[j][1]
            items[i][0], items[i][1] = "", []
        else:
            j = i
        i -= 1
    # appended punctuation joins the preceding word, scanning left to right
    i, j = 0, 1
    while j < len(items):
        if not items[i][0].endswith(" ") and items[j][0] in APPEND_PUNCTUATION:
            items[i][0] += items[j][0]
            items[i][1] = items[i][1] + items[j][1]
            items[j][0], items[j][1] = "", []
        else:
            i = j
        j += 1
    return [WordTiming(word, tuple(ids), start, end, p) for word, ids, start, end, p in items]
