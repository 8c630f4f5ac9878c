"""The distilled draft: a few decoder layers over the TARGET's encoder outputs, with a restricted output.

Its own weights are small: copies of one or two of the target's decoder layers (distil-whisper starts
from the first and last), a final layer norm and an output layer over only the tokens the target emits
on the training audio plus every special token. Token and position embeddings are the target's, used
in place and never saved. The cross-attention key/value projections stay the target's (frozen): the
draft reads the target's encoder outputs through them, and training precomputes their output once.

Row r of the output layer scores full-vocabulary id ``vocab_ids[r]``; the drafter scatters its scores
into a full-vocabulary row (``-inf`` elsewhere), so the target's logit rules and the core loop see
ordinary target ids, and verification stays full-vocabulary.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DistilledDecoder(nn.Module):
    """The draft's own weights, plus references to the target's embeddings (not registered, not saved).

    Attribute names follow transformers' ``WhisperDecoder`` (``embed_tokens``, ``embed_positions``,
    ``layers``, ``layer_norm``), so ``CachedWhisperDecoder`` runs it for inference unchanged.
    """

    def __init__(self, target_decoder: nn.Module, init_layers: Sequence[int], vocab_ids: Tensor):
        """
        Args:
            target_decoder: the target's transformers ``WhisperDecoder``.
            init_layers: which target layers the draft's layers start as, in order (negative counts from the end).
            vocab_ids: [R] long, sorted: the full-vocabulary id of each output row.
        """
        super().__init__()
        count = len(target_decoder.layers)
        self.init_layers = tuple(i % count for i in init_layers)
        self.layers = nn.ModuleList([copy.deepcopy(target_decoder.layers[i]) for i in self.init_layers])
        self.layer_norm = copy.deepcopy(target_decoder.layer_norm)
        embedding = target_decoder.embed_tokens.weight
        self.output_weight = nn.Parameter(embedding.detach()[vocab_ids.to(embedding.device)].clone())
        self.register_buffer("vocab_ids", vocab_ids.to(embedding.device).clone())
        for layer in self.layers:  # the target's view of its encoder outputs, shared and frozen
            layer.encoder_attn.k_proj.requires_grad_(False)
            layer.encoder_attn.v_proj.requires_grad_(False)
        # plain attributes, not submodules: the target owns them
        object.__setattr__(self, "embed_tokens", target_decoder.embed_tokens)
        object.__setattr__(self, "embed_positions", target_decoder.embed_positions)
        first = self.layers[0].self_attn
        self.num_heads, self.head_dim = first.num_heads, first.head_dim

    def own_state(self) -> dict[str, Tensor]:
        """The weights a checkpoint must hold: everything trained, nothing of the target's."""
        return {k: v for k, v in self.state_dict().items()
                if not (".encoder_attn.k_proj." in k or ".encoder_attn.v_proj." in k)}

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    @torch.no_grad()
    def cross_keys_values(self, encoder_hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[B, S, D] encoder outputs -> per layer ([B, H, S, Dh] keys, [B, H, S, Dh] values)."""
        return [(self._heads(layer.encoder_attn.k_proj(encoder_hidden)),
                 self._heads(layer.encoder_attn.v_proj(encoder_hidden))) for layer in self.layers]

    def forward(self, tokens: Tensor, cross: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Teacher-forced pass (training): tokens [B, T] -> restricted logits [B, T, R].

        The same arithmetic as ``CachedWhisperDecoder.forward_cached`` without a cache; right padding
        is harmless because attention is causal.
        """
        b, t = tokens.shape
        # the target's embeddings are inputs here, not weights to train
        x = F.embedding(tokens, self.embed_tokens.weight.detach()) + self.embed_positions.weight.detach()[:t]
        for layer, (k_enc, v_enc) in zip(self.layers, cross):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            out = F.scaled_dot_product_attention(self._heads(attn.q_proj(h)), self._heads(attn.k_proj(h)),
                                                 self._heads(attn.v_proj(h)), is_causal=True)
            x = x + attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))
            h = layer.encoder_attn_layer_norm(x)
            out = F.scaled_dot_product_attention(self._heads(layer.encoder_attn.q_proj(h)), k_enc, v_enc)
            x = x + layer.encoder_attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        return self.layer_norm(x) @ self.output_weight.T


def restricted_index(vocab_ids: Tensor, ids: Sequence[int]) -> Tensor:
    """Rows of the restricted output for the full-vocabulary ``ids`` that it has (others are dropped)."""
    ids = torch.tensor(sorted(set(ids)), dtype=torch.long, device=vocab_ids.device)
    position = torch.searchsorted(vocab_ids, ids).clamp_max(len(vocab_ids) - 1)
    return position[vocab_ids[position] == ids]


def to_restricted(vocab_ids: Tensor, tokens: Tensor) -> Tensor:
    """Full-vocabulary ids [...] -> restricted rows [...], -1 where the draft cannot emit the token."""
    position = torch.searchsorted(vocab_ids, tokens).clamp_max(len(vocab_ids) - 1)
    return torch.where(vocab_ids[position] == tokens, position, torch.full_like(position, -1))
