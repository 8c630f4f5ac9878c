"""Audio of any length: Whisper's sequential 30-second window algorithm (openai/whisper ``transcribe``).

Each window is decoded with timestamps, the transcript so far as its <|startofprev|> prompt; the next
window starts at the last complete timestamp (so a sentence cut by the window edge is decoded again,
whole), or after the window when it ends with a lone timestamp. A window the target thinks is silence
(no-speech probability above the threshold and a low average log-probability) is skipped, and one whose
text compresses too well (a hallucinated loop) is dropped. Every decision reads only the target's
tokens and one teacher-forced target pass over them, so the segments are the same with a draft or without.

``LongformFile`` is one file's state; ``decode_files`` advances many files together in one batch of rows
(``engine.WindowSlots``), each file's next window joining as soon as its last one finished (a batch size of
1 is plain sequential transcription).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from whisper_spec.audio import SAMPLE_RATE
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.whisper.engine import (
    DecodedWindow,
    SpeculativeWhisper,
    WindowOptions,
    WindowRequest,
    WindowSlots,
)
from whisper_spec.whisper.features import HOP_LENGTH  # seek positions count mel frames, as in Whisper
from whisper_spec.whisper.timestamps import TIME_PRECISION
from whisper_spec.whisper.word_timestamps import align_words, tidy_words

WINDOW_FRAMES = 3000  # 30 s
FRAMES_PER_TIMESTAMP = 2  # one timestamp step (20 ms) is two mel frames
MAX_NEW_TOKENS = 224  # Whisper's sample_len: half the decoder's 448 positions per window
MAX_PREVIOUS_TOKENS = 220  # prompt text kept, so that prompt + 224 new tokens fit in 448 positions


@dataclass(frozen=True)
class LongformOptions:
    window: WindowOptions = WindowOptions(timestamps=True)  # per-window decoding (language, task, draft length ...)
    condition_on_previous_text: bool = True  # prompt each window with the transcript so far
    no_speech_threshold: float | None = 0.6  # skip a window above this no-speech probability ...
    logprob_threshold: float | None = -1.0  # ... unless its average log-probability is above this
    compression_ratio_threshold: float | None = 2.4  # drop a window whose text gzips better than this (a loop)
    word_timestamps: bool = False  # align words to the audio (cross-attention + DTW)
    # a window quieter than this (RMS, dB below full scale) is silence, skipped without decoding: on digital
    # silence Whisper is sure of a word ("you") and the no-speech check alone lets it through
    silence_db: float | None = -60.0
    # text before the audio (OpenAI's ``prompt``, Whisper's ``initial_prompt``): the first window's
    # <|startofprev|> prompt, until the prompt is reset
    initial_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.word_timestamps and not self.window.timestamps:
            raise ValueError("word timestamps need timestamp decoding (timestamps=True)")


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: tuple[int, ...]  # target ids, timestamps included
    avg_logprob: float | None  # of the window it came from (None where the no-speech check did not need it)
    no_speech_prob: float  # of the window it came from
    compression_ratio: float  # of the window's text
    words: tuple[Word, ...] = ()  # with word timestamps only
    # how it was decoded, not what was decoded: left out of equality
    # per token: an accepted draft token (True) or the target's own (False)
    from_draft: tuple[bool, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class LongformResult:
    segments: tuple[Segment, ...]
    language: str
    audio_seconds: float
    stats: SpeculationStats  # summed over windows; wall_seconds is this file's share of the decoding time
    windows: int  # windows decoded
    skipped_windows: int  # windows judged silent
    dropped_windows: int  # windows whose text was a repetition loop
    elapsed_seconds: float = 0.0  # wall time from when decoding took the file to when it finished

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(t for s in self.segments for t in s.tokens)


def compression_ratio(text: str) -> float:
    """Bytes of text over bytes of its zlib compression: repetition loops score high (Whisper's check)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(eq=False)
class LongformFile:
    """One file's progress through the window algorithm: ask ``next_window``, hand its result to ``accept``."""

    engine: SpeculativeWhisper
    samples: np.ndarray  # [n] 16 kHz mono
    options: LongformOptions
    seek: int = 0  # mel frames already transcribed
    language: str | None = None
    segments: list[Segment] = field(default_factory=list)
    history: list[int] = field(default_factory=list)  # tokens of every segment so far
    prompt_start: int = 0  # history[prompt_start:] is the next window's prompt ...
    initial_prompt: tuple[int, ...] = ()  # ... after these ids, until the prompt is first reset
    started: float = field(default_factory=time.perf_counter)  # when decoding took the file
    stats: SpeculationStats = SpeculationStats()
    windows: int = 0
    skipped: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self.language = self.language or self.options.window.language
        self.frames = self.samples.shape[0] // HOP_LENGTH
        if not self.initial_prompt and self.options.initial_prompt and self.options.initial_prompt.strip():
            self.initial_prompt = tuple(self.engine.target.tokenizer.encode(
                " " + self.options.initial_prompt.strip(), add_special_tokens=False))

    @property
    def done(self) -> bool:
        return self.seek >= self.frames

    @property
    def seconds_done(self) -> float:
        return min(self.seek, self.frames) * HOP_LENGTH / SAMPLE_RATE

    def next_window(self) -> WindowRequest | None:
        """The window to decode next, or None when the rest of the file is silence (the file is then done)."""
        while not self.done:
            start = self.seek * HOP_LENGTH
            audio = self.samples[start: start + WINDOW_FRAMES * HOP_LENGTH]
            if not self._silent(audio):
                break
            self.skipped += 1
            self.seek += min(WINDOW_FRAMES, self.frames - self.seek)
        else:
            return None
        previous = (self.initial_prompt + tuple(self.history[self.prompt_start:]))[-MAX_PREVIOUS_TOKENS:]
        return WindowRequest(audio, previous, self.language)

    def _silent(self, audio: np.ndarray) -> bool:
        if self.options.silence_db is None:
            return False
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        return rms == 0.0 or 20 * np.log10(rms) < self.options.silence_db

    def accept(self, window: DecodedWindow, wall_seconds: float) -> list[Segment]:
        """Advance past ``window`` (the result for ``next_window()``); returns the segments it completed."""
        options = self.options
        self.windows += 1
        self.language = window.language
        self.stats = self.stats + replace(window.stats, wall_seconds=wall_seconds)
        size = min(WINDOW_FRAMES, self.frames - self.seek)
        offset = self.seek * HOP_LENGTH / SAMPLE_RATE
        if options.no_speech_threshold is not None and window.no_speech_prob > options.no_speech_threshold:
            confident = (options.logprob_threshold is not None and window.avg_logprob is not None
                         and window.avg_logprob > options.logprob_threshold)
            if not confident:
                self.skipped += 1
                self.seek += size
                return []
        ratio = compression_ratio(window.text)
        if options.compression_ratio_threshold is not None and ratio > options.compression_ratio_threshold:
            # Whisper would retry at a higher temperature; a greedy decoder drops the loop and starts afresh
            self.dropped += 1
            self.seek += size
            self._reset_prompt()
            return []
        pieces, advance = self._split(window.tokens, size)
        new = []
        first = 0  # pieces are consecutive slices of the window's tokens
        for tokens, start, end in pieces:
            provenance = window.from_draft[first: first + len(tokens)]
            first += len(tokens)
            text = self.engine.text(tokens)
            if start == end or not text:
                continue
            new.append(Segment(len(self.segments) + len(new), round(offset + start, 3), round(offset + end, 3),
                               text if text[:1].isspace() else " " + text, tokens, window.avg_logprob,
                               window.no_speech_prob, ratio, from_draft=provenance))
        if options.word_timestamps and new:
            new, last_word_end = self._add_words(new, window, size, offset)
            if advance != size and last_word_end is not None and last_word_end > offset:
                advance = round(last_word_end * SAMPLE_RATE / HOP_LENGTH) - self.seek
        self.seek += max(advance, 1)
        self.segments.extend(new)
        self.history.extend(t for s in new for t in s.tokens)
        if not options.condition_on_previous_text:
            self._reset_prompt()
        return new

    def _reset_prompt(self) -> None:
        self.prompt_start, self.initial_prompt = len(self.history), ()

    def _split(self, tokens: tuple[int, ...], size: int) -> tuple[list[tuple[tuple[int, ...], float, float]], int]:
        """Segments (tokens, start, end seconds within the window) and the frames to advance (Whisper's rules)."""
        begin = self.engine.tokens.timestamp_begin
        is_stamp = [t >= begin for t in tokens]
        single_ending = is_stamp[-2:] == [False, True]
        closes = [i + 1 for i in range(len(tokens) - 1) if is_stamp[i] and is_stamp[i + 1]]
        if closes:
            if single_ending:
                closes.append(len(tokens))
            pieces, last = [], 0
            for cut in closes:
                piece = tokens[last:cut]
                pieces.append((piece, (piece[0] - begin) * TIME_PRECISION, (piece[-1] - begin) * TIME_PRECISION))
                last = cut
            if single_ending:
                return pieces, size
            return pieces, (tokens[last - 1] - begin) * FRAMES_PER_TIMESTAMP
        duration = size * HOP_LENGTH / SAMPLE_RATE
        stamps = [t for t in tokens if t >= begin]
        if stamps and stamps[-1] != begin:
            duration = (stamps[-1] - begin) * TIME_PRECISION
        return [(tokens, 0.0, duration)], size

    def _add_words(self, segments: list[Segment], window: DecodedWindow, size: int,
                   offset: float) -> tuple[list[Segment], float | None]:
        tokens = self.engine.tokens
        per_segment = [tokens.text_ids(s.tokens) for s in segments]
        prefix = tokens.prompt(window.language, self.options.window.task, timestamps=False)
        timings = align_words(self.engine.target, window.encoder_output, prefix,
                              [t for ids in per_segment for t in ids], size, window.language)
        timings = tidy_words(timings)
        index, out, last_end = 0, [], None
        for segment, ids in zip(segments, per_segment):
            words, covered = [], 0
            while index < len(timings) and covered < len(ids):
                timing = timings[index]
                if timing.word:
                    words.append(Word(timing.word, round(offset + timing.start, 2), round(offset + timing.end, 2),
                                      timing.probability))
                covered += len(timing.tokens)
                index += 1
            if words:
                last_end = words[-1].end
            out.append(replace(segment, words=tuple(words)))
        return out, last_end

    def result(self) -> LongformResult:
        return LongformResult(tuple(self.segments), self.language or "en", self.samples.shape[0] / SAMPLE_RATE,
                              self.stats, self.windows, self.skipped, self.dropped,
                              time.perf_counter() - self.started)


@dataclass(frozen=True)
class Progress:
    """What one batched step did for one file."""

    key: Hashable  # the caller's name for the file
    segments: tuple[Segment, ...]  # segments completed by this step
    seconds_done: float  # audio seconds of the file transcribed so far
    result: LongformResult | None  # the whole transcript, once the file is finished


@dataclass(frozen=True)
class FileRequest:
    """One recording to transcribe, with what may differ between the files of one batch."""

    key: Hashable  # the caller's name for it
    samples: np.ndarray  # [n] 16 kHz mono float32
    language: str | None = None  # this file's language (None: the options', else detected)
    initial_prompt: str | None = None  # text before the audio (None: the options')
    cancelled: Callable[[], bool] | None = None  # asked between rounds: True drops the file (no more progress)


class FileQueue:
    """Files that arrive while others decode (a server's requests): ``put`` from any thread; ``decode_files``
    admits them into free rows between rounds, and returns once the queue is closed and drained."""

    def __init__(self) -> None:
        self._waiting: deque[FileRequest] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def put(self, request: FileRequest) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("the queue is closed: no more files are taken")
            self._waiting.append(request)
            self._changed.notify_all()

    def close(self) -> None:
        """No more files: decoding ends when those in flight (and those already put) finish."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def finished(self) -> bool:
        return self._closed and not self._waiting

    def take(self, wait: bool) -> FileRequest | None:
        """The next file; None when there is none now (``wait`` False) or will never be (closed, drained)."""
        with self._changed:
            while wait and not self._waiting and not self._closed:
                self._changed.wait()
            return self._waiting.popleft() if self._waiting else None


class _Files:
    """An iterable of (key, samples) pairs or ``FileRequest``s as a source that ``decode_files`` reads lazily."""

    def __init__(self, files: Iterable[tuple[Hashable, np.ndarray] | FileRequest]):
        self._files = iter(files)
        self.finished = False

    def take(self, wait: bool) -> FileRequest | None:
        item = next(self._files, None)
        if item is None:
            self.finished = True
            return None
        return item if isinstance(item, FileRequest) else FileRequest(*item)


@dataclass(eq=False)
class _InFlight:
    request: FileRequest
    state: LongformFile
    seconds: float = 0.0  # its share of the decoding time since its last window finished


def decode_files(engine: SpeculativeWhisper, files: Iterable[tuple[Hashable, np.ndarray] | FileRequest] | FileQueue,
                 options: LongformOptions, batch_size: int = 1) -> Iterator[Progress]:
    """Transcribe many files, keeping up to ``batch_size`` of them in flight in one batch of rows.

    Each file's windows follow the sequential algorithm on their own, and a window joins the batch as soon
    as a row is free (between speculative rounds, not after the whole batch), so a file's segments do not
    depend on what it was batched with (up to floating-point rounding of batched matrix products). Files
    are read from ``files`` lazily, as rows free up; from a ``FileQueue``, also while others decode,
    waiting for more while none is in flight until the queue is closed.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    window_options = replace(
        options.window, max_new_tokens=min(options.window.max_new_tokens or MAX_NEW_TOKENS, MAX_NEW_TOKENS),
        return_encoder_output=options.word_timestamps,
        # the average log-probability matters only where the no-speech check reads it
        logprob_if_no_speech_above=1.0 if options.no_speech_threshold is None else options.no_speech_threshold)
    source = files if isinstance(files, FileQueue) else _Files(files)
    slots = engine.slots(batch_size, window_options)
    flight: dict[Hashable, _InFlight] = {}
    ready: list[Hashable] = []  # files whose next window is to be asked for
    try:
        while True:
            while len(flight) < batch_size and (request := source.take(wait=not flight)) is not None:
                file_options = options if request.initial_prompt is None else replace(
                    options, initial_prompt=request.initial_prompt)
                flight[request.key] = _InFlight(request, LongformFile(engine, request.samples, file_options,
                                                                      language=request.language))
                ready.append(request.key)
            for key in [k for k, f in flight.items() if f.request.cancelled is not None and f.request.cancelled()]:
                slots.cancel(key)
                del flight[key]
                ready = [k for k in ready if k != key]
            joining = []
            for key in ready:
                window = flight[key].state.next_window()
                if window is None:  # nothing (more) to decode: too short, or silence to the end
                    yield Progress(key, (), flight[key].state.seconds_done, flight.pop(key).state.result())
                else:
                    joining.append((key, window))
            ready = []
            if joining:
                started = time.perf_counter()
                slots.admit(joining)
                for key, _ in joining:
                    flight[key].seconds += (time.perf_counter() - started) / len(joining)
            if not slots.busy:
                if not flight and source.finished:
                    return
                continue
            yield from _round(slots, flight, ready)
    finally:
        slots.close()


def _round(slots: WindowSlots, flight: dict[Hashable, _InFlight], ready: list[Hashable]) -> Iterator[Progress]:
    """One speculative round over every window decoding; the files whose windows it finished advance."""
    decoding = [slot.key for slot in slots.rows.values()]
    started = time.perf_counter()
    finished = slots.round()
    for key in decoding:
        flight[key].seconds += (time.perf_counter() - started) / len(decoding)
    for key, window in finished:
        file = flight[key]
        segments = file.state.accept(window, file.seconds)
        file.seconds = 0.0
        if file.state.done:
            del flight[key]
            yield Progress(key, tuple(segments), file.state.seconds_done, file.state.result())
        else:
            ready.append(key)
            yield Progress(key, tuple(segments), file.state.seconds_done, None)
