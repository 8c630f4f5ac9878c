"""A draft started from a smaller Whisper's decoder (the *donor*), re-wired to the TARGET's encoder outputs.

A smaller Whisper (tiny.en for base) already decodes speech: its decoder agrees with base on most
tokens, but it needs its own encoder run, and its 51,864-row output layer is most of the bytes a step
reads. This draft keeps the donor's decoder layers and drops both costs: it reads the target's encoder
outputs through an adapter into the donor's width (``EncoderAdapter``, fitted once by regression onto
the donor's own encoder outputs for the same audio, then fixed), and its token embedding holds only the
restricted rows (tied to the output layer, as Whisper ties them; see ``distill.model``), each started
from the donor's embedding of the same byte string (the two tokenizers share the byte-level alphabet,
so most tokens map one to one; the rest start at the mean of their pieces). Tokens outside the
restricted rows read one learned ``unknown`` row. Training (``distill.train``) then fits the decoder
layers, the cross-attention projections included, to the target's labels.

The adapter decides how much of the donor survives: a least-squares linear map from base's encoder
outputs loses much of the untrained donor's agreement with base, a linear map plus a per-frame MLP
keeps nearly all of it, more than the linear start reaches after long training, for a cost paid once
per window (evaluation/results/measurements-behind-the-defaults.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from whisper_spec.distill.model import DraftLayers
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.modeling import WhisperConfig, WhisperDecoderLayer


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


class EncoderAdapter(nn.Module):
    """The target's encoder outputs -> the donor's: a linear map plus a residual per-frame MLP.

    A frame of the donor's encoder output depends on the whole window through its attention, so no
    per-frame map is exact; the MLP recovers much of what a linear one misses (see the module notes).
    ``hidden`` 0 is the linear map alone.
    """

    def __init__(self, target_dim: int, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.linear = nn.Linear(target_dim, dim)
        if hidden:
            self.up = nn.Linear(target_dim, hidden)
            self.down = nn.Linear(hidden, dim)

    @property
    def weight(self) -> Tensor:
        """Where and in what precision the adapter runs (the linear map's weight)."""
        return self.linear.weight

    def forward(self, encoder_hidden: Tensor) -> Tensor:
        """[..., D_target] -> [..., d]"""
        mapped = self.linear(encoder_hidden)
        if self.hidden:
            mapped = mapped + self.down(nn.functional.gelu(self.up(encoder_hidden)))
        return mapped


class DonorDecoder(DraftLayers):
    """Layers of a donor Whisper's decoder over the target's encoder outputs; every weight is the draft's own."""

    features = False
    trains_cross = True  # the cross-attention projections are trained (their input, the adapter's output, is not)

    def __init__(self, donor_config, init_layers: Sequence[int], vocab_ids: Tensor, target_dim: int,
                 target_vocab_size: int, donor_name: str = "", adapter_hidden: int = 0):
        """An untrained-shape draft (weights zero or default); see ``from_donor`` for the real start.

        Args:
            donor_config: the donor's ``modeling.WhisperConfig`` (or a config dict, transformers' or its own).
            init_layers: which donor layers the draft's layers are (negative counts from the end).
            vocab_ids: [R] long, sorted full-vocabulary (target) ids of the output rows.
            target_dim: the target's encoder width (512 for base).
            target_vocab_size: the target's vocabulary size.
            donor_name: what the donor was loaded as (kept in checkpoints).
            adapter_hidden: the width of the encoder adapter's MLP (0: a linear map).
        """
        super().__init__()
        config = donor_config if isinstance(donor_config, WhisperConfig) else WhisperConfig.from_dict(donor_config)
        self.donor_config = dataclasses.asdict(config)
        self.donor_name = donor_name
        count = config.decoder_layers
        self.init_layers = tuple(i % count for i in init_layers)
        dim = config.d_model
        self.encoder_map = EncoderAdapter(target_dim, dim, adapter_hidden).requires_grad_(False)
        self.layers = nn.ModuleList([WhisperDecoderLayer(config) for _ in self.init_layers])
        self.layer_norm = nn.LayerNorm(dim)
        self.embed_positions = nn.Embedding(config.max_target_positions, dim)
        self.embed_tokens = RestrictedEmbedding(vocab_ids, target_vocab_size, dim)
        self.register_buffer("vocab_ids", vocab_ids.clone())
        self._set_heads()

    @property
    def output_weight(self) -> Tensor:
        """[R, d] the output layer: the embedding's rows without ``unknown`` (tied, as in Whisper)."""
        return self.embed_tokens.weight[:-1]

    @classmethod
    def from_donor(cls, donor, init_layers: Sequence[int], vocab_ids: Tensor, target, encoder_map: EncoderAdapter,
                   donor_name: str = "") -> DonorDecoder:
        """The starting point of training: the donor's layers, its embeddings mapped to target ids.

        Args:
            donor: the donor ``WhisperCheckpoint`` (tiny.en for base).
            target: the target ``WhisperCheckpoint``.
            encoder_map: the adapter from the target's encoder outputs to the donor's (``fit_encoder_map``);
                it stays fixed in training.
        """
        source = donor.model.model.decoder
        target_embedding = target.model.model.decoder.embed_tokens.weight
        model = cls(donor.model.config, init_layers, vocab_ids.cpu(), target_embedding.shape[1],
                    target_embedding.shape[0], donor_name or donor.name, encoder_map.hidden)
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
        return self.cross_from_input(self.encoder_input(encoder_hidden))

    def cross_from_input(self, mapped: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[B, S, d] the adapter's output -> per layer ([B, H, S, Dh] keys, values)."""
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


def fit_encoder_map(target, donor, windows: Sequence[np.ndarray], hidden: int = 2048, epochs: int = 8,
                    seed: int = 0) -> EncoderAdapter:
    """The adapter from the target's encoder outputs to the donor's, fitted on ``windows``.

    The linear map is the least-squares fit; the MLP (``hidden`` > 0) then fits what it leaves, with
    the linear map, by AdamW on mean squared error over the windows' frames, ``epochs`` passes.

    Args:
        windows: 16 kHz audio windows (each 28-s window gives 1500 frame pairs; 96 windows fit well).
    Returns:
        ``EncoderAdapter(D_target, d_donor, hidden)`` in float32 on the CPU.
    """
    if not windows:
        raise ValueError("fitting the encoder map needs at least one audio window")
    inputs, outputs = [], []
    with torch.inference_mode():
        for audio in windows:
            target_hidden, _ = encode_audio(target, [audio])
            donor_hidden, _ = encode_audio(donor, [audio])
            inputs.append(target_hidden[0].float().cpu())
            outputs.append(donor_hidden[0].float().cpu())
    x, y = torch.cat(inputs), torch.cat(outputs)
    ones = torch.ones(len(x), 1)
    solution = torch.linalg.lstsq(torch.cat([x, ones], dim=1), y).solution  # [D+1, d]: the last row is the bias
    adapter = EncoderAdapter(x.shape[1], y.shape[1], hidden)
    with torch.no_grad():
        adapter.linear.weight.copy_(solution[:-1].T)
        adapter.linear.bias.copy_(solution[-1])
        if hidden:  # the MLP starts at zero: the adapter starts as the linear fit
            adapter.down.weight.zero_()
            adapter.down.bias.zero_()
    if hidden:
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3, weight_decay=0.0)
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(1024):
                loss = nn.functional.mse_loss(adapter(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return adapter.requires_grad_(False).eval()
