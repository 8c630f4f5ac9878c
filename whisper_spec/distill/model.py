"""The distilled draft: a few decoder layers over the TARGET's encoder outputs, with a restricted output.

``DraftLayers`` is what every distilled draft shares (the teacher-forced pass training runs, the
restricted output); ``DistilledDecoder`` below starts from the target's own layers, and
``distill.donor.DonorDecoder`` from a smaller Whisper's decoder.

A ``DistilledDecoder``'s own weights are small: copies of one or two of the target's decoder layers
(distil-whisper starts from the first and last), a final layer norm and an output layer over only the
tokens the target emits on the training audio plus every special token. Token and position embeddings
are the target's, used in place and never saved. The cross-attention key/value projections stay the
target's (frozen): the draft reads the target's encoder outputs through them, and training precomputes
their output once.

A *feature-level* draft (``features=True``, after EAGLE: Li et al. 2024) also reads the target's own
final hidden state: the input at position t is ``fc([h_{t-1}, e_t])``, where h_{t-1} is the target's
(layer-normed) final hidden state at the previous position and e_t the token and position embedding,
and the draft's output is scored by the same output layer. The target's state carries most of what the
next token depends on, so one layer predicts the next token far better from it than from tokens alone.
Within a round, the states of the positions the draft itself proposed are not known yet (the target
has not read them): those positions read zeros, as a share of positions does in training
(``TrainOptions.state_dropout``). Feeding back the draft's own prediction of the state instead was
tried first and failed: one layer predicts the state poorly, and held-out agreement fell by half on
such inputs (evaluation/results/measurements-behind-the-defaults.md).

Row r of the output layer scores full-vocabulary id ``vocab_ids[r]``; the drafter scatters its scores
into a full-vocabulary row (``-inf`` elsewhere), so the target's logit rules and the core loop see
ordinary target ids, and verification stays full-vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DraftLayers(nn.Module):
    """What every distilled draft shares: Whisper decoder layers run teacher-forced over a restricted output.

    Subclasses own ``layers``, ``layer_norm``, ``embed_tokens``, ``embed_positions`` (transformers'
    ``WhisperDecoder`` names, so ``CachedWhisperDecoder`` runs them for inference unchanged),
    ``output_weight`` [R, D] and ``vocab_ids`` [R], and say how tokens and encoder outputs come in.
    """

    features = False  # reads the target's previous hidden state (feature-level draft)
    trains_cross = False  # True: the cross-attention projections train (their input, ``encoder_input``, stays fixed)

    def _set_heads(self) -> None:
        first = self.layers[0].self_attn
        self.num_heads, self.head_dim = first.num_heads, first.head_dim

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def encoder_input(self, encoder_hidden: Tensor) -> Tensor:
        """[B, S, D] the target's encoder outputs -> what the draft's cross-attention reads (here: the same)."""
        return encoder_hidden

    def input_embeds(self, tokens: Tensor, positions: Tensor, previous_hidden: Tensor | None) -> Tensor:
        raise NotImplementedError

    def cross_keys_values(self, encoder_hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def cross_from_input(self, mapped: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[B, S, d] ``encoder_input``'s output -> per layer ([B, H, S, Dh] keys, values) (drafts that train them)."""
        raise NotImplementedError

    def forward(self, tokens: Tensor, cross: Sequence[tuple[Tensor, Tensor]],
                previous_hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced pass (training): tokens [B, T] -> (restricted logits [B, T, R], hidden [B, T, D]).

        ``previous_hidden`` [B, T, D] (feature-level drafts): at t, the target's final hidden state at
        t - 1 (zeros at t = 0). ``hidden`` is the draft's own layer-normed final state, its prediction of
        the target's. The same arithmetic as ``CachedWhisperDecoder.forward_cached`` without a cache;
        right padding is harmless because attention is causal.
        """
        b, t = tokens.shape
        x = self.input_embeds(tokens, torch.arange(t, device=tokens.device).expand(b, -1), previous_hidden)
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
        hidden = self.layer_norm(x)
        return hidden @ self.output_weight.T, hidden


class DistilledDecoder(DraftLayers):
    """The draft's own weights, plus references to the target's embeddings (not registered, not saved).

    Attribute names follow transformers' ``WhisperDecoder`` (``embed_tokens``, ``embed_positions``,
    ``layers``, ``layer_norm``), so ``CachedWhisperDecoder`` runs it for inference unchanged.
    """

    def __init__(self, target_decoder: nn.Module, init_layers: Sequence[int], vocab_ids: Tensor,
                 features: bool = False):
        """
        Args:
            target_decoder: the target's transformers ``WhisperDecoder``.
            init_layers: which target layers the draft's layers start as, in order (negative counts from the end).
            vocab_ids: [R] long, sorted: the full-vocabulary id of each output row.
            features: a feature-level draft (reads the target's previous hidden state; see above).
        """
        super().__init__()
        count = len(target_decoder.layers)
        dim = target_decoder.embed_tokens.weight.shape[1]
        self.features = features
        if features:
            # starts as h_{t-1} + e_t: both halves pass through, and training learns how to mix them
            self.fc = nn.Linear(2 * dim, dim, device=target_decoder.embed_tokens.weight.device)
            with torch.no_grad():
                self.fc.weight.copy_(torch.cat([torch.eye(dim), torch.eye(dim)], dim=1))
                self.fc.bias.zero_()
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
        self._set_heads()

    def own_state(self) -> dict[str, Tensor]:
        """The weights a checkpoint must hold: everything trained, nothing of the target's."""
        return {k: v for k, v in self.state_dict().items()
                if not (".encoder_attn.k_proj." in k or ".encoder_attn.v_proj." in k)}

    @torch.no_grad()
    def cross_keys_values(self, encoder_hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[B, S, D] encoder outputs -> per layer ([B, H, S, Dh] keys, [B, H, S, Dh] values)."""
        return [(self._heads(layer.encoder_attn.k_proj(encoder_hidden)),
                 self._heads(layer.encoder_attn.v_proj(encoder_hidden))) for layer in self.layers]

    def input_embeds(self, tokens: Tensor, positions: Tensor, previous_hidden: Tensor | None) -> Tensor:
        """The first layer's input: tokens [B, T] at positions [B, T] (and h_{t-1} [B, T, D]) -> [B, T, D]."""
        # the target's embeddings are inputs here, not weights to train
        x = F.embedding(tokens, self.embed_tokens.weight.detach()) + self.embed_positions.weight.detach()[positions]
        if not self.features:
            return x
        if previous_hidden is None:
            raise ValueError("a feature-level draft needs the target's previous hidden states")
        return self.fc(torch.cat([previous_hidden.to(x.dtype), x], dim=-1))


def restricted_index(vocab_ids: Tensor, ids: Sequence[int]) -> Tensor:
    """Rows of the restricted output for the full-vocabulary ``ids`` that it has (others are dropped)."""
    ids = torch.tensor(sorted(set(ids)), dtype=torch.long, device=vocab_ids.device)
    position = torch.searchsorted(vocab_ids, ids).clamp_max(len(vocab_ids) - 1)
    return position[vocab_ids[position] == ids]


def to_restricted(vocab_ids: Tensor, tokens: Tensor) -> Tensor:
    """Full-vocabulary ids [...] -> restricted rows [...], -1 where the draft cannot emit the token."""
    position = torch.searchsorted(vocab_ids, tokens).clamp_max(len(vocab_ids) - 1)
    return torch.where(vocab_ids[position] == tokens, position, torch.full_like(position, -1))
