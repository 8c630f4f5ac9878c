"""The Gradio demo: the same audio decoded with and without a draft, side by side.

Start it with ``python -m demo.app`` (``--help`` lists the options). Every transcription goes through
``WhisperModel.transcribe``, twice: once with the preset's draft (speculative) and once with the same
loaded target alone (the baseline); the page keeps one such pair per preset, loaded on first use.
The page shows both transcripts, their wall time
and real-time factor, the speed-up, whether the token ids are identical, which tokens the target
accepted from the draft, and the accepted-length histogram.
"""

from __future__ import annotations

import argparse
import functools
import logging
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from whisper_spec import compute_types
from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, load_audio
from whisper_spec.compute_types import COMPUTE_TYPES
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.generation import DEFAULT_DRAFTS, Generation, generate
from whisper_spec.model import WhisperModel
from whisper_spec.output_formats import write_outputs
from whisper_spec.presets import DEFAULT_PRESET, PRESETS
from whisper_spec.text.checkpoints import bundled_text_models
from whisper_spec.text.drafts import PROMPT_LOOKUP
from whisper_spec.transcription import Transcription

log = logging.getLogger("demo")

class Source(str, Enum):
    """How a transcript token was produced."""

    DRAFT = "accepted draft token"
    TARGET = "target's own token"


# Every torch call of the page runs on this one thread, never on the main thread or Gradio's handler threads.
# libgomp gives each thread that starts a parallel region a team of workers of its own, and once a process
# holds more of them than CPUs, its workers stop spinning between regions and every parallel operation
# pays a wake-up: a 7-s clip loaded on the main thread and transcribed on another took 0.80 s against
# 0.62 s with both on one thread (measurements-behind-the-defaults.md).
TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")


def on_torch_thread(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` run on ``TORCH_THREAD``; its result, or its exception raised here."""
    return TORCH_THREAD.submit(function, *args, **kwargs).result()


COLORS = {Source.DRAFT.value: "#2e9e5b", Source.TARGET.value: "#e8912d"}  # green: accepted, orange: target's own
CSS = """
.verdict { font-size: 1.15em; display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; }
.verdict .badge { font-weight: bold; padding: 0.15em 0.6em; border-radius: 0.4em; color: white;
                  font-family: "DejaVu Sans", sans-serif; }
.verdict .badge.same { background: #2e9e5b; }
.verdict .badge.differ { background: #c0392b; }
"""


@dataclass(frozen=True)
class DemoConfig:
    max_audio_seconds: float = 30.0  # longer recordings are refused with a message (the engine decodes one window)
    concurrency_limit: int = 1  # decodes run one at a time (the models are shared); others wait in the queue
    max_queue: int = 16  # requests beyond this many waiting are turned away with a message
    default_preset: str = DEFAULT_PRESET
    default_text_model: str = "smollm2-135m"  # the smallest bundled text LLM: quick to load on a CPU
    max_new_tokens: int = 128  # upper end of the text tab's length slider
    device: str = "cpu"
    compute_type: str = "default"  # the target's precision, as faster-whisper names it (see WhisperModel)


class UserError(Exception):
    """Something the person using the page can fix; its message is shown in the page as it is."""


@dataclass(frozen=True)
class SpeechComparison:
    speculative: Transcription  # decoded with the preset's draft
    baseline: Transcription  # decoded by the target alone
    pieces: tuple[tuple[str, Source], ...] | None  # the speculative transcript's text per token; None: unknown

    @property
    def identical(self) -> bool:
        return self.speculative.tokens == self.baseline.tokens

    @property
    def speed_up(self) -> float:
        """Baseline wall time over speculative wall time (above 1: speculation was faster)."""
        return self.baseline.stats.wall_seconds / self.speculative.stats.wall_seconds


def checked_audio(path: str | None, config: DemoConfig) -> np.ndarray:
    """16 kHz mono samples of an uploaded or recorded file; a UserError says what is wrong with it."""
    if not path:
        raise UserError("Upload an audio file or record from the microphone first.")
    name = Path(path).name
    try:
        samples = load_audio(path)
    except AudioLoadError as error:
        raise UserError(f"“{name}” could not be read as audio. Please choose a recording (WAV, FLAC, MP3, OGG, "
                        f"M4A, ...).\n\nDetails: {error.reason}.") from error
    seconds = samples.size / SAMPLE_RATE
    if seconds < 0.1:
        raise UserError(f"“{name}” holds only {seconds * 1000:.0f} ms of audio: there is nothing to transcribe.")
    if seconds > config.max_audio_seconds:
        raise UserError(f"“{name}” is {seconds:.1f} s long; this demo transcribes at most "
                        f"{config.max_audio_seconds:.0f} s. Please upload a shorter clip.")
    return samples


class SpeechModels:
    """The page's loaded models: per preset, the speculative model and the baseline on the same weights.

    Loaded on first use and kept, so that each learns what its draft costs on this machine.
    """

    def __init__(self, device: str, compute_type: str = "default"):
        self.device, self.compute_type = device, compute_type
        self._pairs: dict[str, tuple[WhisperModel, WhisperModel]] = {}
        self._lock = threading.Lock()

    def pair(self, preset: str) -> tuple[WhisperModel, WhisperModel]:
        """(speculative, baseline) for ``preset``; raises UserError when its models cannot load here."""
        if preset not in PRESETS:
            raise UserError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
        with self._lock:
            if preset not in self._pairs:
                try:
                    speculative = WhisperModel(preset=preset, device=self.device, compute_type=self.compute_type)
                except OSError as error:  # a hub checkpoint on a machine without the hub, a missing cache
                    raise UserError(f"The models of preset “{preset}” could not be loaded here: {error}") from error
                self._pairs[preset] = (speculative, speculative.with_draft(None))
            return self._pairs[preset]


def compare(samples: np.ndarray, preset: str, models: SpeechModels) -> SpeechComparison:
    """Transcribe ``samples`` with the preset's draft and without one (the speculative run goes first)."""
    speculative_model, baseline_model = models.pair(preset)
    speculative = speculative_model.transcribe(samples, timestamps=True)
    baseline = baseline_model.transcribe(samples, timestamps=True)
    sources = [Source.DRAFT if drafted else Source.TARGET for drafted in speculative.from_draft]
    pieces = (_pieces(speculative_model.checkpoint, speculative.tokens, sources)
              if len(sources) == len(speculative.tokens) else None)
    return SpeechComparison(speculative, baseline, pieces)


def _pieces(checkpoint, tokens: Sequence[int], sources: Sequence[Source]) -> tuple[tuple[str, Source], ...]:
    """Each token's share of the decoded text (decoding prefixes keeps multi-byte characters whole)."""
    pieces = []
    text_so_far = ""
    for i, source in enumerate(sources):
        # special tokens (timestamps included) have no text of their own
        text = checkpoint.tokenizer.decode(checkpoint.tokens.text_ids(tokens[: i + 1]))
        if text != text_so_far and text.startswith(text_so_far):
            pieces.append((text[len(text_so_far):], source))
            text_so_far = text
    return tuple(pieces)


# ---- rendering: one function per part of the page ------------------------------------------------------

def timing_markdown(result: Transcription) -> str:
    return (f"**Wall time** {result.stats.wall_seconds:.2f} s · **real-time factor** "
            f"{result.real_time_factor:.2f} · {len(result.tokens)} tokens in {result.stats.target_calls} target passes")


def verdict_html(speculative: Sequence[int], baseline: Sequence[int], speed_up: float) -> str:
    """The identical-mark (token ids compared) and the speed-up, in one line."""
    if tuple(speculative) == tuple(baseline):
        mark = ('<span class="badge same">✓ Identical</span> the speculative token ids equal the baseline\'s '
                f'({len(speculative)} tokens)')
    else:
        first = next((i for i, (a, b) in enumerate(zip(speculative, baseline)) if a != b),
                     min(len(speculative), len(baseline)))
        mark = ('<span class="badge differ">✗ Different</span> the token ids differ from token '
                f'{first} on ({len(speculative)} vs {len(baseline)} tokens)')
    return (f'<div class="verdict">{mark}<span class="speedup">speed-up <b>{speed_up:.2f}×</b> '
            '(baseline wall time / speculative wall time)</span></div>')


def acceptance_markdown(stats: SpeculationStats, draft: str | None) -> str:
    if draft is None:
        return "No draft: both columns are the target alone."
    if stats.drafted == 0:
        return (f"**Draft `{draft}` not used this time**: the adaptive draft length chose the target's plain "
                "steps (the draft measured slower than them on this machine, or the text was too short to "
                "draft); it is re-tried now and then.")
    return (f"**Acceptance** {stats.acceptance_rate:.0%} ({stats.accepted} of {stats.drafted} draft tokens) · "
            f"**mean accepted per round** {stats.mean_accepted_length:.2f} · draft: `{draft}`")


def histogram_figure(stats: SpeculationStats) -> Figure | None:
    """Bar chart: how many rounds accepted n draft tokens."""
    if not stats.accepted_lengths:
        return None
    lengths, counts = zip(*stats.accepted_lengths)
    figure = Figure(figsize=(4.2, 2.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.bar(lengths, counts, color=COLORS[Source.DRAFT.value])
    axes.set_xticks(range(0, max(lengths) + 1))
    axes.set_xlabel("draft tokens accepted in a round")
    axes.set_ylabel("rounds")
    axes.set_ylim(0, max(counts) * 1.15)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Accepted-length histogram", fontsize=10)
    return figure


SEGMENT_HEADERS = ["start", "end", "text"]
DOWNLOAD_FORMATS = ("srt", "vtt", "json")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes):02d}:{seconds:05.2f}"


def segment_rows(result: Transcription) -> list[list[str]]:
    return [[_clock(s.start), _clock(s.end), s.text.strip()] for s in result.segments]


def subtitle_files(result: Transcription, name: str, downloads: Path) -> list[str]:
    """The transcript as srt, vtt and json files named after the upload, in a fresh folder under ``downloads``."""
    folder = Path(tempfile.mkdtemp(dir=downloads))
    return [str(path) for path in write_outputs(result, folder / (Path(name).stem or "transcript"), DOWNLOAD_FORMATS)]


EMPTY_SPEECH_OUTPUTS = ("", "", "", "", "", None, "", None, [], None)  # everything after the status line


def run_speech(audio_path: str | None, preset: str, config: DemoConfig, models: SpeechModels, downloads: Path):
    """The Transcribe button: every output of the speech tab, or a friendly message and empty outputs."""
    try:
        comparison = on_torch_thread(compare, checked_audio(audio_path, config), preset, models)
    except UserError as error:
        return (f"⚠️ {error}",) + EMPTY_SPEECH_OUTPUTS
    except Exception:  # the page must keep serving; the traceback goes to the server log
        log.exception("transcription failed")
        return ("⚠️ Something went wrong while transcribing this file; the details are in the server log.",
                ) + EMPTY_SPEECH_OUTPUTS
    spec = comparison.speculative
    pieces = ([(text, source.value) for text, source in comparison.pieces] if comparison.pieces is not None
              else [("(per-token provenance unavailable for this decode)", None)])
    return (f"Transcribed {spec.audio_seconds:.1f} s of audio ({spec.language}) with preset “{preset}”.",
            verdict_html(spec.tokens, comparison.baseline.tokens, comparison.speed_up),
            spec.text, timing_markdown(spec),
            comparison.baseline.text, timing_markdown(comparison.baseline),
            pieces, acceptance_markdown(spec.stats, spec.draft), histogram_figure(spec.stats), segment_rows(spec),
            subtitle_files(spec, Path(audio_path).name, downloads))


# ---- the text tab: a chat prompt through generate(), with a draft and without -----------------------------

def _streamed(run: Callable[[Callable[[str], None]], Generation]) -> Iterator[str | Generation]:
    """Run ``run(on_text)`` on the torch thread; yield each text piece as it arrives, then the result."""
    pieces: queue.Queue = queue.Queue()
    outcome: list[Generation | BaseException] = []

    def work() -> None:
        try:
            outcome.append(run(pieces.put))
        except BaseException as error:  # handed to the caller's thread below
            outcome.append(error)
        finally:
            pieces.put(None)

    TORCH_THREAD.submit(work)
    while (piece := pieces.get()) is not None:
        yield piece
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    yield outcome[0]


def text_timing_markdown(result: Generation) -> str:
    return (f"**Wall time** {result.stats.wall_seconds:.2f} s · **{result.tokens_per_second:.1f} tokens/s** · "
            f"{len(result.tokens)} tokens in {result.stats.target_calls} target passes")


EMPTY_TEXT_OUTPUTS = ("", "", "", "", "", "", None)  # everything after the status line


def run_text(prompt: str, target: str, draft: str, max_new_tokens: int, config: DemoConfig) -> Iterator[tuple]:
    """The Generate button: stream the speculative answer, then the baseline's, then the comparison."""
    if not prompt.strip():
        yield ("⚠️ Type a prompt first.",) + EMPTY_TEXT_OUTPUTS
        return
    messages = [{"role": "user", "content": prompt}]
    results: dict[str | None, Generation] = {}
    try:
        for which in (draft, None):
            text = ""
            label = f"with draft `{draft}`" if which else "with the target alone"
            for item in _streamed(lambda on_text, which=which: generate(
                    messages, target, which, device=config.device, max_new_tokens=int(max_new_tokens),
                    on_text=on_text)):
                if isinstance(item, Generation):
                    results[which] = item
                    break
                text += item
                spec_text = text if which else results[draft].text
                base_text = "" if which else text
                yield (f"Generating {label} …", "", spec_text, "", base_text, "", "", None)
    except (ImportError, OSError, ValueError) as error:  # a model bundle that is not installed, a bad name
        yield (f"⚠️ The text model could not run: {error}",) + EMPTY_TEXT_OUTPUTS
        return
    except Exception:  # the page must keep serving; the traceback goes to the server log
        log.exception("generation failed")
        yield ("⚠️ Something went wrong while generating; the details are in the server log.",) + EMPTY_TEXT_OUTPUTS
        return
    spec, base = results[draft], results[None]
    speed_up = base.stats.wall_seconds / spec.stats.wall_seconds
    yield (f"Generated {len(spec.tokens)} tokens with `{target}`.", verdict_html(spec.tokens, base.tokens, speed_up),
           spec.text, text_timing_markdown(spec), base.text, text_timing_markdown(base),
           acceptance_markdown(spec.stats, spec.draft), histogram_figure(spec.stats))



def build_app(config: DemoConfig = DemoConfig(), models: SpeechModels | None = None) -> gr.Blocks:
    models = models or SpeechModels(config.device, config.compute_type)
    preset_choices = [(f"{name} — {preset.note}", name) for name, preset in PRESETS.items()]
    with gr.Blocks(title="whisper-spec: speculative decoding demo", analytics_enabled=False) as app:
        gr.Markdown("# whisper-spec\nLossless speculative decoding for Whisper: a small draft proposes tokens, "
                    "the target checks them all in one pass. Greedy output is the target's own, token for token "
                    "— compare the two columns.")
        with gr.Tab("Speech"):
            with gr.Row():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio (upload or record)",
                                 elem_id="audio-input")
                with gr.Column():
                    preset = gr.Dropdown(preset_choices, value=config.default_preset, label="Target / draft preset",
                                         elem_id="preset")
                    button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
                    status = gr.Markdown(f"Clips up to {config.max_audio_seconds:.0f} s.", elem_id="status")
            verdict = gr.HTML(elem_id="verdict")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Speculative (target + draft)")
                    spec_text = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="spec-text")
                    spec_timing = gr.Markdown(elem_id="spec-timing")
                with gr.Column():
                    gr.Markdown("### Baseline (target alone)")
                    base_text = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="base-text")
                    base_timing = gr.Markdown(elem_id="base-timing")
            with gr.Row():
                with gr.Column(scale=3):
                    tokens = gr.HighlightedText(label="How each token was produced", color_map=COLORS,
                                                show_legend=True, show_inline_category=False, elem_id="tokens")
                    acceptance = gr.Markdown(elem_id="acceptance")
                histogram = gr.Plot(label="Accepted-length histogram", show_label=False, format="png",
                                    elem_id="histogram", scale=2)
            with gr.Accordion("Segments and subtitles", open=True):
                segments = gr.Dataframe(headers=SEGMENT_HEADERS, column_count=3, interactive=False,
                                        label="Segments (speculative run)", elem_id="segments", wrap=True)
                downloads = gr.File(label="Download (srt, vtt, json)", file_count="multiple", interactive=False,
                                    elem_id="downloads")
        with gr.Tab("Text"):
            text_models = bundled_text_models()
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", lines=4, elem_id="prompt",
                                    value="Write a Python function that returns the n-th Fibonacci number.")
                with gr.Column():
                    text_target = gr.Dropdown(text_models, value=config.default_text_model, label="Target",
                                              elem_id="text-target")
                    text_draft = gr.Dropdown([PROMPT_LOOKUP, *text_models], label="Draft", elem_id="text-draft",
                                             value=DEFAULT_DRAFTS.get(config.default_text_model, PROMPT_LOOKUP))
                    max_new_tokens = gr.Slider(8, config.max_new_tokens, value=min(64, config.max_new_tokens),
                                               step=8, label="New tokens at most", elem_id="max-new-tokens")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    text_status = gr.Markdown("Answers are streamed as they are verified.", elem_id="text-status")
            text_verdict = gr.HTML(elem_id="text-verdict")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Speculative (target + draft)")
                    text_spec = gr.Textbox(label="Answer", lines=8, interactive=False, elem_id="text-spec")
                    text_spec_timing = gr.Markdown(elem_id="text-spec-timing")
                with gr.Column():
                    gr.Markdown("### Baseline (target alone)")
                    text_base = gr.Textbox(label="Answer", lines=8, interactive=False, elem_id="text-base")
                    text_base_timing = gr.Markdown(elem_id="text-base-timing")
            with gr.Row():
                text_acceptance = gr.Markdown(elem_id="text-acceptance")
                text_histogram = gr.Plot(show_label=False, format="png", elem_id="text-histogram")

        downloads_folder = Path(tempfile.mkdtemp(prefix="whisper-spec-demo-"))
        # both buttons share one slot: the models are shared and a CPU has no room for two decodes at once
        button.click(functools.partial(run_speech, config=config, models=models, downloads=downloads_folder),
                     inputs=[audio, preset],
                     outputs=[status, verdict, spec_text, spec_timing, base_text, base_timing, tokens, acceptance,
                              histogram, segments, downloads],
                     concurrency_limit=config.concurrency_limit, concurrency_id="models")
        generate_button.click(functools.partial(run_text, config=config),
                              inputs=[prompt, text_target, text_draft, max_new_tokens],
                              outputs=[text_status, text_verdict, text_spec, text_spec_timing, text_base,
                                       text_base_timing, text_acceptance, text_histogram],
                              concurrency_limit=config.concurrency_limit, concurrency_id="models")
    app.queue(max_size=config.max_queue, default_concurrency_limit=config.concurrency_limit)
    return app




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 to serve the network).")
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    parser.add_argument("--preset", default=DemoConfig.default_preset, choices=list(PRESETS),
                        help="The preset selected when the page opens (its models load at start).")
    parser.add_argument("--max-audio-seconds", type=float, default=DemoConfig.max_audio_seconds,
                        help="Longest recording accepted; longer uploads get a message instead.")
    parser.add_argument("--concurrency", type=int, default=DemoConfig.concurrency_limit,
                        help="How many decodes run at once; further requests wait in the queue.")
    parser.add_argument("--max-queue", type=int, default=DemoConfig.max_queue,
                        help="How many requests may wait; more are turned away with a message.")
    parser.add_argument("--text-model", default=DemoConfig.default_text_model, choices=bundled_text_models(),
                        help="The text LLM selected when the text tab opens (loaded on its first use).")
    parser.add_argument("--device", default="cpu", help="Where the models run: cpu or cuda.")
    parser.add_argument("--compute-type", default="default", choices=("default", *COMPUTE_TYPES),
                        help=f"The models' {compute_types.HELP}.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
    parser.add_argument("--no-warm-up", action="store_true", help="Load models on the first request, not at start.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        on_torch_thread(torch.set_num_threads, args.threads)
    config = DemoConfig(max_audio_seconds=args.max_audio_seconds, concurrency_limit=args.concurrency,
                        max_queue=args.max_queue, default_preset=args.preset,
                        default_text_model=args.text_model, device=args.device,
                        compute_type=args.compute_type)
    models = SpeechModels(config.device, config.compute_type)
    if not args.no_warm_up:  # before the first visitor, so that the first timings are fair
        log.info("loading the models of preset %s", config.default_preset)
        on_torch_thread(models.pair, config.default_preset)
    build_app(config, models).launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False,
                             quiet=True, footer_links=[], css=CSS)


if __name__ == "__main__":
    main()
