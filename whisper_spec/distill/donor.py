"""A draft started from a smaller Whisper's decoder (the *donor*), re-wired to the TARGET's encoder outputs.

A smaller Whisper (tiny.en for base) already decodes speech: its decoder agrees with base on most
tokens, but it needs its own encoder run, and its 51,864-row output layer is most of the bytes a step
reads. This draft keeps the donor's decoder layers and drops both costs: it reads the target's encoder
outputs through a learned linear map into the donor's width (started at the least-squares fit of the
donor's encoder outputs from the target's on the same audio), and its token embedding holds only the
restricted rows (tied to the output layer, as Whisper ties them; see ``distill.model``), each started
from the donor's embedding of the same byte string (the two tokenizers share the byte-level alphabet,
so most tokens map one to one; the rest start at the mean of their pieces). Tokens outside the
restricted rows read one learned ``unknown`` row. Training (``distill.train``) then fits everything,
the cross-attention projections included, to the target's labels.

On base, tiny.en's four layers agree with base's greedy token at 64% of held-out positions before any
training (base's own layer 0 with a restricted output: 3%) and at 85% after 1,000 steps on 80k labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer, WhisperPositionalEmbedding

from whisper_spec.distill.model import DraftLayers
from whisper_spec.whisper.features import encode_audio


class RestrictedEmbedding(nn.Module):
    """Token embedding over full-vocabulary ids with rows only for the restricted ids (+ one ``unknown``)."""

    def __init__(self, vocab_ids: Tensor, vocab_size: int, dim: int):
        """
        Args:
            vocab_ids: [R] long, sorted: the full-vocabulary id of each row.
            vocab_size: the target's vocabulary size (ids the embedding accepts).
            dim: embedding width.
        """
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(vocab_ids) + 1, dim))  # [R + 1, d]: the last is ``unknown``
        row_of = torch.full((vocab_size,), len(vocab_ids), dtype=torch.long)
        row_of[vocab_ids] = torch.arange(len(vocab_ids))
        self.register_buffer("row_of", row_of)  # [V] full id -> row

    def forward(self, tokens: Tensor) -> Tensor:
        """[...] full-vocabulary ids -> [..., d]"""
        return nn.functional.embedding(self.row_of[tokens], self.weight)


class DonorDecoder(DraftLayers):
    """Layers of a donor Whisper's decoder over the target's encoder outputs; every weight is the draft's own."""

    features = False
    trains_cross = True  # the cross-attention keys/values depend on trained weights: never cache them in training

    def __init__(self, donor_config, init_layers: Sequence[int], vocab_ids: Tensor, target_dim: int,
                 target_vocab_size: int, donor_name: str = ""):
        """An untrained-shape draft (weights zero or default); see ``from_donor`` for the real start.

        Args:
            donor_config: the donor's transformers ``WhisperConfig`` (or its ``to_dict()``).
            init_layers: which donor layers the draft's layers are (negative counts from the end).
            vocab_ids: [R] long, sorted full-vocabulary (target) ids of the output rows.
            target_dim: the target's encoder width (512 for base).
            target_vocab_size: the target's vocabulary size.
            donor_name: what the donor was loaded as (kept in checkpoints).
        """
        super().__init__()
        config = donor_config if isinstance(donor_config, WhisperConfig) else WhisperConfig(**donor_config)
        self.donor_config = config.to_dict()
        self.donor_name = donor_name
        count = config.decoder_layers
        self.init_layers = tuple(i % count for i in init_layers)
        dim = config.d_model
        self.encoder_map = nn.Linear(target_dim, dim)  # target encoder width -> donor width
        self.layers = nn.ModuleList([WhisperDecoderLayer(config, layer_idx=i) for i in range(len(self.init_layers))])
        self.layer_norm = nn.LayerNorm(dim)
        self.embed_positions = WhisperPositionalEmbedding(config.max_target_positions, dim)
        self.embed_tokens = RestrictedEmbedding(vocab_ids, target_vocab_size, dim)
        self.register_buffer("vocab_ids", vocab_ids.clone())
        self._set_heads()

    @property
    def output_weight(self) -> Tensor:
        """[R, d] the output layer: the embedding's rows without ``unknown`` (tied, as in Whisper)."""
        return self.embed_tokens.weight[:-1]

    @classmethod
    def from_donor(cls, donor, init_layers: Sequence[int], vocab_ids: Tensor, target, encoder_map: nn.Linear,
                   donor_name: str = "") -> "DonorDecoder":
        """The starting point of training: the donor's layers, its embeddings mapped to target ids.

        Args:
            donor: the donor ``WhisperCheckpoint`` (tiny.en for base).
            target: the target ``WhisperCheckpoint``.
            encoder_map: the starting map of the target's encoder outputs into the donor's width
                (``fit_encoder_map``).
        """
        source = donor.model.model.decoder
        target_embedding = target.model.model.decoder.embed_tokens.weight
        model = cls(donor.model.config, init_layers, vocab_ids.cpu(), target_embedding.shape[1],
                    target_embedding.shape[0], donor_name or donor.name)
        with torch.no_grad():
            for mine, index in zip(model.layers, model.init_layers):
                mine.load_state_dict(source.layers[index].state_dict())
            model.layer_norm.load_state_dict(source.layer_norm.state_dict())
            model.embed_positions.weight.copy_(source.embed_positions.weight)
            rows = donor_token_rows(donor, target.tokenizer, vocab_ids.tolist())
            model.embed_tokens.weight.copy_(torch.cat([rows, rows.mean(0, keepdim=True)]))
            model.encoder_map.load_state_dict(encoder_map.state_dict())
        return model

    def own_state(self) -> dict[str, Tensor]:
        """Every weight is the draft's own; the id-to-row table is rebuilt from ``vocab_ids``."""
        return {k: v for k, v in self.state_dict().items() if k != "embed_tokens.row_of"}

    def encoder_input(self, encoder_hidden: Tensor) -> Tensor:
        """[B, S, D_target] target encoder outputs -> [B, S, d] what the donor's cross-attention reads."""
        weight = self.encoder_map.weight
        return self.encoder_map(encoder_hidden.to(device=weight.device, dtype=weight.dtype))

    def cross_keys_values(self, encoder_hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[B, S, D_target] -> per layer ([B, H, S, Dh] keys, values); differentiable (trained here)."""
        mapped = self.encoder_input(encoder_hidden)
        return [(self._heads(layer.encoder_attn.k_proj(mapped)), self._heads(layer.encoder_attn.v_proj(mapped)))
                for layer in self.layers]

    def input_embeds(self, tokens: Tensor, positions: Tensor, previous_hidden: Tensor | None) -> Tensor:
        """Tokens [B, T] (target ids) at positions [B, T] -> [B, T, d]."""
        return self.embed_tokens(tokens) + self.embed_positions.weight[positions]


def donor_token_rows(donor, target_tokenizer, ids: Sequence[int]) -> Tensor:
    """[len(ids), d] the donor's embedding of each target id's byte string.

    Both tokenizers are byte-level BPE over the same alphabet, so a target token whose string is one
    donor token takes that row (special tokens match by name); any other takes the mean of the rows of
    the donor's tokens for its text.
    """
    embedding = donor.model.model.decoder.embed_tokens.weight.detach().float()
    tokenizer = donor.tokenizer
    unknown = tokenizer.unk_token_id
    rows = torch.empty(len(ids), embedding.shape[1])
    for r, token in enumerate(target_tokenizer.convert_ids_to_tokens(list(ids))):
        index = tokenizer.convert_tokens_to_ids(token)
        if index is None or index == unknown or index >= embedding.shape[0]:
            pieces = tokenizer.encode(target_tokenizer.convert_tokens_to_string([token]), add_special_tokens=False)
            rows[r] = embedding[pieces].mean(0) if pieces else embedding.mean(0)
        else:
            rows[r] = embedding[index]
    return rows


@torch.inference_mode()
def fit_encoder_map(target, donor, windows: Sequence[np.ndarray]) -> nn.Linear:
    """The least-squares linear map from the target's encoder outputs to the donor's, on ``windows``.

    Args:
        windows: 16 kHz audio windows (a few dozen 28-s windows give 1500 frame pairs each).
    Returns:
        ``nn.Linear(D_target, d_donor)`` in float32 on the CPU.
    """
    if not windows:
        raise ValueError("fitting the encoder map needs at least one audio window")
    inputs, outputs = [], []
    for audio in windows:
        target_hidden, _ = encode_audio(target, [audio])
        donor_hidden, _ = encode_audio(donor, [audio])
        inputs.append(target_hidden[0].float().cpu())
        outputs.append(donor_hidden[0].float().cpu())
    x = torch.cat(inputs)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # [N, D+1]: the last column fits the bias
    solution = torch.linalg.lstsq(x, torch.cat(outputs)).solution  # [D+1, d]
    linear = nn.Linear(x.shape[1] - 1, solution.shape[1])
    with torch.no_grad():
        linear.weight.copy_(solution[:-1].T)
        linear.bias.copy_(solution[-1])
    return linear

