"""Shared fixtures: small random models with real caches, oracle drafters, and the real-speech assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from whisper_spec.core.protocols import DraftRequest, Proposal

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (large checkpoints)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: needs --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class HashModel:
    """An IncrementalModel whose logits at position p depend on every token cached at 0..p of its row.

    Its cache holds token ids by (row, position); logits are read back from the cache, never from the
    caller's sequences, so a cache that is out of step with the committed sequence changes the output.
    """

    def __init__(self, vocab: int, batch: int, seed: int, capacity: int = 256):
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.table = torch.randn(1009, vocab, generator=g) * 3
        self.weights = torch.randint(1, 1009, (capacity,), generator=g)
        self.cache = torch.zeros((batch, capacity), dtype=torch.long)
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    def forward_cached(self, rows, tokens, start, output_index):
        self.calls += 1
        b, t = tokens.shape
        positions = start[:, None] + torch.arange(t)
        self.cache[rows[:, None], positions] = tokens
        out = torch.empty(b, output_index.shape[1], self.vocab)
        for i in range(b):
            for j, idx in enumerate(output_index[i].tolist()):
                p = int(positions[i, idx])
                h = int((self.cache[rows[i], : p + 1] * self.weights[: p + 1]).sum()) % 1009
                out[i, j] = self.table[h]
        return out


class OracleDrafter:
    """Proposes the known greedy continuation (right=True), or a token that is never the argmax."""

    def __init__(self, continuations: dict[int, list[int]], prompt_lengths: list[int], vocab: int, right: bool):
        self.continuations = continuations
        self.prompt_lengths = prompt_lengths
        self.vocab = vocab
        self.right = right

    def propose(self, request: DraftRequest) -> Proposal:
        tokens = []
        for row, seq in zip(request.rows.tolist(), request.sequences):
            done = len(seq) - self.prompt_lengths[row]
            truth = self.continuations[row][done: done + request.k]
            tokens.append(truth if self.right else [(t + 1) % self.vocab for t in truth])
        return Proposal(tokens=tokens, forward_calls=0)


@pytest.fixture
def hash_model_factory():
    return HashModel
