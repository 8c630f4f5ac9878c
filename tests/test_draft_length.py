"""The adaptive draft length: drafts long when acceptance pays, falls back to plain decoding when not."""

from conftest import HashModel, OracleDrafter

from whisper_spec.core.draft_length import (
    AdaptiveDraftLength,
    ControllerMemory,
    DraftRead,
    DraftSwitch,
    FixedDraftLength,
    ProbeSchedule,
    RoundReport,
)
from whisper_spec.core.loop import DecodeOptions, speculative_decode
from whisper_spec.core.model_roles import ModelVerifier


def plain_step(seconds: float, **flags) -> RoundReport:
    return RoundReport(k=0, accepted=0, rejections=0, rows=1, draft_seconds=0.0, verify_seconds=seconds, **flags)


def run_rounds(controller, alpha_hit, rounds=60, t_draft=0.1, t_verify=1.0, t_step=1.0):
    """Feed the controller rounds where each draft token is right iff the previous ones were and hit."""
    ks = []
    for _ in range(rounds):
        k = controller.next_k()
        ks.append(k)
        if k == 0:
            controller.observe(plain_step(t_step))
            continue
        accepted = min(k, alpha_hit)
        controller.observe(RoundReport(k=k, accepted=accepted, rejections=int(accepted < k), draft_seconds=k * t_draft,
                           verify_seconds=t_verify, rows=1))
    return ks


def test_a_draft_that_is_always_right_is_used_at_full_length():
    ks = run_rounds(AdaptiveDraftLength(8), alpha_hit=100)
    assert ks[-20:] == [8] * 20


def test_a_draft_that_is_always_wrong_falls_back_to_plain_steps_with_rare_probes():
    ks = run_rounds(AdaptiveDraftLength(8, probes=ProbeSchedule(every=8)), alpha_hit=0)
    tail = ks[-40:]
    assert tail.count(0) >= 34 and max(tail) == 1  # plain decoding, plus k=1 probes


def test_an_expensive_verify_pass_needs_more_acceptance_to_be_worth_it():
    cheap = run_rounds(AdaptiveDraftLength(8), alpha_hit=1, t_verify=1.0)
    costly = run_rounds(AdaptiveDraftLength(8), alpha_hit=1, t_verify=2.5)
    assert sum(costly[-20:]) < sum(cheap[-20:])
    assert costly[-20:].count(0) >= 15


def test_fixed_length_ignores_measurements():
    assert run_rounds(FixedDraftLength(3), alpha_hit=0)[-5:] == [3] * 5


def test_in_the_loop_a_useless_draft_costs_few_extra_target_calls():
    prompts = [[3, 4, 5]]
    plain = speculative_decode(ModelVerifier(HashModel(40, 1, 0), 1), None, prompts, [0],
                               DecodeOptions(max_new_tokens=80))
    wrong = OracleDrafter({0: list(plain.rows[0].tokens)}, [3], 40, right=False)
    result = speculative_decode(ModelVerifier(HashModel(40, 1, 0), 1), wrong, prompts, [0],
                                DecodeOptions(max_new_tokens=80, draft_length=6))
    assert result.rows[0].tokens == plain.rows[0].tokens
    assert result.stats.target_calls == plain.stats.target_calls  # a rejected draft still yields a token
    assert result.stats.drafted < 0.5 * result.stats.tokens  # drafting mostly switched off


def probes_in(ks):
    return sum(1 for k in ks if k > 0)


def test_each_failed_probe_doubles_the_wait_for_the_next():
    backing_off = run_rounds(AdaptiveDraftLength(8, probes=ProbeSchedule(every=8)), alpha_hit=0, rounds=600)
    fixed = run_rounds(AdaptiveDraftLength(8, probes=ProbeSchedule(every=8, longest=8)), alpha_hit=0,
                       rounds=600)
    # intervals 8, 16, 32, 64, 128, 256: about 7 probes in 600 rounds against about 66 at a fixed interval
    assert probes_in(backing_off[-500:]) <= 6
    assert probes_in(fixed[-500:]) >= 50


def test_a_draft_that_turns_useful_again_is_picked_up_by_a_probe():
    controller = AdaptiveDraftLength(8)
    run_rounds(controller, alpha_hit=0, rounds=100)
    assert controller.best_k() == 0
    ks = run_rounds(controller, alpha_hit=100, rounds=150)
    assert ks[-20:] == [8] * 20


def test_a_useless_draft_is_not_even_started_until_a_probe_is_due():
    controller = AdaptiveDraftLength(6)
    assert controller.wants_draft()  # nothing measured yet: try it
    run_rounds(controller, alpha_hit=0, rounds=40)
    waits = 0
    while not controller.wants_draft():
        assert controller.next_k() == 0
        controller.observe(plain_step(1.0))
        waits += 1
    assert waits > 0
    assert controller.next_k() == 1  # the decode that starts the draft probes at once


def test_a_costly_setup_pays_only_when_enough_rounds_share_it():
    def settle(rounds_per_decode):
        controller = AdaptiveDraftLength(6)
        for _ in range(10):  # decodes: a setup costing 5 plain steps, then rounds with a 60%-right draft
            ks = run_rounds(controller, alpha_hit=2, rounds=rounds_per_decode, t_draft=0.1, t_verify=1.2)
            controller.observe_decode(setup_seconds=5.0, rounds=len(ks))
        return controller.best_k()

    assert settle(rounds_per_decode=3) == 0  # 5 steps of setup over 3 rounds: plain decoding is faster
    assert settle(rounds_per_decode=200) > 0


def test_a_controller_kept_across_decodes_stops_starting_a_useless_draft():
    """What an engine does: ask before starting the draft, and hand the same controller to every decode."""
    prompts = [[3, 4, 5]]
    plain = speculative_decode(ModelVerifier(HashModel(40, 1, 0), 1), None, prompts, [0],
                               DecodeOptions(max_new_tokens=30))
    controller = AdaptiveDraftLength(6)
    started = []
    for _ in range(30):
        wrong = OracleDrafter({0: list(plain.rows[0].tokens)}, [3], 40, right=False)
        drafter = wrong if controller.wants_draft() else None
        started.append(drafter is not None)
        result = speculative_decode(ModelVerifier(HashModel(40, 1, 0), 1), drafter, prompts, [0],
                                    DecodeOptions(max_new_tokens=30), controller=controller, draft_setup_seconds=0.01)
        assert result.rows[0].tokens == plain.rows[0].tokens
    assert started[0] and sum(started[-20:]) <= 3


def test_a_drafts_catch_up_after_a_pause_does_not_count_as_its_per_token_cost():
    """A probe after plain steps first feeds the draft everything committed since: slow, but not steady.

    Here a steady draft position costs 0.1 of a step and a two-thirds-right draft pays; the catch-up
    costs 0.5 of a step per round missed. Counted as per-position cost, one early pause would make every
    later probe look ruinous, and the draft would stay off for good.
    """
    controller = AdaptiveDraftLength(6)
    missed, ks = 0, []
    for hit in [0] * 30 + [4] * 200:  # first a stretch where the draft is wrong, then mostly right
        k = controller.next_k()
        ks.append(k)
        if k == 0:
            controller.observe(plain_step(1.0))
            missed += 1
            continue
        accepted = min(k, hit)
        controller.observe(RoundReport(k=k, accepted=accepted, rejections=int(accepted < k),
                                       draft_seconds=k * 0.1 + 0.5 * missed, verify_seconds=1.2, rows=1,
                                       draft_read=DraftRead.CATCH_UP if missed else DraftRead.STEADY))
        missed = 0
    assert ks[-20:].count(0) == 0 and min(ks[-20:]) >= 3


def test_the_prompt_read_by_a_decodes_first_round_is_not_a_step_cost():
    controller = AdaptiveDraftLength(6)
    controller.observe(plain_step(50.0, target_read_prompt=True))
    assert controller.next_k() == 0  # no plain step timed yet
    controller.observe(plain_step(1.0))
    assert controller.next_k() == 6  # now learn what drafting costs
    controller.observe(RoundReport(k=6, accepted=0, rejections=1, draft_seconds=30.0, verify_seconds=1.5, rows=1,
                                   draft_read=DraftRead.CATCH_UP))
    assert controller.best_k() is None  # the draft's own prefill taught nothing of its per-token cost


def run_gated_rounds(controller, tokens_per_round, rounds=80, t_round=2.0, t_step=1.0):
    """A self-stopping draft: each drafting round commits ``tokens_per_round`` in ``t_round`` seconds."""
    ks = []
    for _ in range(rounds):
        k = controller.next_k()
        ks.append(k)
        if k == 0:
            controller.observe(plain_step(t_step))
        else:
            width = min(k, 5)
            controller.observe(RoundReport(k=width, accepted=tokens_per_round - 1, rejections=1, rows=1,
                                           draft_seconds=t_round / 2, verify_seconds=t_round / 2))
    return ks


def test_a_gated_draft_is_kept_at_its_cap_while_its_rounds_beat_plain_steps():
    # 3 tokens per 2-second round beat 1 token per 1-second step, whatever the per-token geometry says
    ks = run_gated_rounds(DraftSwitch(20), tokens_per_round=3, rounds=200)
    assert set(ks[-100:]) == {0, 20} and ks[-100:].count(0) <= 4  # a plain step every 32 rounds keeps its price


def test_a_gated_draft_kept_on_notices_when_plain_steps_get_cheaper():
    controller = DraftSwitch(20)
    run_gated_rounds(controller, tokens_per_round=3, rounds=100)  # 1.5 tokens/s against 1 per s
    ks = run_gated_rounds(controller, tokens_per_round=3, rounds=400, t_step=0.5)  # now 2 per s
    assert ks[-50:].count(0) >= 45, ks


def test_one_unlucky_first_round_does_not_lock_a_good_gated_draft_out():
    # judged from its first round on (no burn-in), the draft is switched off, and its probes bring it back
    controller = DraftSwitch(20, probes=ProbeSchedule(every=8), burn_in=1)
    controller.observe(plain_step(1.0))
    # 1 token in 2 s
    controller.observe(RoundReport(k=5, accepted=0, rejections=1, draft_seconds=1.0, verify_seconds=1.0, rows=1))
    assert controller.best_k() == 0
    ks = run_gated_rounds(controller, tokens_per_round=4, rounds=40)  # then 4 tokens per 2-s round
    assert ks[-20:] == [20] * 20, ks


def test_one_stalled_round_does_not_switch_a_good_gated_draft_off():
    """A busy machine can stall one round twentyfold; a running average then read the draft as losing."""
    controller = DraftSwitch(20, probes=ProbeSchedule(every=8))
    run_gated_rounds(controller, tokens_per_round=3, rounds=40)
    # 3 tokens in 40 s
    controller.observe(RoundReport(k=5, accepted=2, rejections=1, draft_seconds=20.0, verify_seconds=20.0, rows=1))
    ks = run_gated_rounds(controller, tokens_per_round=3, rounds=10)
    assert ks.count(20) >= 9, ks


def test_a_gated_draft_whose_yield_drops_is_switched_off():
    controller = DraftSwitch(20, probes=ProbeSchedule(every=8))
    run_gated_rounds(controller, tokens_per_round=3, rounds=40)
    ks = run_gated_rounds(controller, tokens_per_round=1, rounds=60)  # 1 token per 2 s: worse than plain steps
    assert ks[-30:].count(0) >= 25, ks


def test_a_gated_draft_switched_off_by_a_bad_stretch_comes_back_at_its_first_good_probe():
    """Once off, a gated draft is judged on its next probe alone: the bad rounds that switched it off
    describe text that has passed, and probes spaced ever wider apart could not outvote 32 of them."""
    controller = DraftSwitch(20, probes=ProbeSchedule(every=8))
    run_gated_rounds(controller, tokens_per_round=3, rounds=40)
    ks = run_gated_rounds(controller, tokens_per_round=1, rounds=80)  # the draft misses for a while
    assert ks[-30:].count(0) >= 25, ks
    ks = run_gated_rounds(controller, tokens_per_round=4, rounds=150)  # and then agrees again
    first_probe = ks.index(20)
    assert ks[first_probe:].count(20) >= len(ks[first_probe:]) - 5, ks  # on from then (a plain step per 32)


def test_a_gated_draft_is_not_judged_on_its_first_rounds():
    controller = DraftSwitch(20, probes=ProbeSchedule(every=8), burn_in=16)
    ks = run_gated_rounds(controller, tokens_per_round=1, rounds=12)  # losing rounds, but only a few
    assert ks[1:] == [20] * 11  # (the first round times a plain step)
    ks = run_gated_rounds(controller, tokens_per_round=1, rounds=40)
    assert ks[-20:].count(0) >= 18


def test_a_gated_draft_that_loses_is_switched_off_and_probed_at_its_cap():
    ks = run_gated_rounds(DraftSwitch(20, probes=ProbeSchedule(every=8)), tokens_per_round=1,
                          rounds=200)
    tail = ks[-100:]
    assert tail.count(0) >= 90 and set(tail) <= {0, 20}


def test_a_draft_left_unstarted_is_still_retried_and_taken_back_when_it_pays():
    """Decodes that do not start the draft still count towards its next probe (else it is never retried)."""
    prompts = [[3, 4, 5]]
    plain = speculative_decode(ModelVerifier(HashModel(40, 1, 0), 1), None, prompts, [0],
                               DecodeOptions(max_new_tokens=30))
    controller = AdaptiveDraftLength(6, probes=ProbeSchedule(every=4))
    started = []
    for right in [False] * 15 + [True] * 40:  # useless for a while, then always right
        draft = OracleDrafter({0: list(plain.rows[0].tokens)}, [3], 40, right=right)
        drafter = draft if controller.wants_draft() else None
        started.append(drafter is not None)
        result = speculative_decode(ModelVerifier(HashModel(40, 1, 0), 1), drafter, prompts, [0],
                                    DecodeOptions(max_new_tokens=30), controller=controller)
        assert result.rows[0].tokens == plain.rows[0].tokens
    assert not all(started[5:15])  # switched off while useless
    assert all(started[-5:])  # and back on for good once it pays (after doubling waits: slowly)


def test_a_draft_with_a_costly_setup_waits_longer_before_it_is_started_to_probe():
    """Starting a draft to probe it costs its setup (its own encoder); the wait scales with that cost."""
    def rounds_until_started(setup_seconds):
        controller = AdaptiveDraftLength(6, probes=ProbeSchedule(every=8))
        run_rounds(controller, alpha_hit=0, rounds=40)  # t_step = 1: plain steps win
        controller.observe_decode(setup_seconds=setup_seconds, rounds=40)
        waits = 0
        while not controller.wants_draft():
            controller.count_undrafted_round()
            controller.observe(plain_step(1.0))
            waits += 1
        return waits

    cheap, costly = rounds_until_started(0.0), rounds_until_started(10.0)
    assert costly >= 5 * max(cheap, 1)


def test_a_draft_that_loses_even_when_always_right_is_not_probed():
    """The target drafting for itself: every token right, but a draft position costs a whole step."""
    controller = AdaptiveDraftLength(6, probes=ProbeSchedule(every=4))
    ks = run_rounds(controller, alpha_hit=100, rounds=200, t_draft=1.0, t_verify=1.3, t_step=1.0)
    assert not controller.could_pay()
    assert ks[-150:] == [0] * 150 and not controller.wants_draft()


def test_controller_memory_learns_each_context_apart():
    memory = ControllerMemory()
    text = memory.get(6, True, False, True, context="text")
    run_gated_rounds(text, tokens_per_round=1, rounds=60)  # a draft that loses in one mode ...
    assert memory.get(6, True, False, True, context="text") is text and text.best_k() == 0
    # ... is still tried in the other
    assert memory.get(6, True, False, True, context="timestamps").next_k() == 0  # (times a plain step first)
    assert memory.get(6, True, False, True, context="timestamps").best_k() is None


def test_a_draft_that_at_best_breaks_even_is_not_kept_on_by_timing_noise():
    """A draft position costing 0.9 of a step: always right, k = 6 would yield 4% over plain steps, inside
    what a busy machine's clock moves; the target drafting for itself ran at 0.91x so."""
    controller = AdaptiveDraftLength(6, probes=ProbeSchedule(every=4))
    ks = run_rounds(controller, alpha_hit=100, rounds=200, t_draft=0.9, t_verify=1.3, t_step=1.0)
    assert ks[-100:] == [0] * 100, ks
