"""Training a distilled draft on the target's own labels, with held-out acceptance, checkpoints and resume.

The loss is cross-entropy on the target's greedy tokens (a greedy draft is accepted exactly when it
predicts them) plus the KL divergence from the target's distribution over the draft's output rows (a
feature-level draft may also regress the target's state, EAGLE's smooth-L1 term; off by default). The
held-out score is exact for greedy speculative decoding. For a token-level draft, after a round the
committed prefix is the target's own, so its proposal at each position is its teacher-forced argmax
there, and a round of k drafts accepts the run of consecutive agreements that starts at the round's
first position. A feature-level draft's later proposals of a round read no target state (the target
has not computed them yet), so its rounds are played out with the drafter the engine runs
(``FeatureDrafter``) against the labels.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from whisper_spec.core.protocols import DraftRequest
from whisper_spec.distill.checkpoint import save_draft
from whisper_spec.distill.data import DistillExample, TargetRecord
from whisper_spec.distill.model import DistilledDecoder, DraftLayers, restricted_index, to_restricted
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.distilled import FeatureDrafter
from whisper_spec.whisper.logit_rules import suppress_at_positions
from whisper_spec.whisper.tokens import WhisperTokens


@dataclass(frozen=True)
class TrainOptions:
    init_layers: tuple[int, ...] = (0,)  # target layers the draft starts from (2 layers: (0, -1), distil-whisper's)
    common_tokens: int = 4096  # also emit ids below this: a byte-level BPE numbers its most frequent merges first
    steps: int = 600  # optimizer steps
    batch_size: int = 8  # windows per step
    learning_rate: float = 2e-4  # AdamW peak, after a linear warm-up, decaying to zero (cosine)
    warmup_steps: int = 30
    kl_weight: float = 1.0  # weight of the KL term beside the cross-entropy on greedy tokens
    eval_every: int = 100  # steps between held-out evaluations (and checkpoints)
    draft_length: int = 6  # k of the held-out accepted-length estimate
    features: bool = False  # a feature-level (EAGLE-style) draft: reads the target's previous hidden state
    feature_weight: float = 0.0  # weight of a smooth-L1 loss on the predicted hidden state (features only)
    # features only: the share of positions trained with the previous state unknown (zeros), as a draft's
    # second and later tokens of a round run (the target has not computed those states yet)
    state_dropout: float = 0.5
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.init_layers:
            raise ValueError("init_layers must name at least one target layer")
        if min(self.steps, self.batch_size, self.eval_every, self.draft_length) < 1:
            raise ValueError("steps, batch_size, eval_every and draft_length must be positive")
        if not 0.0 <= self.state_dropout < 1.0:
            raise ValueError(f"state_dropout must be in [0, 1), got {self.state_dropout}")


@dataclass(frozen=True)
class HeldOutScore:
    """How a draft does on held-out windows under greedy speculative decoding with k drafts per round."""

    tokens: int  # tokens the target generated (end-of-text included)
    agreement: float  # fraction of positions where the draft's proposal equals the target's token
    acceptance_rate: float  # accepted / drafted with k drafts per round (drafting stops at end-of-text)
    mean_accepted_length: float  # draft tokens accepted per round
    tokens_per_round: float  # tokens committed per target call (accepted + the target's own)


@dataclass(frozen=True)
class TrainResult:
    path: Path  # the saved draft
    steps: int
    initial: HeldOutScore  # the untrained draft (the target's layers, restricted output)
    final: HeldOutScore


def build_vocabulary(examples: Sequence[DistillExample], tokenizer, vocab_size: int, common_tokens: int) -> Tensor:
    """[R] sorted full-vocabulary ids: every token in the labels, every special token, and ids < ``common_tokens``."""
    ids: set[int] = set(range(min(common_tokens, vocab_size)))
    ids.update(int(i) for i in tokenizer.all_special_ids if i < vocab_size)
    for example in examples:
        ids.update(example.tokens.tolist())
    return torch.tensor(sorted(ids), dtype=torch.long)


class _Batcher:
    """Pads examples into training batches; keeps what of each window's cross-attention input is fixed.

    A draft whose cross-attention projections are frozen (``trains_cross`` False) gets each window's keys
    and values computed once; one that trains them gets its fixed ``encoder_input`` computed once (kept
    in float16, by window: a window labelled in both modes is one entry).
    """

    def __init__(self, model: DraftLayers, rules: _RestrictedRules, device: torch.device):
        self.model, self.rules, self.device = model, rules, device
        self._cross: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self._inputs: dict[str, Tensor] = {}

    def cross(self, examples: Sequence[DistillExample]) -> list[tuple[Tensor, Tensor]]:
        dtype = self.model.output_weight.dtype
        if self.model.trains_cross:  # the projections change with every step, their input does not
            for e in examples:
                if e.id not in self._inputs:
                    with torch.no_grad():
                        hidden = e.encoder_hidden[None].to(self.device, dtype)
                        self._inputs[e.id] = self.model.encoder_input(hidden)[0].to(torch.float16)
            return self.model.cross_from_input(torch.stack([self._inputs[e.id] for e in examples]).to(dtype))
        for example in examples:
            if id(example) not in self._cross:
                hidden = example.encoder_hidden[None].to(self.device, self.model.output_weight.dtype)
                self._cross[id(example)] = self.model.cross_keys_values(hidden)
        per_layer = zip(*(self._cross[id(e)] for e in examples))
        return [(torch.cat([k for k, _ in layer]), torch.cat([v for _, v in layer])) for layer in per_layer]

    def batch(self, examples: Sequence[DistillExample]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(inputs [B, T], labels [B, T] restricted rows or -100, full-vocabulary labels [B, T], target hidden
        [B, T, D]).

        ``hidden[:, t]`` is the target's state after reading ``inputs[:, t]`` (it predicts ``labels[:, t]``).
        """
        width = max(len(e.tokens) - 1 for e in examples)
        dim = examples[0].target_hidden.shape[-1]
        inputs = torch.zeros(len(examples), width, dtype=torch.long)
        full = torch.full((len(examples), width), -100, dtype=torch.long)
        hidden = torch.zeros(len(examples), width, dim)
        for i, e in enumerate(examples):
            n = len(e.tokens) - 1
            inputs[i, :n] = e.tokens[:-1]
            full[i, e.prompt_length - 1:n] = e.tokens[e.prompt_length:]
            hidden[i, :n] = e.target_hidden.float()
        labels = to_restricted(self.model.vocab_ids.cpu(), full.clamp_min(0))
        labels[full < 0] = -100
        labels[labels < 0] = -100  # a token outside the draft's vocabulary teaches nothing
        return inputs.to(self.device), labels.to(self.device), full.to(self.device), hidden.to(self.device)


class _RestrictedRules:
    """The target's suppression rules in the draft's restricted rows (for held-out argmax)."""

    def __init__(self, vocab_ids: Tensor, tokens: WhisperTokens):
        self.suppress = torch.zeros(len(vocab_ids), dtype=torch.bool)
        self.suppress[restricted_index(vocab_ids, tokens.suppress).cpu()] = True
        self.begin = torch.zeros(len(vocab_ids), dtype=torch.bool)
        self.begin[restricted_index(vocab_ids, tokens.begin_suppress).cpu()] = True

    def apply(self, logits: Tensor, prompt_lengths: Sequence[int]) -> Tensor:
        """Teacher-forced logits [B, T, R] (position t scores token t + 1) with the rules applied."""
        device = logits.device
        positions = torch.arange(1, logits.shape[1] + 1, device=device)
        lengths = torch.tensor(list(prompt_lengths), device=device)[:, None]
        return suppress_at_positions(logits, positions, lengths, self.suppress.to(device), self.begin.to(device))


def simulate_rounds(agree: Sequence[bool], k: int) -> tuple[int, int, int]:
    """(rounds, drafted, accepted) of greedy speculative decoding over one window.

    ``agree[j]``: the draft's proposal for generated token j (given the target's tokens before it) is
    right; the last token is end-of-text, after which a draft stops proposing.
    """
    n = len(agree)
    position = rounds = drafted = accepted = 0
    while position < n:
        width = min(k, n - position)  # a draft that agrees up to end-of-text stops there
        run = 0
        while run < width and agree[position + run]:
            run += 1
        rounds += 1
        drafted += width
        accepted += run
        position += run + 1
    return rounds, drafted, accepted


def previous_states(hidden: Tensor) -> Tensor:
    """[B, T, D] states after each input -> [B, T, D] the state before each input (zeros at t = 0)."""
    return torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)


def play_feature_rounds(model: DistilledDecoder, examples: Sequence[DistillExample], k: int, rules_of,
                        vocab_size: int, eot: int) -> tuple[int, int, int]:
    """(rounds, drafted, accepted) of greedy speculative decoding with a feature-level draft.

    The drafter is the engine's own (``FeatureDrafter``); the verifier is the labels: the target's
    tokens and, for committed positions, its recorded hidden states.
    """
    device = model.output_weight.device
    decoder = CachedWhisperDecoder(model, output_weight=model.output_weight)  # built now: weights change
    decoder.begin(torch.stack([e.encoder_hidden for e in examples]).to(device, model.output_weight.dtype))
    width = max(len(e.tokens) - 1 for e in examples)
    states = torch.zeros(len(examples), width, model.output_weight.shape[1], device=device)
    for i, e in enumerate(examples):
        states[i, : len(e.tokens) - 1] = e.target_hidden.float()
    drafter = FeatureDrafter(model, decoder, states, vocab_size, rules_of([e.prompt_length for e in examples]), [eot])
    position = [e.prompt_length for e in examples]
    rounds = drafted = accepted = 0
    active = list(range(len(examples)))
    while active:
        sequences = [examples[i].tokens[: position[i]].tolist() for i in active]
        proposal = drafter.propose(DraftRequest(torch.tensor(active), sequences, k, 0.0, None))
        still = []
        for i, draft in zip(active, proposal.tokens):
            truth = examples[i].tokens[position[i]:].tolist()
            draft = draft[: len(truth)]  # a draft that agrees up to end-of-text stops there
            run = 0
            while run < len(draft) and draft[run] == truth[run]:
                run += 1
            rounds, drafted, accepted = rounds + 1, drafted + len(draft), accepted + run
            position[i] += run + 1
            if position[i] < len(examples[i].tokens):
                still.append(i)
        active = still
    return rounds, drafted, accepted


@torch.no_grad()
def evaluate(model: DraftLayers, examples: Sequence[DistillExample], batcher: _Batcher, k: int,
             rules_of=None, vocab_size: int = 0, eot: int = 0) -> HeldOutScore:
    """Held-out score; a feature-level draft needs ``rules_of`` (prompt lengths -> the target's full-vocabulary
    logit rules), ``vocab_size`` and ``eot`` to play its rounds."""
    was_training = model.training
    model.eval()
    tokens = agreed = rounds = drafted = accepted = 0
    for start in range(0, len(examples), 8):
        chunk = examples[start:start + 8]
        inputs, _, full, hidden = batcher.batch(chunk)
        previous = previous_states(hidden) if model.features else None
        logits, _ = model(inputs, batcher.cross(chunk), previous)
        logits = batcher.rules.apply(logits.float(), [e.prompt_length for e in chunk])
        predicted = model.vocab_ids[logits.argmax(-1)]
        for i, e in enumerate(chunk):
            span = slice(e.prompt_length - 1, len(e.tokens) - 1)
            agree = (predicted[i, span] == full[i, span]).tolist()
            tokens += len(agree)
            agreed += sum(agree)
            if not model.features:
                r, d, a = simulate_rounds(agree, k)
                rounds, drafted, accepted = rounds + r, drafted + d, accepted + a
        if model.features:
            r, d, a = play_feature_rounds(model, chunk, k, rules_of, vocab_size, eot)
            rounds, drafted, accepted = rounds + r, drafted + d, accepted + a
    model.train(was_training)
    return HeldOutScore(tokens, agreed / max(tokens, 1), accepted / max(drafted, 1), accepted / max(rounds, 1),
                        tokens / max(rounds, 1))


def _state_path(output: Path) -> Path:
    return output.with_name(output.name + ".train-state")


def train_draft(target, train: Sequence[DistillExample], held_out: Sequence[DistillExample], output: str | os.PathLike,
                options: TrainOptions = TrainOptions(), resume: bool = True, progress: bool = True,
                start: DraftLayers | None = None) -> TrainResult:
    """Distil a draft for ``target`` (a ``WhisperCheckpoint``) and save it to ``output``.

    ``start``: the untrained draft to train (a ``DonorDecoder``, whose vocabulary must be
    ``build_vocabulary`` of ``train``); default: the target's own layers ``options.init_layers``.
    Every ``eval_every`` steps the training state goes to ``<output>.train-state``; with ``resume`` a
    run that finds a state for the same target, draft and vocabulary continues from it.
    """
    if not train or not held_out:
        raise ValueError(f"need training and held-out windows, got {len(train)} and {len(held_out)}")
    output = Path(output)
    device = torch.device(options.device)
    torch.manual_seed(options.seed)
    record = TargetRecord.of(target)
    target_decoder = target.model.model.decoder
    vocab_ids = build_vocabulary(train, target.tokenizer, record.vocab_size, options.common_tokens)
    if start is None:
        start = DistilledDecoder(target_decoder, options.init_layers, vocab_ids, options.features)
    elif not torch.equal(start.vocab_ids.cpu(), vocab_ids):
        raise ValueError("the starting draft's vocabulary is not build_vocabulary() of the training windows")
    model = start.to(device=device, dtype=torch.float32)
    donor = getattr(model, "donor_name", None)
    if target_decoder.embed_tokens.weight.device != device or target_decoder.embed_tokens.weight.dtype != torch.float32:
        raise ValueError("train with the target loaded on the training device in float32")
    teacher_rows = target_decoder.embed_tokens.weight.detach()[vocab_ids.to(device)].float()  # [R, D]
    batcher = _Batcher(model, _RestrictedRules(vocab_ids, target.tokens), device)

    def score() -> HeldOutScore:
        return evaluate(model, held_out, batcher, options.draft_length,
                        lambda lengths: target.tokens.rules(lengths, timestamps=False),
                        record.vocab_size, target.tokens.eot)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, options))

    initial = score()
    step = 0
    state_path = _state_path(output)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if (state["target"] == asdict(record) and state["init_layers"] == list(model.init_layers)
                and state.get("features", False) == model.features and state.get("donor") == donor
                and torch.equal(state["vocab_ids"].cpu(), vocab_ids)):
            model.load_state_dict(state["model"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step = state["step"]
            initial = HeldOutScore(**state["initial"])
    order = random.Random(options.seed + step)
    noise = torch.Generator(device=device).manual_seed(options.seed + step)
    held_out_score = score() if step else initial
    bar = tqdm(total=options.steps, initial=step, disable=not progress, desc="distil", unit="step")
    bar.set_postfix(held_out_acceptance=f"{held_out_score.acceptance_rate:.3f}",
                    accepted_len=f"{held_out_score.mean_accepted_length:.2f}")
    model.train()
    while step < options.steps:
        chunk = order.sample(list(train), min(options.batch_size, len(train)))
        inputs, labels, _, hidden = batcher.batch(chunk)
        mask = labels >= 0
        teacher = F.log_softmax(hidden[mask] @ teacher_rows.T, dim=-1) if options.kl_weight else None
        previous = None
        if model.features:
            # a share of positions trains without the previous state, as drafted positions run
            unknown = torch.rand(hidden.shape[:2], generator=noise, device=hidden.device) < options.state_dropout
            previous = previous_states(hidden).masked_fill(unknown[..., None], 0.0)
        logits, predicted = model(inputs, batcher.cross(chunk), previous)
        loss = F.cross_entropy(logits[mask], labels[mask])
        if model.features and options.feature_weight:
            loss = loss + options.feature_weight * F.smooth_l1_loss(predicted[mask], hidden[mask])
        if teacher is not None:
            loss = loss + options.kl_weight * F.kl_div(F.log_softmax(logits[mask], dim=-1), teacher,
                                                       log_target=True, reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        bar.update(1)
        if step % options.eval_every == 0 or step == options.steps:
            held_out_score = score()
            torch.save({"target": asdict(record), "init_layers": list(model.init_layers), "vocab_ids": vocab_ids,
                        "features": model.features, "donor": donor,
                        "model": model.own_state(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step, "initial": asdict(initial)}, state_path)
        bar.set_postfix(loss=f"{loss.item():.3f}", held_out_acceptance=f"{held_out_score.acceptance_rate:.3f}",
                        accepted_len=f"{held_out_score.mean_accepted_length:.2f}")
    bar.close()
    training = {"steps": step, "train_windows": len(train), "held_out_windows": len(held_out), "donor": donor,
                "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
                "initial": asdict(initial), "final": asdict(held_out_score)}
    path = save_draft(model, record, output, training)
    return TrainResult(path, step, initial, held_out_score)


def _learning_rate_factor(step: int, options: TrainOptions) -> float:
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    progress = (step - options.warmup_steps) / max(1, options.steps - options.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
