"""A Whisper checkpoint's tokenizer, read from its ``tokenizer.json`` with the ``tokenizers`` library alone.

transformers' ``WhisperTokenizerFast`` wraps the same ``tokenizers.Tokenizer``; importing transformers
to build it costs more than the rest of a cold start. This class offers the part of its interface the
package uses (``encode``/``decode`` of text, ids <-> tokens, the vocabulary and its special ids) and gives
the same results (tests/test_checkpoints.py compares the two on real transcripts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["WhisperTokenizer"]

_TIMESTAMP = re.compile(r"<\|(\d+\.\d+)\|>")


class WhisperTokenizer:
    """Byte-level BPE of a Whisper vocabulary, special and timestamp tokens included."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self.all_special_ids = sorted(i for i, token in added.items() if token.special)
        self.eos_token_id = self.unk_token_id = tokenizer.token_to_id("<|endoftext|>")

    @classmethod
    def from_file(cls, path: str | Path) -> WhisperTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of ``text`` (with ``add_special_tokens``, the tokenizer.json's own template is applied)."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; timestamp tokens are dropped from the text, as transformers does."""
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _TIMESTAMP.sub("", text)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self._tokenizer.token_to_id(tokens)
        return [self._tokenizer.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tokenizer.decoder.decode(tokens)
