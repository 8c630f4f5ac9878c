"""Timing mode: the whole speculative loop's real cost for the production pair, without its weights.

Where large-v3 / distil-large-v3 cannot be downloaded, models of their exact architectures are built from
configs with random weights. Random weights make a random draft useless, so acceptance is driven by an
oracle: the draft model really runs (its cost is paid every round), but the tokens proposed are the
target's own greedy continuation, each right with a chosen probability and otherwise a token the target
will reject. Sweeping that probability (0.5 .. 0.95) charts speed-up over plain greedy decoding against
the acceptance rate actually measured, on whatever device runs it. A small architecture ("tiny") runs
the same code on a CPU in seconds, for tests.

Everything goes through ``SpeculativeWhisper.decode_windows``: the oracle is just another draft kind.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperDecoder  # noqa: E402

from whisper_spec.audio import SAMPLE_RATE  # noqa: E402
from whisper_spec.core.protocols import DraftRequest, Drafter, Proposal  # noqa: E402
from whisper_spec.core.stats import synchronize  # noqa: E402
from whisper_spec.whisper.checkpoints import WhisperCheckpoint, load_whisper  # noqa: E402
from whisper_spec.whisper.decoder import CachedWhisperDecoder  # noqa: E402
from whisper_spec.whisper.drafts import SharedEncoderDraft, WindowBatch  # noqa: E402
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions  # noqa: E402


@dataclass(frozen=True)
class Architecture:
    """The shapes of a Whisper target and of its shared-encoder draft decoder."""

    d_model: int
    heads: int
    encoder_layers: int
    decoder_layers: int  # the target's
    draft_decoder_layers: int  # the draft's (it reads the target's encoder outputs)
    mel_bins: int

    def config(self, vocab_size: int, decoder_layers: int) -> WhisperConfig:
        return WhisperConfig(
            vocab_size=vocab_size, num_mel_bins=self.mel_bins, d_model=self.d_model,
            encoder_layers=self.encoder_layers, decoder_layers=decoder_layers,
            encoder_attention_heads=self.heads, decoder_attention_heads=self.heads,
            encoder_ffn_dim=4 * self.d_model, decoder_ffn_dim=4 * self.d_model,
            max_source_positions=1500, max_target_positions=448, attn_implementation="sdpa")


ARCHITECTURES = {
    # openai/whisper-large-v3 with distil-whisper/distil-large-v3 (2 decoder layers, the teacher's encoder)
    "large-v3": Architecture(d_model=1280, heads=20, encoder_layers=32, decoder_layers=32,
                             draft_decoder_layers=2, mel_bins=128),
    # the same structure, small enough for a CPU test
    "tiny": Architecture(d_model=64, heads=4, encoder_layers=2, decoder_layers=4, draft_decoder_layers=1,
                         mel_bins=80),
}


@dataclass(frozen=True)
class TimingOptions:
    architecture: str = "large-v3"  # a key of ARCHITECTURES
    probabilities: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # chance each oracle token is right
    new_tokens: int = 128  # tokens decoded per window (the target never stops early: see _random_checkpoint)
    batch_size: int = 1  # windows decoded together
    draft_length: int = 6
    adaptive_draft_length: bool = True
    repeats: int = 3  # timed decodes per point; the median is kept
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: torch.dtype | None = None  # default float16 on CUDA, float32 on CPU
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        if not self.probabilities or not all(0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError(f"probabilities must be in [0, 1], got {self.probabilities}")
        if self.new_tokens < 2 or self.batch_size < 1 or self.repeats < 1:
            raise ValueError("need new_tokens >= 2, batch_size >= 1 and repeats >= 1")


@dataclass(frozen=True)
class TimingPoint:
    probability: float  # chance that each oracle token is the target's own
    acceptance_rate: float  # measured: accepted / drafted
    mean_accepted_length: float  # accepted draft tokens per round
    seconds: float  # median decode time (encoder included) of the batch
    speedup: float  # baseline seconds / seconds
    ms_per_token: float  # per generated token per row
    target_calls: int
    draft_calls: int


@dataclass(frozen=True)
class TimingResult:
    architecture: str
    device: str  # what it ran on, in words
    dtype: str
    options: dict
    baseline_seconds: float  # plain greedy decode of the same batch, median
    baseline_ms_per_token: float
    points: tuple[TimingPoint, ...] = field(default_factory=tuple)


class OracleDraft:
    """A ``WhisperDraft`` whose real draft decoder runs, but whose proposals come from the known answer."""

    kind = "oracle"

    def __init__(self, inner: SharedEncoderDraft, vocab_size: int):
        self.inner = inner
        self.vocab_size = vocab_size
        self.answers: list[list[int]] = []  # per row: the target's greedy tokens for the next decode
        self.probability = 1.0
        self.generator = torch.Generator()

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        drafter, seconds = self.inner.start(batch)
        return _OracleDrafter(drafter, self, [len(p) for p in batch.prompts]), seconds


class _OracleDrafter:
    def __init__(self, inner: Drafter, draft: OracleDraft, prompt_lengths: Sequence[int]):
        self.inner = inner
        self.draft = draft
        self.prompt_lengths = prompt_lengths

    def propose(self, request: DraftRequest) -> Proposal:
        paid = self.inner.propose(request)  # the draft model's real cost, its own tokens discarded
        tokens = []
        for row, sequence, own in zip(request.rows.tolist(), request.sequences, paid.tokens):
            answer = self.draft.answers[row][len(sequence) - self.prompt_lengths[row]:][: len(own)]
            right = torch.rand(len(answer), generator=self.draft.generator) < self.draft.probability
            # a wrong token is any id but the answer; the target's greedy choice then rejects it
            tokens.append([t if ok else (t + 1) % self.draft.vocab_size for t, ok in zip(answer, right.tolist())])
        return Proposal(tokens=tokens, forward_calls=paid.forward_calls)


def _random_checkpoint(name: str, architecture: Architecture, device: str, dtype: torch.dtype, seed: int):
    """(target checkpoint, draft decoder) with random weights of the architecture's shapes.

    The tokenizer and generation config are base's (offline): large-v3 has one id more (<|yue|>), which
    changes nothing measurable, so the vocabulary is the tokenizer's. End-of-text's embedding row (tied to
    the output projection) is zeroed so that its logit is 0 and the random target never stops early:
    every decode is exactly ``new_tokens`` long.
    """
    base = load_whisper("base")
    vocab = len(base.tokenizer)
    torch.manual_seed(seed)
    target = WhisperForConditionalGeneration(architecture.config(vocab, architecture.decoder_layers))
    draft = WhisperDecoder(architecture.config(vocab, architecture.draft_decoder_layers))
    eot = base.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():
        for embedding in (target.model.decoder.embed_tokens, draft.embed_tokens):
            embedding.weight[eot] = 0
    target = target.to(device=device, dtype=dtype).eval()
    draft = draft.to(device=device, dtype=dtype).eval()
    extractor = WhisperFeatureExtractor(feature_size=architecture.mel_bins)
    checkpoint = WhisperCheckpoint(name=f"random-{name}", model=target, tokenizer=base.tokenizer,
                                   feature_extractor=extractor, generation_config=base.generation_config)
    return checkpoint, draft, eot


def _timed_decode(engine: SpeculativeWhisper, audio, options: WindowOptions, device: str, repeats: int):
    seconds, windows = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        windows = engine.decode_windows(audio, options)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), windows


def device_description(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def run_timing(options: TimingOptions = TimingOptions(), on_step=None) -> TimingResult:
    """Time plain greedy decoding, then the oracle-driven speculative loop at each probability."""
    dtype = options.dtype or (torch.float16 if torch.device(options.device).type == "cuda" else torch.float32)
    checkpoint, draft_decoder, eot = _random_checkpoint(
        options.architecture, ARCHITECTURES[options.architecture], options.device, dtype, options.seed)
    oracle = OracleDraft(SharedEncoderDraft(CachedWhisperDecoder(draft_decoder), eot), len(checkpoint.tokenizer))
    baseline = SpeculativeWhisper(checkpoint)
    speculative = baseline.with_draft(oracle)
    noise = np.random.default_rng(options.seed).standard_normal(20 * SAMPLE_RATE).astype(np.float32) * 0.1
    audio = [noise] * options.batch_size
    window_options = WindowOptions(language="en", draft_length=options.draft_length,
                                   adaptive_draft_length=options.adaptive_draft_length,
                                   max_new_tokens=options.new_tokens)

    baseline.decode_windows(audio, window_options)  # warm-up
    base_seconds, windows = _timed_decode(baseline, audio, window_options, options.device, options.repeats)
    oracle.answers = [list(w.tokens) for w in windows]
    generated = sum(len(w.tokens) for w in windows) / len(windows)
    if on_step:
        on_step("baseline")
    points = []
    for probability in options.probabilities:
        oracle.probability = probability
        oracle.generator.manual_seed(options.seed)
        speculative.decode_windows(audio, window_options)  # warm-up at this draft behaviour
        seconds, spec_windows = _timed_decode(speculative, audio, window_options, options.device, options.repeats)
        if [list(w.tokens) for w in spec_windows] != oracle.answers:
            raise AssertionError("speculative decoding changed the target's greedy tokens (lossless violated)")
        stats = spec_windows[0].stats
        for w in spec_windows[1:]:
            stats = stats + w.stats
        points.append(TimingPoint(
            probability=probability, acceptance_rate=stats.acceptance_rate,
            mean_accepted_length=stats.mean_accepted_length, seconds=seconds, speedup=base_seconds / seconds,
            ms_per_token=1000 * seconds / generated, target_calls=stats.target_calls // options.batch_size,
            draft_calls=stats.draft_calls // options.batch_size))
        if on_step:
            on_step(f"p={probability}")
    return TimingResult(
        architecture=options.architecture, device=device_description(options.device),
        dtype=str(dtype).removeprefix("torch."),
        options={k: str(v) for k, v in options.__dict__.items()}, baseline_seconds=base_seconds,
        baseline_ms_per_token=1000 * base_seconds / generated, points=tuple(points))


def timing_table(result: TimingResult) -> str:
    lines = [f"{result.architecture} shapes, random weights, on {result.device} ({result.dtype}); plain greedy: "
             f"{result.baseline_seconds:.3f} s per decode, {result.baseline_ms_per_token:.2f} ms per token.", "",
             "| oracle p | acceptance | mean acc. len | seconds | ms/token | speed-up | target calls | draft calls |",
             "|---|---|---|---|---|---|---|---|"]
    for p in result.points:
        lines.append(f"| {p.probability:.2f} | {p.acceptance_rate:.2f} | {p.mean_accepted_length:.2f} | "
                     f"{p.seconds:.3f} | {p.ms_per_token:.2f} | {p.speedup:.2f}x | {p.target_calls} | "
                     f"{p.draft_calls} |")
    return "\n".join(lines)


def plot_timing(result: TimingResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [p.acceptance_rate for p in result.points]
    ax.plot(xs, [p.speedup for p in result.points], marker="o")
    for p in result.points:
        ax.annotate(f"p={p.probability:.2f}", (p.acceptance_rate, p.speedup), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("measured acceptance rate")
    ax.set_ylabel("speed-up over plain greedy")
    ax.set_title(f"{result.architecture} shapes, random weights, oracle draft: {result.device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
