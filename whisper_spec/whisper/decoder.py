"""Whisper's decoder over a preallocated key/value cache addressed by (row, position).

transformers' own cache appends one step at a time and needs explicit cropping to undo a rejected draft;
here keys and values are written at explicit positions, so a rejected draft is forgotten for free (the
next pass overwrites its slots) and every row of a batch can sit at its own length. Cross-attention keys
and values are computed once per window (``begin``) and reused by every pass. The module reuses the
transformers decoder's own weights (no copy), optionally only some of its layers: a draft made of the
target's first and last layers is one of the draft kinds. Linear maps go through ``Projection``, which
keeps a multi-token verify pass cheap on a CPU (see ``whisper_spec.projection``); their weights are
taken as they are when the decoder is built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from whisper_spec.cuda_graphs import StepGraphs
from whisper_spec.memory import trim_heap
from whisper_spec.projection import Projection, can_quantize, has_native_bfloat16
from whisper_spec.whisper.modeling import Linear

# the longest pass run as a fixed-shape step (longer ones, such as a long previous-text prompt, run as
# they are): one CUDA graph per (tokens, outputs) shape up to this
MAX_STATIC_TOKENS = 16


class CachedWhisperDecoder(nn.Module):
    """An ``IncrementalModel`` (see ``core.prefix_cache``) for a transformers ``WhisperDecoder``."""

    def __init__(self, decoder: nn.Module, layers: Sequence[int] | None = None, output_weight: Tensor | None = None,
                 int8: bool = False, static_steps: bool = False):
        """
        Args:
            decoder: a transformers ``WhisperDecoder`` (``model.model.decoder``).
            layers: which of its layers to run, in order (default all).
            output_weight: [V, D] output projection (default: the tied token embedding).
            int8: run the linear maps on int8 weights and keep the cross-attention keys and values in
                bfloat16 (drafts on a CPU: a draft's precision changes only what it proposes; see
                ``whisper_spec.projection``).
            static_steps: run passes of up to ``MAX_STATIC_TOKENS`` tokens as fixed-shape steps of the
                whole batch, each shape captured once as a CUDA graph on a GPU (see
                ``whisper_spec.cuda_graphs``). On a CPU they run eagerly and cost more than the default
                path (they attend over every cache slot): there they serve only to test the GPU path.
        """
        super().__init__()
        self.embed_tokens = decoder.embed_tokens
        self.embed_positions = decoder.embed_positions
        chosen = range(len(decoder.layers)) if layers is None else layers
        self.layers = nn.ModuleList([decoder.layers[i] for i in chosen])
        self.layer_norm = decoder.layer_norm
        self.output_weight = self.embed_tokens.weight if output_weight is None else output_weight
        with torch.device("meta"):  # no random initialisation: the weight is the output weight itself
            head = Linear(self.output_weight.shape[1], self.output_weight.shape[0], bias=False)
        head.weight = nn.Parameter(self.output_weight.detach(), requires_grad=False)  # shared, not copied
        self._int8 = int8
        self._head = self._projection([head])
        self._qkv = [self._projection([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
                     for layer in self.layers]
        self._self_out = [self._projection([layer.self_attn.out_proj]) for layer in self.layers]
        self._cross_q = [self._projection([layer.encoder_attn.q_proj]) for layer in self.layers]
        self._cross_out = [self._projection([layer.encoder_attn.out_proj]) for layer in self.layers]
        self._fc1 = [self._projection([layer.fc1]) for layer in self.layers]
        self._fc2 = [self._projection([layer.fc2]) for layer in self.layers]
        # A draft step reads its cross-attention keys and values (1500 frames a layer) as often as its
        # weights: bfloat16 halves those bytes, where the CPU computes in bfloat16 (emulated, it is slower).
        device = self.output_weight.device
        self.cross_dtype = (torch.bfloat16 if int8 and can_quantize(device, self.output_weight.dtype)
                            and has_native_bfloat16(device) else self.output_weight.dtype)
        first = self.layers[0].self_attn
        self.num_heads = first.num_heads
        self.head_dim = first.head_dim
        self.max_positions = self.embed_positions.weight.shape[0]
        self._self_k: list[Tensor] = []
        self._self_v: list[Tensor] = []
        self._cross_k: list[Tensor] = []
        self._cross_v: list[Tensor] = []
        # [B, P+1, D] the final (layer-normed) hidden state at every position read, when ``begin`` asks
        # for it: what a feature-level draft predicts from (see ``distill.model``)
        self.hidden_states: Tensor | None = None
        self._steps = StepGraphs(capture=self.device.type == "cuda") if static_steps else None
        trim_heap()  # packing fused and freed copies of every weight: hand the freed memory back

    def _projection(self, linears: Sequence[nn.Linear]) -> Callable[[Tensor], list[Tensor]]:
        """The kernel of one (fused) linear map: [n, D_in] -> one [n, D_out_i] tensor per linear."""
        return Projection(linears, int8=self._int8)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def static_steps(self) -> bool:
        return self._steps is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def _heads(self, x: Tensor) -> Tensor:
        """[b, T, D] -> [b, H, T, Dh]"""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def begin(self, encoder_hidden: Tensor, record_hidden: bool = False) -> None:
        """Start a batch of windows, one per row: ``reserve`` the rows, then ``begin_rows`` all of them.

        Args:
            encoder_hidden: [B, S, D] encoder outputs (S = 1500 for 30-second windows).
            record_hidden: keep every position's final hidden state in ``hidden_states`` [B, P+1, D].
        """
        batch, frames, _ = encoder_hidden.shape
        self.reserve(batch, frames, record_hidden)
        self.begin_rows(range(batch), encoder_hidden)

    @torch.inference_mode()
    def reserve(self, batch: int, frames: int, record_hidden: bool = False) -> None:
        """Room for ``batch`` rows of windows of ``frames`` encoder frames; no row holds a window yet.

        The same shape as the last reservation reuses its buffers in place (what a captured CUDA graph
        reads must stay at its address); a new window's reads never reach stale slots, since a token
        attends only to positions of its own window written before it.
        """
        specs = self._cache_specs(batch, frames)
        caches = (self._self_k, self._self_v, self._cross_k, self._cross_v)
        if not all(cache and (cache[0].shape, cache[0].dtype) == spec for cache, spec in zip(caches, specs)):
            (self._self_k, self._self_v, self._cross_k, self._cross_v) = (
                [torch.zeros(shape, device=self.device, dtype=dtype) for _ in self.layers] for shape, dtype in specs)
            if self._steps is not None:
                self._steps.clear()
        self.hidden_states = (torch.zeros(batch, self.max_positions + 1, self.layer_norm.normalized_shape[0],
                                          device=self.device, dtype=self.dtype) if record_hidden else None)

    def _cache_specs(self, batch: int, frames: int) -> list[tuple[torch.Size, torch.dtype]]:
        """(shape, dtype) of one layer's self-attention keys, values, then cross-attention keys, values."""
        # one slot past the last position: a scratch slot that padding tokens write to (never attended)
        own = torch.Size((batch, self.num_heads, self.max_positions + 1, self.head_dim))
        cross = torch.Size((batch, self.num_heads, frames, self.head_dim))
        return [(own, self.dtype), (own, self.dtype), (cross, self.cross_dtype), (cross, self.cross_dtype)]

    @torch.inference_mode()
    def begin_rows(self, rows: Sequence[int], encoder_hidden: Tensor) -> None:
        """Rows ``rows`` of the reservation start new windows: their cross-attention K/V from
        ``encoder_hidden`` [n, S, D]; their recorded hidden states, if kept, start at zero. The other
        rows go on undisturbed (windows join a running batch)."""
        rows = list(rows)
        encoder_hidden = encoder_hidden.to(device=self.device, dtype=self.dtype)
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        whole = rows == list(range(self._cross_k[0].shape[0]))
        for i, layer in enumerate(self.layers):
            # k_proj and v_proj by name: the decoder may be transformers' own, which has no fused map
            attention = layer.encoder_attn
            self._store_cross(i, None if whole else index, attention.k_proj(encoder_hidden),
                              attention.v_proj(encoder_hidden))
        if self.hidden_states is not None:
            self.hidden_states[index] = 0

    def _store_cross(self, i: int, rows: Tensor | None, k: Tensor, v: Tensor) -> None:
        """Layer i's cross-attention keys and values [n, S, D] go to its caches at batch rows ``rows`` [n]
        (None: every row, n = B)."""
        k, v = self._heads(k), self._heads(v)
        if rows is None:
            self._cross_k[i].copy_(k)
            self._cross_v[i].copy_(v)
        else:
            self._cross_k[i].index_copy_(0, rows, k.to(self._cross_k[i].dtype))
            self._cross_v[i].index_copy_(0, rows, v.to(self._cross_v[i].dtype))

    @torch.inference_mode()
    def forward_cached(self, rows: Tensor, tokens: Tensor, start: Tensor, output_index: Tensor,
                       inputs_embeds: Tensor | None = None) -> Tensor:
        """See ``IncrementalModel.forward_cached``: tokens [b, T] -> logits [b, N, V].

        ``inputs_embeds`` [b, T, D]: the first layer's input in place of the token and position
        embeddings (a feature-level draft builds its own).
        """
        if not self._self_k:
            raise RuntimeError("call begin(encoder_hidden) before decoding")
        device = self.device
        b, t = tokens.shape
        if (self._steps is not None and inputs_embeds is None and self.hidden_states is None
                and t <= MAX_STATIC_TOKENS):
            return self._static_call(rows.to(device), tokens.to(device), start.to(device), output_index.to(device))
        tokens = tokens.to(device)
        first = int(start.max()) if b > 1 else int(start[0])
        keys = min(first + t, self.max_positions + 1)
        # One row inside the window (a batch of one, and every draft step of it): the cache is read and
        # written through slices. A small draft's step costs less than the advanced indexing, attention
        # mask and row gathers the general case needs.
        one_row = b == 1 and first + t <= self.max_positions
        positions = start.to(device)[:, None] + torch.arange(t, device=device)  # [b, T]
        mask = None
        if t > 1 or not one_row:
            # token at position p sees cached positions 0..p of its own row
            mask = (torch.arange(keys, device=device)[None, None, :] <= positions[:, :, None])[:, None]
        if one_row:
            row = int(rows[0])

            def cache(i: int, k_new: Tensor, v_new: Tensor):
                self._self_k[i][row, :, first: first + t] = k_new[0].transpose(0, 1)
                self._self_v[i][row, :, first: first + t] = v_new[0].transpose(0, 1)
                return (self._self_k[i][row: row + 1, :, :keys], self._self_v[i][row: row + 1, :, :keys],
                        self._cross_k[i][row: row + 1], self._cross_v[i][row: row + 1])
        else:
            whole_batch = b == self._self_k[0].shape[0] and rows.tolist() == list(range(b))
            rows = rows.to(device)
            row_index = rows[:, None]
            # Positions past the window are padding: they write to the scratch slot and read clamped embeddings.
            write_positions = positions.clamp_max(self.max_positions)

            def cache(i: int, k_new: Tensor, v_new: Tensor):
                self._self_k[i][row_index, :, write_positions] = k_new
                self._self_v[i][row_index, :, write_positions] = v_new
                k_all, v_all = self._self_k[i][:, :, :keys], self._self_v[i][:, :, :keys]
                k_enc, v_enc = self._cross_k[i], self._cross_v[i]
                if not whole_batch:
                    k_all, v_all = k_all.index_select(0, rows), v_all.index_select(0, rows)
                    k_enc, v_enc = k_enc.index_select(0, rows), v_enc.index_select(0, rows)
                return k_all, v_all, k_enc, v_enc
        if inputs_embeds is None:
            x = self.embed_tokens(tokens) + self.embed_positions.weight[positions.clamp_max(self.max_positions - 1)]
        else:
            x = inputs_embeds.to(device=device, dtype=self.dtype)
        x = self._layers(x, mask, cache)
        if self.hidden_states is not None:
            x = self.layer_norm(x)
            if one_row:
                self.hidden_states[row, first: first + t] = x[0]
            else:
                self.hidden_states[row_index, write_positions] = x
        x = x.gather(1, output_index.to(device)[:, :, None].expand(-1, -1, x.shape[-1]))
        if self.hidden_states is None:
            x = self.layer_norm(x)
        return self._logits(x)

    def _layers(self, x: Tensor, mask: Tensor | None, cache) -> Tensor:
        """The decoder layers: x [b, T, D] -> [b, T, D] (before the final layer norm).

        ``cache(i, k_new, v_new)`` writes layer i's new keys and values ([b, T, H, Dh] each) and returns
        what the queries attend to: self-attention keys and values [b, H, K, Dh] (``mask`` [b, 1, T, K]
        says which of them each query sees) and cross-attention keys and values [b, H, S, Dh].
        """
        b, t, _ = x.shape
        n = b * t
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x).view(n, -1)
            q, k_new, v_new = self._qkv[i](h)
            q = self._heads(q.view(b, t, -1))
            k_all, v_all, k_enc, v_enc = cache(i, *self._self_cache_entries(
                k_new.view(b, t, self.num_heads, self.head_dim), v_new.view(b, t, self.num_heads, self.head_dim)))
            out = self._attend(q, k_all, v_all, mask)
            x = x + self._self_out[i](out.transpose(1, 2).reshape(n, -1))[0].view(b, t, -1)

            h = layer.encoder_attn_layer_norm(x).view(n, -1)
            q = self._heads(self._cross_q[i](h)[0].view(b, t, -1))
            out = self._attend_cross(q, k_enc, v_enc).to(x.dtype)
            x = x + self._cross_out[i](out.transpose(1, 2).reshape(n, -1))[0].view(b, t, -1)

            h = layer.final_layer_norm(x).view(n, -1)
            x = x + self._fc2[i](self._activation(layer, self._fc1[i](h)[0]))[0].view(b, t, -1)
        return x

    def _self_cache_entries(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """New self-attention keys and values [b, T, H, Dh] -> what the cache keeps of them."""
        return k, v

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Self-attention: q [b, H, T, Dh] over cached keys and values -> [b, H, T, Dh]."""
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def _attend_cross(self, q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Cross-attention: q [b, H, T, Dh] over the window's keys and values -> [b, H, T, Dh]."""
        return F.scaled_dot_product_attention(q.to(self.cross_dtype), keys, values)

    def _activation(self, layer: nn.Module, h: Tensor) -> Tensor:
        """The MLP's activation on [n, ffn] rows."""
        return layer.activation_fn(h)

    def _logits(self, x: Tensor) -> Tensor:
        """[b, N, D] final hidden states -> [b, N, V] logits"""
        b, outputs, _ = x.shape
        return self._head(x.reshape(b * outputs, -1))[0].view(b, outputs, -1)

    def _static_call(self, rows: Tensor, tokens: Tensor, start: Tensor, output_index: Tensor) -> Tensor:
        """``forward_cached`` through a fixed-shape step of the whole batch (see ``static_steps``)."""
        key = ("step", tokens.shape[1], output_index.shape[1])
        logits = self._run_static(key, self._static_step, rows,
                                  [(tokens, 0), (start, self.max_positions), (output_index, 0)])
        return logits[rows]  # a copy: the step's output buffer is overwritten by the next step

    def _run_static(self, key: tuple, step: Callable, rows: Tensor, per_row: Sequence[tuple[Tensor, int]],
                    shared: Sequence[Tensor] = ()):
        """Run ``step`` on static inputs of the whole batch (one CUDA graph per ``key`` on a GPU).

        Each ``per_row`` tensor [b, ...] is written at ``rows`` of a [B, ...] input that holds its pad value
        elsewhere: rows not in ``rows`` start at the scratch slot, so they write nothing that is read, and
        the step's shape does not depend on which rows are decoding. ``shared`` tensors are copied whole.
        """
        batch = self._self_k[0].shape[0]

        def blank() -> tuple[Tensor, ...]:
            return (*(torch.full((batch, *x.shape[1:]), pad, dtype=x.dtype, device=self.device) for x, pad in per_row),
                    *(torch.zeros_like(x) for x in shared))

        def fill(inputs: tuple[Tensor, ...]) -> None:
            for buffer, (x, pad) in zip(inputs, per_row):
                buffer.fill_(pad)
                buffer[rows] = x
            for buffer, x in zip(inputs[len(per_row):], shared):
                buffer.copy_(x)

        return self._steps.run(key, step, blank, fill)

    def _static_step(self, tokens: Tensor, start: Tensor, output_index: Tensor) -> Tensor:
        """One decoding step of the whole batch with shapes fixed by (B, T, N) and no host synchronisation.

        tokens [B, T] at positions start[r] .. start[r]+T-1 (positions past the window write the scratch
        slot), output_index [B, N] -> logits [B, N, V]. Every query attends over all P+1 cached slots
        under a mask, so the cache's read shape never changes: what a CUDA graph needs.
        """
        b, t = tokens.shape
        device = tokens.device
        positions = start[:, None] + torch.arange(t, device=device)  # [B, T]
        write_positions = positions.clamp_max(self.max_positions)
        row_index = torch.arange(b, device=device)[:, None]
        mask = (torch.arange(self.max_positions + 1, device=device)[None, None, :] <= positions[:, :, None])[:, None]

        def cache(i: int, k_new: Tensor, v_new: Tensor):
            self._self_k[i][row_index, :, write_positions] = k_new
            self._self_v[i][row_index, :, write_positions] = v_new
            return self._self_k[i], self._self_v[i], self._cross_k[i], self._cross_v[i]

        x = self.embed_tokens(tokens) + self.embed_positions.weight[positions.clamp_max(self.max_positions - 1)]
        x = self._layers(x, mask, cache)
        x = x.gather(1, output_index[:, :, None].expand(-1, -1, x.shape[-1]))
        return self._logits(self.layer_norm(x))

    @torch.inference_mode()
    def greedy_round(self, rows: Tensor, tokens: Tensor, start: Tensor, last: Tensor, k: int,
                     rule: Callable[..., Tensor], rule_inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """k greedy tokens after each of ``rows``' sequences as one fixed-shape computation (needs ``static_steps``).

        On a GPU the whole round is one CUDA graph: k decoder steps, logit rules and argmaxes without a
        host round trip between them, where a step-by-step draft pays one per token.

        Args:
            rows: [b] batch rows.
            tokens: [b, T] what each row's cache lacks, written from position start[r] (T <= MAX_STATIC_TOKENS).
            start: [b] positions of tokens[:, 0].
            last: [b] index in T of each row's last real token (the rest is padding).
            k: tokens to choose per row.
            rule: ``rule(logits [B, V] float32, positions [B], *rule_inputs) -> logits``, the logit rules for
                the token at index ``positions`` of each row's full sequence (a module-level function: it
                names the recorded graph); ``rule_inputs`` are tensors over all B batch rows.
        Returns:
            (ids [b, k], q [b, k]: the probability the draft gave each id). The cache then holds each
            row's tokens and the first k - 1 ids.
        """
        device = self.device
        rows, tokens, start, last = rows.to(device), tokens.to(device), start.to(device), last.to(device)
        body = functools.partial(self._greedy_round, k=k, rule=rule)
        ids, q = self._run_static(("round", tokens.shape[1], k, rule), body, rows,
                                  [(tokens, 0), (start, self.max_positions), (last, 0)], rule_inputs)
        return ids[rows], q[rows]

    def _greedy_round(self, tokens: Tensor, start: Tensor, last: Tensor, *rule_inputs: Tensor, k: int,
                      rule: Callable[..., Tensor]) -> tuple[Tensor, Tensor]:
        """The fixed-shape body of ``greedy_round`` over all B rows: ([B, k] ids, [B, k] probabilities)."""
        logits = self._static_step(tokens, start, last[:, None])[:, 0]
        positions = start + last + 1  # index of the token being chosen, in each row's sequence
        ids, probabilities = [], []
        for j in range(k):
            logits = rule(logits.float(), positions, *rule_inputs)
            token = logits.argmax(dim=-1)
            ids.append(token)
            probabilities.append(torch.softmax(logits, dim=-1).gather(1, token[:, None])[:, 0])
            if j + 1 < k:
                logits = self._static_step(token[:, None], positions, torch.zeros_like(last)[:, None])[:, 0]
                positions = positions + 1
        return torch.stack(ids, dim=1), torch.stack(probabilities, dim=1)
