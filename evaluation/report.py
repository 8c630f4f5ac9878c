"""From an evaluation run to its report: per-configuration summaries, report.md, report.json, PNG plots.

Speed-up is measured against the baseline of the same run (ours, same target, no draft): total compute
seconds of the baseline over those of the configuration, on the same files. RTFx is the Open ASR
Leaderboard's: audio seconds / compute seconds. Token parity compares each configuration's token ids
with the baseline's, file by file (for the transformers peers this checks that both implementations of
the same model agree; for ours with a draft it is the losslessness claim itself). The baseline of a
configuration runs at its compute type: ``ours:base@bfloat16+distilled`` is compared with ``ours:base@bfloat16``
(or with ``ours:base`` when the run's compute type is bfloat16). Long files (over one 30-s window) are
compared on the token ids of all their windows, timestamps included.

The same summaries are also given per group of files: by duration (under 10 s, 10-30 s, over 30 s) and by
whether the shipped distilled draft could have learned them (``draft_exposure``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.metrics import ErrorCounts  # noqa: E402
from evaluation.run import EvalRun, FileRecord, SkippedFile  # noqa: E402
from whisper_spec.whisper.features import WINDOW_SECONDS  # noqa: E402

DURATION_GROUPS = ("under 10 s", "10-30 s", "over 30 s (long-form)")  # a file of exactly 30 s is one window

# What the shipped distilled draft (whisper_spec/shipped_drafts/base-distilled.pt) was trained on, by
# ManifestEntry.source: ``python -m evaluation.distill_corpus`` builds its corpus from Allison's prompts
# after the first 30 and from hibari-tts reading `fortunes` quotations. Allison's first 30 (the
# evaluation's ``--allison 30``) were held out, but they are the speaker, the line and the kind of
# sentence it trained on, and ``--allison N`` beyond 30 takes training files themselves: Allison counts as
# seen. hibari-tts speech of other texts is unseen text in a voice the draft heard.
UNSEEN_SOURCES = ("librivox", "longform:librivox", "tts", "longform:tts")
SEEN_SOURCES = ("allison", "longform:allison")
EXPOSURE_GROUPS = ("unseen by the shipped draft", "seen by it (Allison's speaker and prompts)",
                   "source not known")


def draft_exposure(source: str | None) -> str:
    """Which of ``EXPOSURE_GROUPS`` a file of this manifest source belongs to (hub datasets are unseen)."""
    if source in UNSEEN_SOURCES or (source or "").startswith("hub:"):
        return EXPOSURE_GROUPS[0]
    if source in SEEN_SOURCES:
        return EXPOSURE_GROUPS[1]
    return EXPOSURE_GROUPS[2]


def duration_group(audio_seconds: float) -> str:
    """Which of ``DURATION_GROUPS`` a file of this length belongs to."""
    if audio_seconds < 10.0:
        return DURATION_GROUPS[0]
    return DURATION_GROUPS[1] if audio_seconds <= WINDOW_SECONDS else DURATION_GROUPS[2]


@dataclass(frozen=True)
class Divergence:
    """A file whose token ids differ from the baseline's."""

    file_id: str
    position: int  # index of the first differing token
    baseline_text: str
    text: str


@dataclass(frozen=True)
class ConfigurationSummary:
    name: str
    engine: str
    target: str
    draft: str | None
    supported: bool
    reason: str | None
    compute_type: str | None = None  # the precision it ran at
    files: int = 0
    unsupported_files: int = 0  # files this configuration could not decode (see unsupported_reason)
    unsupported_reason: str | None = None
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    wer: float | None = None
    cer: float | None = None
    wer_baseline: float | None = None  # the baseline's WER on the same files
    latency_median: float | None = None  # seconds per file
    latency_p90: float | None = None
    rtfx: float | None = None  # audio seconds / compute seconds
    tokens: int = 0
    tokens_per_second: float | None = None
    speedup: float | None = None  # baseline compute seconds / this configuration's, same files
    speedup_median_per_file: float | None = None
    acceptance_rate: float | None = None  # ours with a draft: accepted / drafted
    mean_accepted_length: float | None = None  # ours with a draft: accepted draft tokens per round
    tokens_per_target_call: float | None = None
    target_calls: int = 0
    draft_calls: int = 0
    rescored: int = 0  # half-precision near-ties decided by a float32 rescoring (ours)
    peak_memory_bytes: int = 0  # the largest of the per-call peaks
    weight_bytes: int = 0
    load_seconds: float = 0.0
    parity_identical: int | None = None  # files with token ids equal to the baseline's
    parity_files: int | None = None
    divergences: tuple[Divergence, ...] = ()


@dataclass(frozen=True)
class TimesFaster:
    """How many times faster a configuration is than a faster-whisper one: the peer's compute seconds over
    the configuration's, on the files both decoded."""

    configuration: str
    peer: str  # a faster-whisper configuration
    ratio: float
    files: int


@dataclass(frozen=True)
class Report:
    summaries: tuple[ConfigurationSummary, ...]
    fastest: str | None  # the supported configuration with the highest RTFx
    fastest_note: str  # one sentence: which is fastest and by how much
    times_faster: tuple[TimesFaster, ...] = ()  # every configuration against every faster-whisper one


def first_divergence(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """Index of the first position where two id sequences differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _baseline_names(run: EvalRun) -> dict[tuple[str, str | None], str]:
    """(target, compute type) -> the name of ours without a draft on that target at that compute type."""
    return {(s.configuration.target, s.compute_type): s.configuration.name
            for s in run.statuses if s.supported and s.configuration.is_baseline}


def summarize(run: EvalRun, keep: Callable[[FileRecord | SkippedFile], bool] | None = None) -> Report:
    """Per-configuration summaries over the run's files, or over those ``keep`` accepts (it reads a record's
    or a skipped file's ``audio_seconds`` and ``source``)."""
    records_kept = [r for r in run.records if keep is None or keep(r)]
    by_config: dict[str, list[FileRecord]] = {}
    for record in records_kept:
        by_config.setdefault(record.configuration, []).append(record)
    baselines = _baseline_names(run)
    summaries = []
    for status in run.statuses:
        configuration = status.configuration
        name = configuration.name
        unsupported = [s for s in run.skipped if s.configuration == name and (keep is None or keep(s))]
        common = dict(name=name, engine=configuration.engine, target=configuration.target,
                      draft=configuration.draft, supported=status.supported, reason=status.reason,
                      compute_type=status.compute_type, unsupported_files=len(unsupported),
                      unsupported_reason=unsupported[0].reason if unsupported else None)
        records = by_config.get(name, [])
        if not status.supported or not records:
            summaries.append(ConfigurationSummary(**common))
            continue
        # faster-whisper has no baseline here: another implementation at another precision, where token
        # parity would say nothing; its speed is compared in the group tables' "x faster-whisper" columns
        baseline_name = baselines.get((configuration.target, status.compute_type))
        if configuration.engine == "faster-whisper":
            baseline_name = None
        baseline = {r.file_id: r for r in by_config.get(baseline_name, [])} if baseline_name else {}
        summaries.append(_summary(common, status, records, baseline))
    summaries = tuple(summaries)
    return Report(summaries, *_fastest(summaries), _times_faster_than_peers(run, by_config))


def _times_faster_than_peers(run: EvalRun, by_config: dict[str, list[FileRecord]]) -> tuple[TimesFaster, ...]:
    peers = {s.configuration.name: {r.file_id: r.seconds for r in by_config.get(s.configuration.name, [])}
             for s in run.statuses if s.configuration.engine == "faster-whisper"}
    ratios = []
    for name, records in by_config.items():
        for peer, peer_seconds in peers.items():
            paired = [(r.seconds, peer_seconds[r.file_id]) for r in records if r.file_id in peer_seconds]
            if paired and name != peer:
                ratios.append(TimesFaster(name, peer, sum(p for _, p in paired) / sum(o for o, _ in paired),
                                          len(paired)))
    return tuple(ratios)


def _summary(common: dict, status, records: list[FileRecord], baseline: dict[str, FileRecord]) -> ConfigurationSummary:
    words = sum((r.word_errors for r in records), ErrorCounts())
    chars = sum((r.char_errors for r in records), ErrorCounts())
    seconds = [r.seconds for r in records]
    compute = sum(seconds)
    audio = sum(r.audio_seconds for r in records)
    tokens = sum(len(r.tokens) for r in records)
    drafted = sum(r.drafted for r in records)
    accepted = sum(r.accepted for r in records)
    rounds = sum(r.rounds for r in records)
    target_calls = sum(r.target_calls for r in records)
    paired = [(r, baseline[r.file_id]) for r in records if r.file_id in baseline]
    speedup = per_file = wer_baseline = identical = None
    divergences = []
    if paired:
        speedup = sum(b.seconds for _, b in paired) / sum(r.seconds for r, _ in paired)
        per_file = statistics.median(b.seconds / r.seconds for r, b in paired)
        wer_baseline = sum((b.word_errors for _, b in paired), ErrorCounts()).rate
        for r, b in paired:
            position = first_divergence(b.tokens, r.tokens)
            if position is not None:
                divergences.append(Divergence(r.file_id, position, b.text, r.text))
        identical = len(paired) - len(divergences)
    return ConfigurationSummary(
        **common, files=len(records), audio_seconds=audio, compute_seconds=compute, wer=words.rate, cer=chars.rate,
        wer_baseline=wer_baseline, latency_median=statistics.median(seconds), latency_p90=_percentile(seconds, 90),
        rtfx=audio / compute if compute else None, tokens=tokens,
        tokens_per_second=tokens / compute if compute else None, speedup=speedup, speedup_median_per_file=per_file,
        acceptance_rate=accepted / drafted if drafted else None,
        mean_accepted_length=accepted / rounds if drafted and rounds else None,
        tokens_per_target_call=tokens / target_calls if target_calls else None, target_calls=target_calls,
        draft_calls=sum(r.draft_calls for r in records), rescored=sum(r.rescored for r in records),
        peak_memory_bytes=max(r.peak_memory_bytes for r in records),
        weight_bytes=status.weight_bytes, load_seconds=status.load_seconds,
        parity_identical=identical, parity_files=len(paired) if paired else None, divergences=tuple(divergences))


def _fastest(summaries: tuple[ConfigurationSummary, ...]) -> tuple[str | None, str]:
    timed = sorted((s for s in summaries if s.rtfx), key=lambda s: s.rtfx, reverse=True)
    if not timed:
        return None, "no configuration was timed"
    best = timed[0]
    note = f"Fastest: {best.name} at RTFx {best.rtfx:.2f}"
    if best.speedup is not None:
        note += f", {best.speedup:.2f}x the baseline (ours, {best.target} alone)"
    peers = [s for s in timed if s.engine != "ours" and s.name != best.name]
    if peers:
        note += "; " + ", ".join(f"{best.rtfx / s.rtfx:.2f}x {s.name}" for s in peers)
    if len(timed) > 1 and timed[1].engine == "ours":
        note += f"; runner-up {timed[1].name} at RTFx {timed[1].rtfx:.2f}"
    return best.name, note + "."


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _percent(rate: float | None) -> str:
    return _fmt(None if rate is None else rate * 100)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def _files(s: ConfigurationSummary) -> str:
    return f"{s.files}" + (f" (+{s.unsupported_files} not supported)" if s.unsupported_files else "")


def summary_table(report: Report) -> str:
    """The summary as a markdown table (one row per configuration)."""
    header = ("| configuration | compute type | files | WER % | CER % | parity | latency median s | p90 s | RTFx | "
              "tokens/s | "
              "speed-up | acceptance | mean acc. len | tokens/target call | target calls | draft calls | "
              "near-ties rescored | peak mem MiB | weights MiB |")
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for s in report.summaries:
        if not s.supported:
            lines.append(f"| {s.name} | {s.compute_type or 'n/a'} | unsupported: {s.reason} |" + " |" * (columns - 3))
            continue
        parity = "n/a" if s.parity_files is None else f"{s.parity_identical}/{s.parity_files}"
        lines.append(
            f"| {s.name} | {s.compute_type} | {_files(s)} | {_percent(s.wer)} | {_percent(s.cer)} | {parity} | "
            f"{_fmt(s.latency_median, '.3f')} | {_fmt(s.latency_p90, '.3f')} | {_fmt(s.rtfx)} | "
            f"{_fmt(s.tokens_per_second, '.1f')} | {_fmt(s.speedup, '.2f', 'x')} | {_fmt(s.acceptance_rate)} | "
            f"{_fmt(s.mean_accepted_length)} | {_fmt(s.tokens_per_target_call)} | {s.target_calls} | "
            f"{s.draft_calls} | {s.rescored} | {_mib(s.peak_memory_bytes)} | {_mib(s.weight_bytes)} |")
    return "\n".join(lines)


def group_reports(run: EvalRun) -> dict[str, dict[str, Report]]:
    """{"duration": {label: Report}, "draft exposure": {label: Report}}, groups without files left out."""
    def by_duration(label: str):
        return lambda file: duration_group(file.audio_seconds) == label

    def by_exposure(label: str):
        return lambda file: draft_exposure(file.source) == label

    files = list(run.records) + [s for s in run.skipped if s.configuration is not None]
    groups = {"duration": {label: by_duration(label) for label in DURATION_GROUPS},
              "draft exposure": {label: by_exposure(label) for label in EXPOSURE_GROUPS}}
    return {kind: {label: summarize(run, keep) for label, keep in chosen.items() if any(map(keep, files))}
            for kind, chosen in groups.items()}


def group_table(groups: dict[str, Report]) -> str:
    """One row per (group, configuration): files, audio, RTFx, speed-up over ours alone, WER, and how many
    times faster than each faster-whisper configuration on the same files (its seconds over these)."""
    faster = [s.name for report in groups.values() for s in report.summaries
              if s.engine == "faster-whisper" and s.files]
    faster = list(dict.fromkeys(faster))
    header = ("| group | configuration | compute type | files | audio s | compute s | RTFx | speed-up | WER % | "
              + "".join(f"x {name} | " for name in faster)).strip()
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for label, report in groups.items():
        for s in report.summaries:
            if not s.supported:
                continue
            if not s.files:
                if s.unsupported_files:
                    lines.append(f"| {label} | {s.name} | {s.compute_type} | not supported (files: "
                                 f"{s.unsupported_files}): {s.unsupported_reason} |" + " |" * (columns - 4))
                continue
            ratios = "".join(f"{_fmt(_times_faster(report, s, name), '.2f', 'x')} | " for name in faster)
            lines.append(f"| {label} | {s.name} | {s.compute_type} | {_files(s)} | {s.audio_seconds:.0f} | "
                         f"{s.compute_seconds:.1f} | {_fmt(s.rtfx)} | {_fmt(s.speedup, '.2f', 'x')} | "
                         f"{_percent(s.wer)} | {ratios}".rstrip())
    return "\n".join(lines)


def _times_faster(report: Report, summary: ConfigurationSummary, peer: str) -> float | None:
    return next((t.ratio for t in report.times_faster if (t.configuration, t.peer) == (summary.name, peer)), None)


def write_report(run: EvalRun, out_dir: str | Path, *, command: str | None = None, timing=None) -> dict[str, Path]:
    """Write report.md, report.json and the PNG plots into ``out_dir``; returns {kind: path}.

    ``timing`` is an optional ``evaluation.gpu_timing.TimingResult`` to include (table, plot, numbers).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = summarize(run)
    paths = {
        "speedup_plot": plot_speedup_vs_acceptance(run, report, out_dir / "speedup_vs_acceptance.png"),
        "latency_plot": plot_latency(run, report, out_dir / "latency.png"),
        "wer_plot": plot_wer(report, out_dir / "wer.png"),
    }
    if timing is not None:
        from evaluation.gpu_timing import plot_timing

        paths["timing_plot"] = plot_timing(timing, out_dir / "timing_speedup_vs_acceptance.png")
    paths["json"] = out_dir / "report.json"
    paths["json"].write_text(json.dumps(_json(run, report, command, timing), indent=1, default=str) + "\n")
    paths["markdown"] = out_dir / "report.md"
    paths["markdown"].write_text(_markdown(run, report, command, timing, paths))
    return paths


def _json(run: EvalRun, report: Report, command: str | None, timing) -> dict:
    def plain(obj):
        return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj

    options = dataclasses.asdict(run.options) | {"dtype": str(run.options.resolved_dtype)}
    groups = {kind: {label: [plain(s) for s in group.summaries if s.supported] for label, group in chosen.items()}
              for kind, chosen in group_reports(run).items()}
    return {
        "command": command, "manifests": list(run.manifest_names), "options": options,
        "environment": plain(run.environment), "fastest": report.fastest, "fastest_note": report.fastest_note,
        "configurations": [plain(s) for s in report.summaries],
        "times_faster_than_faster_whisper": [plain(t) for t in report.times_faster],
        "groups": groups,
        "skipped": [plain(s) for s in run.skipped],
        "files": [plain(r) | {"acceptance_rate": r.acceptance_rate, "wer": r.word_errors.rate}
                  for r in run.records],
        "timing": plain(timing) if timing is not None else None,
    }


def _markdown(run: EvalRun, report: Report, command: str | None, timing, paths: dict[str, Path]) -> str:
    env = run.environment
    files = len({r.file_id for r in run.records})
    audio = sum(r.audio_seconds for r in run.records if r.configuration == run.records[0].configuration)
    out = ["# whisper-spec evaluation", ""]
    if command:
        out += ["```", command, "```", ""]
    out += [f"{files} files ({audio:.0f} s of audio) from {', '.join(run.manifest_names) or 'the given manifests'}; "
            f"device {env.device} ({env.dtype}), torch {env.torch_version}, {env.torch_threads} threads on "
            f"{env.cpu_count} CPUs{f' ({env.cpu})' if env.cpu else ''}; started {env.started_utc}, "
            f"{env.wall_seconds:.0f} s in all. "
            f"Timed calls: {run.options.repeats} per file and configuration (median kept), interleaved, after a "
            f"warm-up. Latency is samples in, text out. Peak memory: {env.memory_measure}. Files of one 30-s "
            f"window are decoded as one plain window by every engine; longer ones by each engine's long-form "
            f"algorithm with timestamps, the previous text as prompt and Whisper's no-speech and "
            f"compression-ratio thresholds (ours' defaults).", "",
            f"**{report.fastest_note}**", "", summary_table(report), ""]
    out += ["WER and CER after Whisper's English normaliser; parity: files whose token ids equal the baseline's "
            "(ours, target alone); speed-up: the baseline's compute seconds over the configuration's on the "
            "same files. Acceptance and accepted length are ours only (transformers does not report them); "
            "tokens per target call is comparable across all.", ""]
    groups = group_reports(run)
    out += ["## By duration", "", "Speed-up: over ours alone at the same compute type, on the group's files; "
            "x faster-whisper: that configuration's compute seconds over this one's on the same files.", "",
            group_table(groups["duration"]), ""]
    out += ["## Speech the shipped draft never saw", "",
            "The shipped distilled draft (`whisper_spec/shipped_drafts/base-distilled.pt`) was trained on the "
            "corpus `python -m evaluation.distill_corpus` builds: Allison's telephone prompts after the first 30 "
            "and hibari-tts reading `fortunes` quotations. Unseen: the LibriVox audiobook clips (another "
            "speaker, another text, real recordings), hibari-tts speech of other texts (the long-form Austen "
            "passages; the voice is the one it heard), and recordings joined from these. Seen: Allison's "
            "prompts, even the first 30 that training held out (the same speaker and the same kind of "
            "sentence; `--allison` beyond 30 takes training files themselves).", "",
            group_table(groups["draft exposure"]), ""]
    out += ["## WER with and without speculation", "", "| configuration | WER % | baseline WER % | difference |",
            "|---|---|---|---|"]
    for s in report.summaries:
        if s.wer is not None and s.wer_baseline is not None:
            out.append(f"| {s.name} | {s.wer * 100:.2f} | {s.wer_baseline * 100:.2f} | "
                       f"{(s.wer - s.wer_baseline) * 100:+.2f} |")
    out += ["", "## Parity: files that differ from the baseline", ""]
    diverged = [(s, d) for s in report.summaries for d in s.divergences]
    if not diverged:
        out.append("Every configuration produced the baseline's token ids on every file.")
    else:
        out += ["| configuration | file | first divergence | baseline text | text |", "|---|---|---|---|---|"]
        for s, d in diverged:
            out.append(f"| {s.name} | {d.file_id} | token {d.position} | {d.baseline_text} | {d.text} |")
    left_out = [s for s in run.skipped if s.configuration is None]
    if left_out:
        out += ["", "## Skipped files", ""] + [f"- {s.file_id}: {s.reason}" for s in left_out]
    unsupported = [s for s in run.skipped if s.configuration is not None]
    if unsupported:
        out += ["", "## Files a peer could not decode", ""]
        out += [f"- {s.configuration}, {s.file_id} ({s.audio_seconds:.0f} s): {s.reason}" for s in unsupported]
    if timing is not None:
        from evaluation.gpu_timing import timing_table

        out += ["", "## Timing mode (random weights of the real architectures, oracle drafter)", "",
                timing_table(timing)]
    out += ["", "## Plots", ""]
    out += [f"![{kind}]({path.name})" for kind, path in paths.items() if path.suffix == ".png"]
    return "\n".join(out) + "\n"


def _speculative(report: Report) -> list[ConfigurationSummary]:
    return [s for s in report.summaries if s.supported and s.draft is not None and s.files]


def plot_speedup_vs_acceptance(run: EvalRun, report: Report, path: Path) -> Path:
    """Per-file speed-up over the baseline against per-file acceptance rate, one colour per configuration."""
    by_key = {(r.configuration, r.file_id): r for r in run.records}
    baselines = _baseline_names(run)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in _speculative(report):
        if s.engine != "ours":
            continue
        base_name = baselines.get((s.target, s.compute_type))
        points = [(r.acceptance_rate, by_key[(base_name, r.file_id)].seconds / r.seconds)
                  for r in run.records if r.configuration == s.name and r.acceptance_rate is not None
                  and (base_name, r.file_id) in by_key]
        if points:
            xs, ys = zip(*points)
            line = ax.scatter(xs, ys, s=14, alpha=0.5, label=s.name)
            if s.acceptance_rate is not None and s.speedup is not None:
                ax.scatter([s.acceptance_rate], [s.speedup], s=120, marker="*", color=line.get_facecolor()[0],
                           edgecolors="black", zorder=3)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("acceptance rate (accepted / drafted draft tokens)")
    ax.set_ylabel("speed-up over the baseline")
    ax.set_title("Speed-up vs acceptance, per file (stars: whole run)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency(run: EvalRun, report: Report, path: Path) -> Path:
    """Distribution of per-file latency for each configuration (box plot)."""
    names = [s.name for s in report.summaries if s.files]
    data = [[r.seconds for r in run.records if r.configuration == name] for name in names]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4.5))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("seconds per file")
    ax.set_title("Latency per file")
    return _save(fig, path)


def plot_wer(report: Report, path: Path) -> Path:
    """WER (bars) per configuration."""
    shown = [s for s in report.summaries if s.wer is not None]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(shown)), 4.5))
    bars = ax.bar(range(len(shown)), [s.wer * 100 for s in shown])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(shown)), [s.name for s in shown], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("WER % (Whisper English normaliser)")
    ax.set_title("WER per configuration")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
