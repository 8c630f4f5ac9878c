"""Timing mode: the whole speculative loop's real cost for the production pair, without its weights.

Where large-v3 / distil-large-v3 cannot be downloaded, models of their exact architectures are built from
configs with random weights. Random weights make a random draft useless, so acceptance is driven by an
oracle: the draft model really runs (its cost is paid every round), but the tokens proposed are the
target's own greedy continuation, each right with a chosen probability and otherwise a token the target
will reject. Sweeping that probability (0.5 .. 0.95) charts speed-up over plain greedy decoding against
the acceptance rate actually measured, on whatever device runs it. A small architecture ("tiny") runs
the same code on a CPU in seconds, for tests.

Each run also times, on the same inputs: transformers' greedy ``generate`` (the peer), our greedy decoding
on the plain path and, where the fast path is on (CUDA by default), on fixed-shape steps replayed as
CUDA graphs. Speed-ups are over our fast-path greedy; the last column is over transformers' greedy.

Everything of ours goes through ``SpeculativeWhisper.decode_windows``: the oracle is just another draft
kind. Near-tie rescoring is off by default here: with random weights, top-two logits are close far more
often than on speech, and rescoring them would time the rescorer. Half-precision parity is measured on
real speech by ``evaluation.near_ties``; here, rows identical to greedy are counted, never assumed.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig as TransformersGenerationConfig
from transformers import WhisperConfig as TransformersWhisperConfig
from transformers import WhisperForConditionalGeneration
from transformers.utils import logging as transformers_logging

from whisper_spec.core.protocols import DraftRequest, Proposal
from whisper_spec.core.stats import synchronize
from whisper_spec.whisper.checkpoints import GenerationConfig, WhisperCheckpoint, checkpoint_dir
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import DraftSetup, WindowBatch, WindowDrafter
from whisper_spec.whisper.drafts.shared_encoder import SharedEncoderDraft
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions
from whisper_spec.whisper.features import LogMel, log_mel
from whisper_spec.whisper.modeling import Whisper, WhisperConfig, WhisperDecoder
from whisper_spec.whisper.tokenizer import WhisperTokenizer
from whisper_spec.whisper.tokens import WhisperTokens


@dataclass(frozen=True)
class Architecture:
    """The shapes of a Whisper target and of its shared-encoder draft decoder."""

    d_model: int
    heads: int
    encoder_layers: int
    decoder_layers: int  # the target's
    draft_decoder_layers: int  # the draft's (it reads the target's encoder outputs)
    mel_bins: int

    def config(self, vocab_size: int, decoder_layers: int) -> TransformersWhisperConfig:
        return TransformersWhisperConfig(
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
    # fixed-shape steps (CUDA graphs) for target and draft; None: on CUDA only (on a CPU they run eagerly,
    # slower than the plain path: useful only to test them)
    static_steps: bool | None = None
    # the tokenizer and generation config: a bundled name, or a directory holding tokenizer.json and
    # generation_config.json (no weights: what a GPU machine without the offline packages is given)
    vocabulary: str = "base"
    near_tie_margin: float = 0.0  # see the module docstring; None: the engine's default for the dtype
    transformers_greedy: bool = True  # also time transformers' generate on the same batch

    @property
    def uses_static_steps(self) -> bool:
        return self.static_steps if self.static_steps is not None else torch.device(self.device).type == "cuda"

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
    identical_rows: int  # rows whose tokens equal our greedy decoding's (all of them, unless a near-tie flipped)
    vs_transformers: float | None = None  # transformers' greedy seconds / seconds


@dataclass(frozen=True)
class TimingResult:
    architecture: str
    device: str  # what it ran on, in words
    dtype: str
    options: dict
    baseline_seconds: float  # our greedy decode of the same batch (the fast path when on), median
    baseline_ms_per_token: float
    points: tuple[TimingPoint, ...] = field(default_factory=tuple)
    static_steps: bool = False  # whether ours ran on fixed-shape steps
    cuda_graphs: bool = False  # and whether those were replayed as CUDA graphs (on CUDA; eager elsewhere)
    plain_seconds: float | None = None  # our greedy on the plain path, when the fast path is on
    plain_identical_rows: int | None = None  # of those, rows whose tokens equal the fast path's
    transformers_seconds: float | None = None  # transformers' greedy generate, same batch and tokens
    rows: int = 1
    tokens_per_row: float = 0.0  # generated by each decode
    graphs_captured: int = 0  # CUDA graphs recorded (target and draft)
    graph_failures: tuple[str, ...] = ()  # why a step shape fell back to eager launches, if any did


class OracleDraft:
    """A ``WhisperDraft`` whose real draft decoder runs, but whose proposals come from the known answer."""

    draft_length = SharedEncoderDraft.draft_length
    draft_confidence = 0.0
    reads_target_states = False

    def __init__(self, inner: SharedEncoderDraft, vocab_size: int):
        self.inner = inner
        self.vocab_size = vocab_size
        self.answers: list[list[int]] = []  # per row: the target's greedy tokens for the next decode
        self.probability = 1.0
        self.generator = torch.Generator()

    def start(self, setup: DraftSetup) -> _OracleDrafter:
        return _OracleDrafter(self.inner.start(setup), self, setup.rules.prompt_lengths)


class _OracleDrafter:
    def __init__(self, inner: WindowDrafter, draft: OracleDraft, prompt_lengths: Sequence[int]):
        self.inner = inner
        self.draft = draft
        self.prompt_lengths = prompt_lengths  # per row, kept up to date as windows join

    def admit(self, batch: WindowBatch) -> float:
        return self.inner.admit(batch)

    def propose(self, request: DraftRequest) -> Proposal:
        paid = self.inner.propose(request)  # the draft model's real cost, its own tokens discarded
        tokens = []
        for row, sequence, own in zip(request.rows.tolist(), request.sequences, paid.tokens):
            answer = self.draft.answers[row][len(sequence) - self.prompt_lengths[row]:][: len(own)]
            right = torch.rand(len(answer), generator=self.draft.generator) < self.draft.probability
            # a wrong token is any id but the answer; the target's greedy choice then rejects it
            tokens.append([t if ok else (t + 1) % self.draft.vocab_size for t, ok in zip(answer, right.tolist())])
        return Proposal(tokens=tokens, forward_calls=paid.forward_calls)


def _vocabulary(source: str) -> Path:
    """The directory holding tokenizer.json and generation_config.json: ``source`` itself, or a bundled
    model's converted checkpoint."""
    path = Path(source).expanduser()
    return path if (path / "tokenizer.json").is_file() else checkpoint_dir(source)


def _random_checkpoint(name: str, architecture: Architecture, device: str, dtype: torch.dtype, seed: int,
                       vocabulary: str = "base"):
    """(target checkpoint, draft decoder) with random weights of the architecture's shapes.

    The tokenizer and generation config are base's (offline): large-v3 has one id more (<|yue|>), which
    changes nothing measurable, so the vocabulary is the tokenizer's. End-of-text's embedding row (tied to
    the output projection) is zeroed so that its logit is 0 and the random target never stops early:
    every decode is exactly ``new_tokens`` long. The models are built on ``device`` directly (large-v3's
    random initialisation on a CPU alone takes minutes).
    """
    source = _vocabulary(vocabulary)
    tokenizer = WhisperTokenizer.from_file(source / "tokenizer.json")
    generation_config = GenerationConfig.from_dir(source)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        target = Whisper(WhisperConfig.from_dict(architecture.config(vocab, architecture.decoder_layers).to_dict()))
        draft = WhisperDecoder(WhisperConfig.from_dict(
            architecture.config(vocab, architecture.draft_decoder_layers).to_dict()))
    eot = WhisperTokens.of(tokenizer, generation_config).eot
    with torch.no_grad():
        for embedding in (target.model.decoder.embed_tokens, draft.embed_tokens):
            embedding.weight[eot] = 0
    target = target.to(device=device, dtype=dtype).eval()
    draft = draft.to(device=device, dtype=dtype).eval()
    checkpoint = WhisperCheckpoint(name=f"random-{name}", model=target, tokenizer=tokenizer,
                                   feature_extractor=LogMel(architecture.mel_bins), generation_config=generation_config)
    return checkpoint, draft, eot


def _as_transformers(checkpoint, architecture: Architecture, vocabulary: str) -> WhisperForConditionalGeneration:
    """The checkpoint's weights (shared, not copied) in transformers' classes, with its generation config."""
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(
            architecture.config(len(checkpoint.tokenizer), architecture.decoder_layers))
    model.load_state_dict(checkpoint.model.state_dict(), strict=False, assign=True)
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    model.generation_config = TransformersGenerationConfig.from_pretrained(_vocabulary(vocabulary))
    return model.eval()


def _median_seconds(decode, device: str, repeats: int):
    """(median seconds of ``repeats`` calls of ``decode()``, its last result); the GPU is synchronised first."""
    seconds, result = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = decode()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def _transformers_greedy(checkpoint, model: WhisperForConditionalGeneration, audio, new_tokens: int):
    """A function running transformers' greedy ``generate`` on the batch (features made once, outside the clock)."""
    features = log_mel(checkpoint, audio)
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample, config.num_beams = new_tokens, False, 1

    @torch.inference_mode()
    def decode():
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # generate() warns about its own Whisper defaults per call
        try:
            return model.generate(features, generation_config=config, language="en", task="transcribe")
        finally:
            transformers_logging.set_verbosity(verbosity)

    return decode


def device_description(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def run_timing(options: TimingOptions = TimingOptions(), on_step=None) -> TimingResult:
    """Time greedy decoding (transformers', ours), then the oracle-driven speculative loop at each probability."""
    dtype = options.dtype or (torch.float16 if torch.device(options.device).type == "cuda" else torch.float32)
    static = options.uses_static_steps
    checkpoint, draft_decoder, eot = _random_checkpoint(
        options.architecture, ARCHITECTURES[options.architecture], options.device, dtype, options.seed,
        options.vocabulary)
    draft = CachedWhisperDecoder(draft_decoder, static_steps=static)
    oracle = OracleDraft(SharedEncoderDraft(draft, eot),
                         len(checkpoint.tokenizer))
    baseline = SpeculativeWhisper(checkpoint, static_steps=static)
    speculative = baseline.with_draft(oracle)
    samples = 20 * checkpoint.feature_extractor.sampling_rate
    noise = np.random.default_rng(options.seed).standard_normal(samples).astype(np.float32) * 0.1
    audio = [noise] * options.batch_size
    window_options = WindowOptions(language="en", draft_length=options.draft_length,
                                   adaptive_draft_length=options.adaptive_draft_length,
                                   max_new_tokens=options.new_tokens, near_tie_margin=options.near_tie_margin)

    def timed(engine: SpeculativeWhisper):
        engine.decode_windows(audio, window_options)  # warm-up (and, on the fast path, graph capture)
        return _median_seconds(lambda: engine.decode_windows(audio, window_options), options.device, options.repeats)

    transformers_seconds = None
    if options.transformers_greedy:
        model = _as_transformers(checkpoint, ARCHITECTURES[options.architecture], options.vocabulary)
        decode = _transformers_greedy(checkpoint, model, audio, options.new_tokens)
        decode()  # warm-up
        transformers_seconds, _ = _median_seconds(decode, options.device, options.repeats)
        if on_step:
            on_step("transformers greedy")
    plain_seconds, plain_windows = None, None
    if static:
        plain_seconds, plain_windows = timed(SpeculativeWhisper(checkpoint))
        if on_step:
            on_step("plain greedy")
    base_seconds, windows = timed(baseline)
    oracle.answers = [list(w.tokens) for w in windows]
    generated = sum(len(w.tokens) for w in windows) / len(windows)
    if on_step:
        on_step("greedy")
    points = []
    for probability in options.probabilities:
        oracle.probability = probability
        oracle.generator.manual_seed(options.seed)
        seconds, spec_windows = timed(speculative)
        stats = spec_windows[0].stats
        for w in spec_windows[1:]:
            stats = stats + w.stats
        points.append(TimingPoint(
            probability=probability, acceptance_rate=stats.acceptance_rate,
            mean_accepted_length=stats.mean_accepted_length, seconds=seconds, speedup=base_seconds / seconds,
            ms_per_token=1000 * seconds / generated, target_calls=stats.target_calls // options.batch_size,
            draft_calls=stats.draft_calls // options.batch_size,
            identical_rows=sum(list(w.tokens) == a for w, a in zip(spec_windows, oracle.answers)),
            vs_transformers=transformers_seconds / seconds if transformers_seconds else None))
        if on_step:
            on_step(f"p={probability}")
    return TimingResult(
        architecture=options.architecture, device=device_description(options.device),
        dtype=str(dtype).removeprefix("torch."),
        options={k: str(v) for k, v in options.__dict__.items()}, baseline_seconds=base_seconds,
        baseline_ms_per_token=1000 * base_seconds / generated, points=tuple(points), static_steps=static,
        cuda_graphs=static and torch.device(options.device).type == "cuda",
        graphs_captured=sum(d._steps.captured for d in (baseline.decoder, draft) if d.static_steps),
        graph_failures=tuple(f for d in (baseline.decoder, draft) if d.static_steps for f in d._steps.failures),
        plain_seconds=plain_seconds, transformers_seconds=transformers_seconds, rows=options.batch_size,
        plain_identical_rows=(sum(p.tokens == w.tokens for p, w in zip(plain_windows, windows))
                              if plain_windows is not None else None),
        tokens_per_row=generated)


def timing_table(result: TimingResult) -> str:
    def ms_per_token(seconds: float) -> float:
        return 1000 * seconds / result.tokens_per_row

    path = "fixed-shape steps (CUDA graphs)" if result.cuda_graphs else (
        "fixed-shape steps, eager" if result.static_steps else "plain path")
    lines = [f"{result.architecture} shapes, random weights, on {result.device} ({result.dtype}), "
             f"batch {result.rows}; per row per token:", "",
             "| greedy decoding | seconds per decode | ms per token | our last row's speed-up over it |",
             "|---|---|---|---|"]
    if result.transformers_seconds is not None:
        lines.append(f"| transformers `generate` | {result.transformers_seconds:.3f} | "
                     f"{ms_per_token(result.transformers_seconds):.2f} | "
                     f"{result.transformers_seconds / result.baseline_seconds:.2f}x |")
    if result.plain_seconds is not None:
        lines.append(f"| ours, plain path ({result.plain_identical_rows}/{result.rows} rows = the fast path's) | "
                     f"{result.plain_seconds:.3f} | {ms_per_token(result.plain_seconds):.2f} | "
                     f"{result.plain_seconds / result.baseline_seconds:.2f}x |")
    lines += [f"| ours, {path} | {result.baseline_seconds:.3f} | {result.baseline_ms_per_token:.2f} | - |", ""]
    if result.cuda_graphs:
        reasons = "".join(f"; {f}" for f in sorted(set(result.graph_failures)))
        lines += [f"CUDA graphs recorded: {result.graphs_captured}; shapes that fell back to eager launches: "
                  f"{len(result.graph_failures)}{reasons}", ""]
    lines += ["| oracle p | acceptance | mean acc. len | seconds | ms/token | speed-up vs our greedy | "
              "vs transformers greedy | target calls | draft calls | rows = greedy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in result.points:
        versus = f"{p.vs_transformers:.2f}x" if p.vs_transformers is not None else "-"
        lines.append(f"| {p.probability:.2f} | {p.acceptance_rate:.2f} | {p.mean_accepted_length:.2f} | "
                     f"{p.seconds:.3f} | {p.ms_per_token:.2f} | {p.speedup:.2f}x | {versus} | {p.target_calls} | "
                     f"{p.draft_calls} | {p.identical_rows}/{result.rows} |")
    return "\n".join(lines)


def plot_timing(result: TimingResult, path: Path) -> Path:
    import matplotlib  # here, not at the top: a bare GPU machine runs the timing without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluation.gpu_timing``: the timing tables at one or more batch sizes, without the audio stack."""
    import argparse
    import dataclasses
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m evaluation.gpu_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="large-v3", choices=list(ARCHITECTURES),
                        help="shapes to build (default: %(default)s, with distil-large-v3's two-layer draft)")
    parser.add_argument("--batch", type=int, action="append",
                        help="windows decoded together; repeat for several tables (default: 1)")
    parser.add_argument("--probabilities", default="0.5,0.7,0.9",
                        help="comma-separated chances that each oracle token is right (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per window (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed decodes per point, median kept (default: %(default)s)")
    parser.add_argument("--draft-length", type=int, default=6,
                        help="the most draft tokens a round (default: %(default)s)")
    parser.add_argument("--fixed-draft-length", action="store_true", help="always draft --draft-length tokens")
    parser.add_argument("--device", default=TimingOptions.device, help="cuda or cpu (default: %(default)s)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                        help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--static-steps", choices=("auto", "on", "off"), default="auto",
                        help="fixed-shape steps replayed as CUDA graphs (auto: on for CUDA)")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers' greedy generate")
    parser.add_argument("--vocabulary", default="base",
                        help="a bundled model name, or a directory with tokenizer.json and generation_config.json")
    parser.add_argument("--out", type=Path, default=None, help="also write timing.md and timing.json here")
    args = parser.parse_args(argv)
    tables, results = [], []
    for batch in args.batch or [1]:
        options = TimingOptions(
            architecture=args.architecture, probabilities=tuple(float(p) for p in args.probabilities.split(",")),
            new_tokens=args.tokens, batch_size=batch, draft_length=args.draft_length,
            adaptive_draft_length=not args.fixed_draft_length, repeats=args.repeats, device=args.device,
            dtype=getattr(torch, args.dtype) if args.dtype else None,
            static_steps={"auto": None, "on": True, "off": False}[args.static_steps],
            transformers_greedy=not args.no_transformers, vocabulary=args.vocabulary)
        result = run_timing(options, on_step=lambda label, batch=batch: print(f"  batch {batch}: {label} done",
                                                                              flush=True))
        tables.append(timing_table(result))
        results.append(dataclasses.asdict(result))
        print(tables[-1], flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m evaluation.gpu_timing " + " ".join(argv if argv is not None else sys.argv[1:])
        (args.out / "timing.md").write_text(f"```\n{command}\n```\n\n" + "\n\n".join(tables) + "\n")
        (args.out / "timing.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
