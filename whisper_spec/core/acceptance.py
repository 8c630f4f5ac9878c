"""Acceptance rules of speculative decoding, as pure functions on tensors.

Notation follows Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding")
and Chen et al. 2023 ("Accelerating LLM Decoding with Speculative Sampling"):

- ``p_target``: the target's next-token distribution at each verified position;
- ``q_draft``: the draft's distribution from which each draft token was sampled;
- ``alpha``: the per-token acceptance rate; ``k`` (gamma in the paper): the draft length.

Rows of a batch carry drafts of different lengths (``draft_lengths``); positions past a row's length
are padding and never accepted.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _valid_positions(draft_lengths: Tensor, k: int) -> Tensor:
    """[B, K] bool: which draft positions hold a real (non-padding) token."""
    return torch.arange(k, device=draft_lengths.device)[None, :] < draft_lengths[:, None]


def _leading_true(mask: Tensor) -> Tensor:
    """[B, K] bool -> [B] long: how many leading positions of each row are True."""
    return mask.long().cumprod(dim=-1).sum(dim=-1)


def greedy_accept(draft_tokens: Tensor, target_argmax: Tensor, draft_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Exact-match acceptance for greedy decoding.

    Args:
        draft_tokens: [B, K] proposed ids (padding past ``draft_lengths``).
        target_argmax: [B, K+1] the target's greedy choice after the prefix and after each draft token.
        draft_lengths: [B] real draft length of each row (0..K).

    Returns:
        n_accepted [B]: the longest prefix of the draft equal to the target's own choices;
        next_token [B]: the target's token at the first disagreement (or the bonus token after a fully
        accepted draft). Appending ``draft[:n] + [next]`` is exactly what greedy decoding would produce.
    """
    k = draft_tokens.shape[1]
    matches = (draft_tokens == target_argmax[:, :k]) & _valid_positions(draft_lengths, k)
    n_accepted = _leading_true(matches)
    next_token = target_argmax.gather(1, n_accepted[:, None]).squeeze(1)
    return n_accepted, next_token


def residual_distribution(p_target: Tensor, q_draft: Tensor) -> Tensor:
    """norm(max(0, p_target - q_draft)) over the last dimension: what to sample after a rejection.

    Where the residual is all zero (p == q, so a rejection had probability 0) ``p_target`` is returned,
    which keeps the function total without changing the distribution of any reachable outcome.
    """
    residual = (p_target - q_draft).clamp_min(0.0)
    total = residual.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp_min(torch.finfo(residual.dtype).tiny), p_target)


def speculative_sampling_accept(
    p_target: Tensor,
    q_draft: Tensor,
    draft_tokens: Tensor,
    draft_lengths: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Rejection sampling of Leviathan et al. 2023 (Algorithm 1): output ~ p_target exactly.

    Draft token x_i is kept with probability min(1, p_target(x_i) / q_draft(x_i)); at the first
    rejection the next token is drawn from ``residual_distribution``; after a fully accepted draft a bonus
    token is drawn from ``p_target`` at position K_b + 1.

    Args:
        p_target: [B, K+1, V] target probabilities at each verified position.
        q_draft: [B, K, V] draft probabilities the draft tokens were sampled from. A deterministic
            proposal (prompt lookup, a draft with another tokenizer) is a one-hot ``q_draft``.
        draft_tokens: [B, K]; draft_lengths: [B].
        generator: source of the uniform draws (for reproducible tests).

    Returns:
        n_accepted [B] and next_token [B], as in ``greedy_accept``.
    """
    batch, k = draft_tokens.shape
    if k == 0:
        return (
            torch.zeros(batch, dtype=torch.long, device=p_target.device),
            torch.multinomial(p_target[:, 0], 1, generator=generator).squeeze(1),
        )
    index = draft_tokens.clamp_min(0)[:, :, None]
    p_of_x = p_target[:, :k].gather(2, index).squeeze(2)
    q_of_x = q_draft.gather(2, index).squeeze(2)
    uniform = torch.rand(batch, k, generator=generator, device=p_target.device, dtype=p_target.dtype)
    # r < p/q written as r * q < p, so that q == 0 (never proposed) cannot divide by zero.
    kept = (uniform * q_of_x < p_of_x) & _valid_positions(draft_lengths, k)
    n_accepted = _leading_true(kept)

    rows = torch.arange(batch, device=p_target.device)
    p_next = p_target[rows, n_accepted]
    q_padded = torch.cat([q_draft, torch.zeros_like(q_draft[:, :1])], dim=1)
    rejected = n_accepted < draft_lengths
    # After a rejection: the residual; after a full acceptance: p_target itself (q is zero there).
    q_next = torch.where(rejected[:, None], q_padded[rows, n_accepted], torch.zeros_like(p_next))
    next_token = torch.multinomial(residual_distribution(p_next, q_next), 1, generator=generator).squeeze(1)
    return n_accepted, next_token


def expected_accepted_tokens(alpha: float, k: int) -> float:
    """Expected tokens produced by one round with draft length k (Leviathan et al. 2023, Eq. 1).

    (1 - alpha^(k+1)) / (1 - alpha): accepted draft tokens plus the target's own token.
    """
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
