"""A causal LM (llama and qwen2 families) over a preallocated key/value cache addressed by (row, position).

This is the text counterpart of ``whisper.decoder.CachedWhisperDecoder``: it reuses the transformers
model's own weights and modules (RMSNorm, rotary embedding, SiLU) and implements only the incremental
forward, so that keys and values are written at explicit positions. Rolling back a rejected draft is
then free, and every row of a batch sits at its own length.

Why not transformers' forward: on a CPU, a verify pass over k + 1 tokens runs a GEMM that costs several
one-token steps; here every linear map goes through ``whisper_spec.projection.Projection`` (GEMV for one
row, oneDNN-packed weights with q/k/v and gate/up fused for several rows). The packed copy doubles the
weight memory, so a draft model, which runs one token at a time, goes without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from whisper_spec.projection import Projection

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")  # RMSNorm, RoPE, grouped-query attention, SwiGLU
_INITIAL_CAPACITY = 256  # cache positions allocated per row at first; doubled whenever a pass needs more


class CachedCausalLM:
    """An ``IncrementalModel`` (see ``core.prefix_cache``) for a transformers llama/qwen2 causal LM."""

    def __init__(self, model: nn.Module, pack_weights: bool = True, output_ids: Sequence[int] | None = None,
                 int8: bool = False):
        """
        Args:
            model: a transformers ``LlamaForCausalLM``/``Qwen2ForCausalLM``/``MistralForCausalLM``.
            pack_weights: keep oneDNN-packed copies of the weights for cheap multi-token passes (CPU).
            output_ids: compute logits only for these token ids (all others get -inf): a draft whose
                output projection covers part of the vocabulary is cheaper per step, and still lossless
                because the target decides.
            int8: run the linear maps on int8 weights (a draft on a CPU; see ``whisper_spec.projection``).
        """
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model type {config.model_type!r} is not supported for incremental decoding; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self._apply_rope = apply_rotary_pos_emb
        backbone = model.model
        self.embed_tokens = backbone.embed_tokens
        self.layers = list(backbone.layers)
        self.norm = backbone.norm
        self.rotary_emb = backbone.rotary_emb
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scaling = self.layers[0].self_attn.scaling
        self.vocab_size = model.lm_head.weight.shape[0]
        self.qkv = [Projection([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                               pack_weights, int8)
                    for layer in self.layers]
        self.o = [Projection([layer.self_attn.o_proj], pack_weights, int8) for layer in self.layers]
        self.gate_up = [Projection([layer.mlp.gate_proj, layer.mlp.up_proj], pack_weights, int8)
                        for layer in self.layers]
        self.down = [Projection([layer.mlp.down_proj], pack_weights, int8) for layer in self.layers]
        self.output_ids = None
        head = model.lm_head
        if output_ids is not None:
            self.output_ids = torch.tensor(sorted(set(output_ids)), dtype=torch.long, device=head.weight.device)
            head = nn.Linear(head.in_features, len(self.output_ids), bias=False, device=head.weight.device,
                             dtype=head.weight.dtype)
            head.weight.data = model.lm_head.weight.detach()[self.output_ids]
        self.head = Projection([head], pack_weights, int8)
        self._k: list[Tensor] = []
        self._v: list[Tensor] = []

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def begin(self, batch_size: int, capacity: int = _INITIAL_CAPACITY) -> None:
        """Start a batch: an empty cache of ``capacity`` positions per row (grown on demand)."""
        shape = (batch_size, self.num_kv_heads, capacity, self.head_dim)
        self._k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self._v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]

    def _ensure_capacity(self, positions: int) -> None:
        capacity = self._k[0].shape[2]
        if positions <= capacity:
            return
        while capacity < positions:
            capacity *= 2
        pad = (0, 0, 0, capacity - self._k[0].shape[2])
        self._k = [F.pad(k, pad) for k in self._k]
        self._v = [F.pad(v, pad) for v in self._v]

    @torch.inference_mode()
    def forward_cached(self, rows: Tensor, tokens: Tensor, start: Tensor, output_index: Tensor) -> Tensor:
        """See ``IncrementalModel.forward_cached``: tokens [b, T] -> logits [b, N, V]."""
        if not self._k:
            raise RuntimeError("call begin(batch_size) before decoding")
        device = self.device
        b, t = tokens.shape
        start = start.to(device)
        keys = int(start.max()) + t
        self._ensure_capacity(keys)
        whole_batch = b == self._k[0].shape[0] and rows.tolist() == list(range(b))
        rows = rows.to(device)
        positions = start[:, None] + torch.arange(t, device=device)  # [b, T]
        # a token at position p sees its own row's cached positions 0..p (padding rows included: never read)
        mask = None
        if t > 1 or b > 1:
            mask = (torch.arange(keys, device=device)[None, None, :] <= positions[:, :, None])[:, None]
        x = self.embed_tokens(tokens.to(device))  # [b, T, D]
        cos, sin = self.rotary_emb(x, positions)
        row_index = rows[:, None]
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x).view(b * t, -1)
            q, k, v = self.qkv[i](h)
            q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._apply_rope(q, k, cos, sin)
            self._k[i][row_index, :, positions] = k.transpose(1, 2)
            self._v[i][row_index, :, positions] = v.view(b, t, self.num_kv_heads, self.head_dim)
            k_all, v_all = self._k[i][:, :, :keys], self._v[i][:, :, :keys]
            if not whole_batch:
                k_all, v_all = k_all.index_select(0, rows), v_all.index_select(0, rows)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=self.scaling,
                                                 enable_gqa=self.num_kv_heads != self.num_heads)
            x = x + self.o[i](out.transpose(1, 2).reshape(b * t, -1))[0].view(b, t, -1)
            h = layer.post_attention_layernorm(x).view(b * t, -1)
            gate, up = self.gate_up[i](h)
            x = x + self.down[i](layer.mlp.act_fn(gate) * up)[0].view(b, t, -1)
        output_index = output_index.to(device)
        n = output_index.shape[1]
        x = x.gather(1, output_index[:, :, None].expand(-1, -1, x.shape[-1]))
        logits = self.head(self.norm(x).view(b * n, -1))[0].view(b, n, -1)
        if self.output_ids is None:
            return logits
        full = torch.full((b, n, self.vocab_size), float("-inf"), device=device, dtype=logits.dtype)
        full[:, :, self.output_ids] = logits
        return full
