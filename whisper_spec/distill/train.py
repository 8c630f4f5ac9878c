"""Training a distilled draft on the target's own labels, with held-out acceptance, checkpoints and resume.

The loss is cross-entropy on the target's greedy tokens (a greedy draft is accepted exactly when it
predicts them) plus the KL divergence from the target's distribution over the draft's output rows. The
held-out score is exact for greedy speculative decoding: after a round the committed prefix is the
target's own, so the draft's proposal at each position is its teacher-forced argmax there, and a round
of k drafts accepts the run of consecutive agreements that starts at the round's first position.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from whisper_spec.distill.data import DistillExample, TargetRecord
from whisper_spec.distill.draft import save_draft
from whisper_spec.distill.model import DistilledDecoder, restricted_index, to_restricted


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
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.init_layers:
            raise ValueError("init_layers must name at least one target layer")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.draft_length < 1:
            raise ValueError("steps, batch_size, eval_every and draft_length must be positive")


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
    """Pads examples into training batches; keeps each window's (frozen) cross-attention keys/values."""

    def __init__(self, model: DistilledDecoder, rules: "_RestrictedRules", device: torch.device):
        self.model, self.rules, self.device = model, rules, device
        self._cross: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def cross(self, examples: Sequence[DistillExample]) -> list[tuple[Tensor, Tensor]]:
        for example in examples:
            if id(example) not in self._cross:
                hidden = example.encoder_hidden[None].to(self.device, self.model.output_weight.dtype)
                self._cross[id(example)] = self.model.cross_keys_values(hidden)
        per_layer = zip(*(self._cross[id(e)] for e in examples))
        return [(torch.cat([k for k, _ in layer]), torch.cat([v for _, v in layer])) for layer in per_layer]

    def batch(self, examples: Sequence[DistillExample]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(inputs [B, T], labels [B, T] restricted rows or -100, full-vocabulary labels [B, T], target hidden [B, T, D])."""
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

    def __init__(self, vocab_ids: Tensor, suppress: Sequence[int], begin_suppress: Sequence[int]):
        self.suppress = restricted_index(vocab_ids, suppress)
        self.begin_suppress = restricted_index(vocab_ids, begin_suppress)

    def apply(self, logits: Tensor, prompt_lengths: Sequence[int]) -> Tensor:
        logits = logits.clone()
        logits[:, :, self.suppress] = -torch.inf
        for i, length in enumerate(prompt_lengths):
            logits[i, length - 1, self.begin_suppress] = -torch.inf
        return logits


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


@torch.no_grad()
def evaluate(model: DistilledDecoder, examples: Sequence[DistillExample], batcher: _Batcher, k: int) -> HeldOutScore:
    was_training = model.training
    model.eval()
    tokens = agreed = rounds = drafted = accepted = 0
    for start in range(0, len(examples), 8):
        chunk = examples[start:start + 8]
        inputs, _, full, _ = batcher.batch(chunk)
        logits = batcher.rules.apply(model(inputs, batcher.cross(chunk)).float(), [e.prompt_length for e in chunk])
        predicted = model.vocab_ids[logits.argmax(-1)]
        for i, e in enumerate(chunk):
            span = slice(e.prompt_length - 1, len(e.tokens) - 1)
            agree = (predicted[i, span] == full[i, span]).tolist()
            r, d, a = simulate_rounds(agree, k)
            tokens += len(agree)
            agreed += sum(agree)
            rounds, drafted, accepted = rounds + r, drafted + d, accepted + a
    model.train(was_training)
    return HeldOutScore(tokens, agreed / max(tokens, 1), accepted / max(drafted, 1), accepted / max(rounds, 1),
                        tokens / max(rounds, 1))


def _state_path(output: Path) -> Path:
    return output.with_name(output.name + ".train-state")


def train_draft(target, train: Sequence[DistillExample], held_out: Sequence[DistillExample], output: str | os.PathLike,
                options: TrainOptions = TrainOptions(), resume: bool = True, progress: bool = True) -> TrainResult:
    """Distil a draft for ``target`` (a ``WhisperCheckpoint``) and save it to ``output``.

    Every ``eval_every`` steps the training state goes to ``<output>.train-state``; with ``resume`` a
    run that finds a state for the same target, layers and vocabulary continues from it.
    """
    if not train or not held_out:
        raise ValueError(f"need training and held-out windows, got {len(train)} and {len(held_out)}")
    output = Path(output)
    device = torch.device(options.device)
    torch.manual_seed(options.seed)
    record = TargetRecord.of(target)
    target_decoder = target.model.model.decoder
    vocab_ids = build_vocabulary(train, target.tokenizer, record.vocab_size, options.common_tokens)
    model = DistilledDecoder(target_decoder, options.init_layers, vocab_ids).to(device=device, dtype=torch.float32)
    if target_decoder.embed_tokens.weight.device != device or target_decoder.embed_tokens.weight.dtype != torch.float32:
        raise ValueError("train with the target loaded on the training device in float32")
    teacher_rows = target_decoder.embed_tokens.weight.detach()[vocab_ids.to(device)].float()  # [R, D]
    config = target.generation_config
    rules = _RestrictedRules(vocab_ids, config.suppress_tokens or (), config.begin_suppress_tokens or ())
    batcher = _Batcher(model, rules, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, options))

    initial = evaluate(model, held_out, batcher, options.draft_length)
    step = 0
    state_path = _state_path(output)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if (state["target"] == asdict(record) and state["init_layers"] == list(model.init_layers)
                and torch.equal(state["vocab_ids"].cpu(), vocab_ids)):
            model.load_state_dict(state["model"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step = state["step"]
            initial = HeldOutScore(**state["initial"])
    order = random.Random(options.seed + step)
    score = evaluate(model, held_out, batcher, options.draft_length) if step else initial
    bar = tqdm(total=options.steps, initial=step, disable=not progress, desc="distil", unit="step")
    bar.set_postfix(held_out_acceptance=f"{score.acceptance_rate:.3f}", accepted_len=f"{score.mean_accepted_length:.2f}")
    model.train()
    while step < options.steps:
        chunk = order.sample(list(train), min(options.batch_size, len(train)))
        inputs, labels, _, hidden = batcher.batch(chunk)
        logits = model(inputs, batcher.cross(chunk))
        mask = labels >= 0
        loss = F.cross_entropy(logits[mask], labels[mask])
        if options.kl_weight:
            teacher = F.log_softmax(hidden[mask] @ teacher_rows.T, dim=-1)
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
            score = evaluate(model, held_out, batcher, options.draft_length)
            torch.save({"target": asdict(record), "init_layers": list(model.init_layers), "vocab_ids": vocab_ids,
                        "model": model.own_state(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step, "initial": asdict(initial)}, state_path)
        bar.set_postfix(loss=f"{loss.item():.3f}", held_out_acceptance=f"{score.acceptance_rate:.3f}",
                        accepted_len=f"{score.mean_accepted_length:.2f}")
    bar.close()
    training = {"steps": step, "train_windows": len(train), "held_out_windows": len(held_out),
                "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
                "initial": asdict(initial), "final": asdict(score)}
    path = save_draft(model, record, output, training)
    return TrainResult(path, step, initial, score)


def _learning_rate_factor(step: int, options: TrainOptions) -> float:
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    progress = (step - options.warmup_steps) / max(1, options.steps - options.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
