"""The int8 decoder's passes are position-exact on real speech: the logits at a position are the same
bits from a prefill, a verify-sized pass, one-token steps, alone or in a batch with another window."""

from __future__ import annotations

import pytest
import torch
from conftest import LIBRIVOX

from whisper_spec import quantization
from whisper_spec.audio import load_audio
from whisper_spec.whisper.checkpoints import load_whisper
from whisper_spec.whisper.int8_decoder import Int8WhisperDecoder

pytestmark = pytest.mark.skipif(not quantization.can_run("cpu"), reason="needs torch built with oneDNN")

TEXTS = (" And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power",
         " It was a bright cold day in April, and the clocks were striking thirteen.")


@pytest.fixture(scope="module")
def windows():
    """(decoder, encoder outputs [2, 1500, 512] of two real clips, token ids [2, T] of real text)."""
    target = load_whisper("base", int8=True)
    clips = [load_audio(path) for path in sorted(LIBRIVOX.glob("*.wav"))[:2]]
    prompt = target.tokens.prompt(language="en", timestamps=False)
    ids = [prompt + target.tokenizer.encode(text) for text in TEXTS]
    length = min(len(i) for i in ids)
    with torch.inference_mode():
        hidden = target.model.model.encoder(target.feature_extractor(clips))
    return Int8WhisperDecoder(target.model.model.decoder), hidden, torch.tensor([i[:length] for i in ids])


def _pass(decoder, rows, tokens, start):
    """Logits [b, T, V] at every position of ``tokens`` [b, T] written from ``start`` [b]."""
    b, t = tokens.shape
    return decoder.forward_cached(torch.tensor(rows), tokens, torch.tensor(start),
                                  torch.arange(t).expand(b, t).contiguous())


def test_prefill_verify_passes_and_steps_give_the_same_bits(windows):
    decoder, hidden, tokens = windows
    row = tokens[:1]
    n = row.shape[1]
    decoder.begin(hidden[:1])
    prefill = _pass(decoder, [0], row, [0])
    decoder.begin(hidden[:1])
    steps = torch.cat([_pass(decoder, [0], row[:, i: i + 1], [i]) for i in range(n)], dim=1)
    assert torch.equal(prefill, steps)
    decoder.begin(hidden[:1])
    first = 4
    parts = [_pass(decoder, [0], row[:, :first], [0])]
    for start in range(first, n, 5):  # verify-sized passes, the last one shorter
        parts.append(_pass(decoder, [0], row[:, start: start + 5], [start]))
    assert torch.equal(torch.cat(parts, dim=1), prefill)
    assert prefill[0, -1].argmax() != prefill[0, -2].argmax() or n < 3  # real, varied logits


def test_a_row_gets_the_same_bits_batched_with_another_window(windows):
    decoder, hidden, tokens = windows
    n = tokens.shape[1]
    alone = []
    for row in range(2):
        decoder.begin(hidden[row: row + 1])
        alone.append(_pass(decoder, [0], tokens[row: row + 1], [0]))
    decoder.begin(hidden)
    # the two rows at different lengths: row 1 first catches up alone, then both go on together
    split = n - 6
    _pass(decoder, [0], tokens[:1, :split], [0])
    _pass(decoder, [1], tokens[1:, :split - 3], [0])
    lagging = _pass(decoder, [1], tokens[1:, split - 3: split], [split - 3])
    together = _pass(decoder, [0, 1], tokens[:, split:], [split, split])
    assert torch.equal(lagging[0], alone[1][0, split - 3: split])
    assert torch.equal(together[0], alone[0][0, split:])
    assert torch.equal(together[1], alone[1][0, split:])
