"""Whisper's encoder and decoder in plain torch, laid out as transformers lays them out.

A transformers Whisper checkpoint (``config.json`` + safetensors) loads into these modules as it is: the
parameter names are transformers' own (``model.encoder.layers.0.self_attn.q_proj.weight``), so the
converted cache, a user's ``save_pretrained`` directory and a hub snapshot all load without transformers,
whose import costs several times what loading the weights does. The encoder runs the same operations in
the same order as transformers' SDPA encoder, so its outputs are the same bits on the same machine; the
decoder's incremental passes live in ``whisper.decoder`` (``CachedWhisperDecoder`` reads these layers'
weights), and the full pass here serves word alignment.

Modules are built on the meta device and take the loaded tensors as their parameters (``assign``): no
random initialisation, no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WhisperConfig", "WhisperAttention", "WhisperEncoder", "WhisperDecoder", "Whisper"]


class _InitialisedOffMeta:
    """Skips random initialisation of parameters on the meta device: a checkpoint's tensors replace them,
    and initialising meta tensors runs torch's Python reference ops, whose first use imports torch._dynamo
    (more time than loading every weight). Elsewhere (random models of real shapes) they initialise as usual."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Linear(_InitialisedOffMeta, nn.Linear):
    pass


class Conv1d(_InitialisedOffMeta, nn.Conv1d):
    pass


class Embedding(_InitialisedOffMeta, nn.Embedding):
    pass


class LayerNorm(_InitialisedOffMeta, nn.LayerNorm):
    pass


@dataclass(frozen=True)
class WhisperConfig:
    """The shapes of a Whisper model, with transformers' ``config.json`` names."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_layers: int
    decoder_attention_heads: int
    decoder_ffn_dim: int
    max_source_positions: int = 1500
    max_target_positions: int = 448
    scale_embedding: bool = False
    activation_function: str = "gelu"
    pad_token_id: int | None = None

    @classmethod
    def from_json(cls, path: str | Path) -> WhisperConfig:
        """Read a transformers ``config.json`` (fields this module does not use are ignored)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> WhisperConfig:
        """From a transformers config dict (fields this module does not use are ignored)."""
        if raw.get("model_type", "whisper") != "whisper":
            raise ValueError(f"{source}: model_type {raw.get('model_type')!r} is not a Whisper model")
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in names})
        if config.activation_function != "gelu":
            raise ValueError(f"{source}: activation {config.activation_function!r} is not supported (only gelu)")
        return config


class WhisperAttention(nn.Module):
    """Multi-head attention with transformers' parameter names; the key projection has no bias."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model, bias=False)
        self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)
        # the dtype the attention itself (scores, softmax, weighted sum) runs in; None: the activations'
        # (an int8 encoder may run it in bfloat16, see ``quantization.encoder_attention_dtype``)
        self.attention_dtype: torch.dtype | None = None

    def _heads(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, H, T, Dh]"""
        return x.view(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, x: Tensor, source: Tensor | None = None, causal: bool = False) -> Tensor:
        """x [B, T, D] attending to ``source`` [B, S, D] (default: itself) -> [B, T, D].

        The query is scaled before the product and SDPA runs with scale 1, as in transformers (the order
        of the scaling changes the rounding). A self-attention whose query, key and value maps were fused
        into ``qkv_proj`` (see ``quantization.fuse_self_attention``) runs that one map."""
        if source is None and "qkv_proj" in self._modules:
            q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        else:
            source = x if source is None else source
            q, k, v = self.q_proj(x), self.k_proj(source), self.v_proj(source)
        q, k, v = self._heads(q * self.scaling), self._heads(k), self._heads(v)
        if self.attention_dtype is not None:
            q, k, v = q.to(self.attention_dtype), k.to(self.attention_dtype), v.to(self.attention_dtype)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0, is_causal=causal and x.shape[1] > 1).to(x.dtype)
        return self.out_proj(out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous())


class WhisperEncoderLayer(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = WhisperAttention(d, config.encoder_attention_heads)
        self.self_attn_layer_norm = LayerNorm(d)
        self.fc1 = Linear(d, config.encoder_ffn_dim)
        self.fc2 = Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = LayerNorm(d)
        self.activation_fn = F.gelu

    def forward(self, x: Tensor) -> Tensor:
        """[B, S, D] -> [B, S, D], pre-norm attention then MLP."""
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        x = x + self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:  # as transformers does: keep float16 activations finite
            limit = torch.finfo(x.dtype).max - 1000
            x = torch.clamp(x, min=-limit, max=limit)
        return x


class WhisperDecoderLayer(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = WhisperAttention(d, config.decoder_attention_heads)
        self.self_attn_layer_norm = LayerNorm(d)
        self.encoder_attn = WhisperAttention(d, config.decoder_attention_heads)
        self.encoder_attn_layer_norm = LayerNorm(d)
        self.fc1 = Linear(d, config.decoder_ffn_dim)
        self.fc2 = Linear(config.decoder_ffn_dim, d)
        self.final_layer_norm = LayerNorm(d)
        self.activation_fn = F.gelu

    def forward(self, x: Tensor, encoder_hidden: Tensor) -> Tensor:
        """x [B, T, D] over encoder outputs [B, S, D] -> [B, T, D] (causal self-attention, no cache)."""
        x = x + self.self_attn(self.self_attn_layer_norm(x), causal=True)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), encoder_hidden)
        return x + self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        d = config.d_model
        self.conv1 = Conv1d(config.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = Embedding(config.max_source_positions, d)
        self.layers = nn.ModuleList([WhisperEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = LayerNorm(d)
        # True: a batch of windows is encoded one window at a time, so that each window's output is the
        # same bits whatever it is batched with (set for int8 maps, which amplify batched rounding)
        self.one_window_per_call = False

    def forward(self, features: Tensor) -> Tensor:
        """Log-mel features [B, n_mels, 2 * S] -> encoder outputs [B, S, D] (S = 1500 for 30 s)."""
        frames = 2 * self.embed_positions.num_embeddings
        if features.shape[-1] != frames:
            raise ValueError(f"the encoder takes {frames} mel frames (30 s), got {features.shape[-1]}")
        if self.one_window_per_call and features.shape[0] > 1:
            return torch.cat([self(window[None]) for window in features])
        # frames made contiguous first: an add takes its first input's layout, and a transposed residual
        # stream would make every later add and layer norm run strided (the same bits either way)
        x = F.gelu(self.conv2(F.gelu(self.conv1(features)))).permute(0, 2, 1).contiguous()
        x = x + self.embed_positions.weight
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class WhisperDecoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_positions = Embedding(config.max_target_positions, config.d_model)
        self.layers = nn.ModuleList([WhisperDecoderLayer(config) for _ in range(config.decoder_layers)])
        self.layer_norm = LayerNorm(config.d_model)
        self.embed_scale = config.d_model ** 0.5 if config.scale_embedding else 1.0

    def forward(self, tokens: Tensor, encoder_hidden: Tensor) -> Tensor:
        """Token ids [B, T] from position 0 over encoder outputs [B, S, D] -> final hidden states [B, T, D]."""
        x = self.embed_tokens(tokens) * self.embed_scale + self.embed_positions.weight[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, encoder_hidden)
        return self.layer_norm(x)


class _EncoderDecoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.encoder = WhisperEncoder(config)
        self.decoder = WhisperDecoder(config)


class Whisper(nn.Module):
    """Encoder and decoder under ``model`` (transformers' ``WhisperForConditionalGeneration`` names); the
    output projection is the token embedding (tied)."""

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = config
        self.model = _EncoderDecoder(config)

    @classmethod
    def from_state_dict(cls, config: WhisperConfig, state_dict: dict[str, Tensor]) -> Whisper:
        """Adopt ``state_dict``'s tensors as the parameters (no copy); raises ValueError naming what is
        missing or unexpected. A ``proj_out.weight`` must equal the embedding (untied models are not supported)."""
        with torch.device("meta"):
            model = cls(config)
        state_dict = dict(state_dict)
        head = state_dict.pop("proj_out.weight", None)
        expected = set(model.state_dict())
        missing, unexpected = expected - set(state_dict), set(state_dict) - expected
        if missing or unexpected:
            raise ValueError(f"not a Whisper state dict for this config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        model.load_state_dict(state_dict, assign=True)
        if head is not None and not torch.equal(head, model.model.decoder.embed_tokens.weight):
            raise ValueError("proj_out differs from the token embedding: untied Whisper models are not supported")
        return model.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.model.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.decoder.embed_tokens.weight.dtype
