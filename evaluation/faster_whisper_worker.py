"""faster-whisper in a process of its own, driven by the evaluation (``evaluation.peers.FasterWhisperPeer``).

Why a process of its own: CTranslate2 calls OpenMP through the libgomp that the process loaded first into
its global symbol scope. Beside torch, which loads its libgomp that way, CTranslate2's decoding threads
join torch's OpenMP runtime, which from then on counts more threads than CPUs and stops its own workers
spinning between parallel regions: every torch operation that runs in parallel pays a thread wake-up
afterwards, for the rest of the process (evaluation/results/measurements-behind-the-defaults.md). Users
run one engine or the other, never both in one process, and so does the evaluation: this module imports
neither torch nor whisper_spec, and times each call itself, samples in, text out.

The protocol, over the worker's standard input and output: each request is one pickled tuple, each reply
one pickled ``(status, value)``, where status is "ok", "missing" (faster-whisper is not installed),
"refused" (CTranslate2 refused the model or compute type) or "error" (value: the message). Requests:

- ``("load", folder, compute_type, threads)``: load the CTranslate2 bundle in ``folder``;
- ``("transcribe", samples, language, options)``: decode 16 kHz samples greedily, ``options`` passed to
  ``WhisperModel.transcribe``; value ``(token ids without end-of-text, text, seconds)``;
- ``("memory", samples, language, options)``: the same decode, untimed; value: the peak growth of this
  process's resident memory during it, in bytes.

End of input ends the worker.
"""

from __future__ import annotations

import pickle
import sys
import time

from evaluation.resident_memory import ResidentPeak


class _Worker:
    def __init__(self):
        self.model = None
        self.specials: frozenset[int] = frozenset()

    def load(self, folder: str, compute_type: str, threads: int) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(folder, device="cpu", compute_type=compute_type, cpu_threads=threads)
        self.specials = frozenset({self.model.hf_tokenizer.token_to_id("<|endoftext|>")})

    def transcribe(self, samples, language: str | None, options: dict) -> tuple[tuple[int, ...], str, float]:
        start = time.perf_counter()
        segments, _ = self.model.transcribe(samples, language=language, beam_size=1, best_of=1, temperature=[0.0],
                                            vad_filter=False, **options)
        segments = list(segments)  # a lazy generator: the decoding happens here
        seconds = time.perf_counter() - start
        tokens = tuple(t for s in segments for t in s.tokens if t not in self.specials)
        return tokens, "".join(s.text for s in segments).strip(), seconds

    def memory(self, samples, language: str | None, options: dict) -> int:
        with ResidentPeak() as peak:
            self.transcribe(samples, language, options)
        return peak.bytes

    def handle(self, request: tuple) -> tuple[str, object]:
        verb, *arguments = request
        if verb == "load":
            try:
                self.load(*arguments)
            except ImportError as error:
                return "missing", str(error)
            except (ValueError, RuntimeError) as error:  # an unknown or unsupported compute type, a bad bundle
                return "refused", str(error)
            return "ok", None
        if self.model is None:
            return "error", f"{verb!r} before 'load'"
        if verb == "transcribe":
            return "ok", self.transcribe(*arguments)
        if verb == "memory":
            return "ok", self.memory(*arguments)
        return "error", f"unknown request {verb!r}"


def main() -> None:
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever a library prints must not reach the reply pipe
    worker = _Worker()
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = worker.handle(request)
        except Exception as error:  # reported to the evaluation, which names the file and goes on or stops
            reply = ("error", f"{type(error).__name__}: {error}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    main()
