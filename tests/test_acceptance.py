"""The acceptance rules on hand-written logits and probabilities."""

import pytest
import torch

from whisper_spec.core.acceptance import (
    expected_accepted_tokens,
    greedy_accept,
    residual_distribution,
    speculative_sampling_accept,
)


def test_greedy_accepts_the_matching_prefix_and_takes_the_target_token_at_the_first_mismatch():
    draft = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7], [9, 9, 9]])
    target_argmax = torch.tensor([[5, 6, 7, 8], [5, 1, 7, 8], [2, 6, 7, 8], [9, 9, 9, 4]])
    lengths = torch.tensor([3, 3, 3, 2])
    n, nxt = greedy_accept(draft, target_argmax, lengths)
    assert n.tolist() == [3, 1, 0, 2]
    # all accepted: bonus token; mismatch: the target's own token; short draft: the token after it
    assert nxt.tolist() == [8, 1, 2, 9]


def test_greedy_with_empty_drafts_is_a_plain_step():
    n, nxt = greedy_accept(torch.zeros((2, 0), dtype=torch.long), torch.tensor([[3], [4]]), torch.tensor([0, 0]))
    assert n.tolist() == [0, 0] and nxt.tolist() == [3, 4]


def test_residual_distribution_is_the_normalised_positive_part():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.1, 0.6, 0.3]])
    assert torch.allclose(residual_distribution(p, q), torch.tensor([[1.0, 0.0, 0.0]]))
    same = residual_distribution(p, p)  # no mass left: falls back to p
    assert torch.allclose(same, p)


def test_sampling_never_accepts_a_token_the_target_cannot_produce():
    p = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    q = torch.tensor([[[1.0, 0.0, 0.0]]])
    for seed in range(20):
        n, nxt = speculative_sampling_accept(p, q, torch.tensor([[0]]), torch.tensor([1]),
                                             torch.Generator().manual_seed(seed))
        assert n.item() == 0 and nxt.item() == 1


def test_sampling_always_accepts_when_the_target_agrees_with_certainty():
    p = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    q = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    n, nxt = speculative_sampling_accept(p, q, torch.tensor([[1, 1]]), torch.tensor([2]),
                                         torch.Generator().manual_seed(0))
    assert n.item() == 2 and nxt.item() == 0  # bonus token drawn from p at position 3


def test_sampling_acceptance_probability_is_min_one_p_over_q():
    # p(x)=0.3, q(x)=0.6 -> accept with probability 0.5
    p = torch.tensor([[[0.3, 0.7], [0.5, 0.5]]]).repeat(20000, 1, 1)
    q = torch.tensor([[[0.6, 0.4]]]).repeat(20000, 1, 1)
    n, nxt = speculative_sampling_accept(p, q, torch.zeros((20000, 1), dtype=torch.long),
                                         torch.ones(20000, dtype=torch.long), torch.Generator().manual_seed(1))
    assert abs(n.float().mean().item() - 0.5) < 0.02
    # every rejection resamples from norm(max(0, p - q)) = token 1
    assert (nxt[n == 0] == 1).all()


def test_single_step_output_follows_the_target_distribution_whatever_the_draft():
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q1 = torch.tensor([0.4, 0.3, 0.2, 0.1])
    rows = 40000
    g = torch.Generator().manual_seed(2)
    draft = torch.multinomial(q1, rows, replacement=True, generator=g)[:, None]
    p = torch.stack([p1, torch.full((4,), 0.25)])[None].repeat(rows, 1, 1)
    q = q1[None, None].repeat(rows, 1, 1)
    n, nxt = speculative_sampling_accept(p, q, draft, torch.ones(rows, dtype=torch.long), g)
    first = torch.where(n == 1, draft[:, 0], nxt)
    freq = torch.bincount(first, minlength=4).float() / rows
    assert torch.allclose(freq, p1, atol=0.01)


@pytest.mark.parametrize("alpha,k,expected", [(0.0, 5, 1.0), (0.5, 1, 1.5), (0.5, 2, 1.75), (1.0, 4, 5.0)])
def test_expected_accepted_tokens(alpha, k, expected):
    assert expected_accepted_tokens(alpha, k) == pytest.approx(expected)
