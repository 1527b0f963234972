"""``timeline``: follow actions along an untrimmed video with a trained probe.

Windows slide over the video (``windows.py``: each sampled like a training clip); the video is decoded once, in
chunks of consecutive frames, and only the frames some window samples are kept, preprocessed and encoded, each
once, in batches (``stream.py``). Writes ``timeline.csv`` (one row per window: ``start_s, end_s, class_1,
prob_1, ...``), ``segments.csv`` (``segments.py``) and ``timeline.png`` (``plot.py``) into the output folder.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from step_cache.extraction.decoder_errors import DecoderErrors, counting_decoder_errors
from step_cache.extraction.frame_rate import frame_rate
from step_cache.extraction.video import decode_clips, decoder_logs_silenced
from step_cache.interface import from_command_line, option
from step_cache.recognition.model import RunModel
from step_cache.recognition.plot import plot_timeline
from step_cache.recognition.segments import Segment, check_segment_options, merge_segments
from step_cache.recognition.stream import WindowLogits, WindowRunner
from step_cache.recognition.windows import WindowError, WindowPlan, plan_windows
from step_cache.training.run_notes import clamp_top_k, not_above_chance

log = logging.getLogger(__name__)
CHUNK_BYTES = 256 * 2**20  # decoded full-size pixels held at once


@dataclass
class Timeline:
    video: Path
    fps: float
    plan: WindowPlan
    classes: list[str]
    results: list[WindowLogits]
    segments: list[Segment] = field(default_factory=list)
    frames: int = 0  # in the video
    frames_encoded: int = 0
    seconds: float = 0.0  # compute time, decoding included
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the run is not above chance
    chance_note: str | None = None  # run_notes.not_above_chance: also drawn on timeline.png

    @property
    def probabilities(self) -> np.ndarray:
        logits = torch.from_numpy(np.stack([r.logits for r in self.results]))
        return torch.softmax(logits, dim=1).numpy()

    @property
    def times(self) -> tuple[np.ndarray, np.ndarray]:
        """(start_s, end_s) of every window."""
        return (
            np.array([r.window.start / self.fps for r in self.results]),
            np.array([r.window.end / self.fps for r in self.results]),
        )

    @property
    def realtime_factor(self) -> float:
        """Seconds of video per second of compute."""
        return self.frames / self.fps / self.seconds if self.seconds else float("inf")

    @property
    def short(self) -> str | None:
        """What to say when the video is shorter than one window (None otherwise): it is then one window of the
        whole video, sampled as extraction samples a short video (frames repeated when it has fewer than T)."""
        if self.frames >= self.plan.length:
            return None
        few = self.frames < self.plan.frames
        repeated = f", fewer than the run's {self.plan.frames} per clip, so frames are repeated" if few else ""
        return (
            f"{self.video}: {self.frames} frames ({self.frames / self.fps:.2f} s) is shorter than one window of "
            f"{self.plan.length} frames ({self.plan.length / self.fps:.2f} s): one window of the whole video{repeated}"
        )

    def summary(self) -> str:
        labels = ", ".join(f"{s.label} {s.start_s:.1f}-{s.end_s:.1f} s" for s in self.segments[:6])
        more = " ..." if len(self.segments) > 6 else ""
        windows = (
            f"1 window of the whole video, {self.frames} frames (shorter than one window of {self.plan.length}) "
            f"at {self.fps:g} fps"
            if self.short
            else f"{len(self.results)} windows of {self.plan.length} frames every {self.plan.stride} "
            f"({self.plan.length / self.fps:.2f} s / {self.plan.stride / self.fps:.2f} s at {self.fps:g} fps)"
        )
        return (
            f"{self.video}: {windows}; "
            f"{self.frames_encoded} of {self.frames} frames encoded; {self.realtime_factor:.2f}x real time; "
            f"{len(self.segments)} segments: {labels or 'none confident enough'}{more}"
        ) + "".join(f"\nwarning: {note}" for note in self.notes)


def run_timeline(
    model: RunModel,
    video: str | Path,
    *,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    batch_frames: int = 32,
    progress: bool = True,
) -> Timeline:
    """Logits of every window of ``video`` (no files written)."""
    video = Path(video)
    started = time.perf_counter()
    with decoder_logs_silenced():  # an unreadable file: our one-line error, not FFmpeg's lines before it
        first = decode_clips(video, 1)  # the frame count and size, and a clear error for an unreadable file
        rate = fps or frame_rate(video)
    if not rate:
        raise WindowError(f"{video}: the container states no frame rate; give it ({option('fps')})")
    total = first.num_frames
    plan = plan_windows(
        rate, model.frames, model.clips, window, stride, model.typical_duration(), frame_step=model.frame_step
    )
    if total < plan.length:
        given = f"{option('window')}{' ' if from_command_line() else ''}{window:g} s" if window is not None else ""
        longer = f" ({given} is longer than the video)" if window is not None else ""
        log.warning("%s%s", Timeline(video, rate, plan, model.classes, [], frames=total).short, longer)
    windows = plan.over(total)
    needed = np.zeros(total, dtype=bool)
    for w in windows:
        needed[w.indices.ravel()] = True
    runner = WindowRunner(model, windows, batch_frames)
    results: list[WindowLogits] = []
    damaged = DecoderErrors()  # damaged frame data decodes with errors (concealed, wrong pixels): say so
    chunk = max(1, CHUNK_BYTES // first.frames[0].nbytes)
    with tqdm(total=total, unit="frame", desc=f"timeline {video.name}", disable=not progress) as bar:
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            if needed[start:stop].any():
                with counting_decoder_errors() as errors:  # also keeps FFmpeg's lines off the terminal
                    decoded = decode_clips(video, stop - start, 1, start, stop)
                damaged.merge(errors)
                for index, frame in zip(decoded.frame_indices[0].tolist(), decoded.frames, strict=True):
                    if needed[index]:
                        results += runner.push(index, frame)
            bar.update(stop - start)
    results += runner.flush()
    return Timeline(
        video, rate, plan, model.classes, results, frames=total, frames_encoded=runner.frames_encoded,
        seconds=time.perf_counter() - started, notes=[f"{video}: {damaged.describe()}"] if damaged.count else [],
    )  # fmt: skip


def write_timeline(
    result: Timeline,
    out_dir: str | Path,
    *,
    top_k: int | None = None,
    min_confidence: float = 0.5,
    min_length: float = 0.0,
) -> Timeline:
    """Write ``timeline.csv``, ``segments.csv`` and ``timeline.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probabilities = result.probabilities
    starts, ends = result.times
    result.segments = merge_segments(
        starts, ends, probabilities, result.classes, min_confidence=min_confidence, min_length=min_length
    )
    top_k = clamp_top_k(top_k, result.classes)
    ranking = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    table = out_dir / "timeline.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "end_s"] + [f"{kind}_{k + 1}" for k in range(top_k) for kind in ("class", "prob")])
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            cells: list[object] = [f"{start:.3f}", f"{end:.3f}"]
            for c in ranking[row]:
                cells += [result.classes[c], f"{probabilities[row, c]:.6f}"]
            writer.writerow(cells)
    segments = out_dir / "segments.csv"
    with segments.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "end_s", "class", "mean_prob", "windows"])
        for s in result.segments:
            writer.writerow([f"{s.start_s:.3f}", f"{s.end_s:.3f}", s.label, f"{s.mean_prob:.6f}", s.windows])
    plan = result.plan
    title = f"{result.video.name}: windows of {plan.length / result.fps:.2f} s every {plan.stride / result.fps:.2f} s"
    # The figure says it too: a picture travels without the terminal's warning.
    warning = "run not above chance: these answers are no better than guessing" if result.chance_note else None
    figure = plot_timeline(
        out_dir / "timeline.png", (starts + ends) / 2, probabilities, result.classes, result.segments, title, warning
    )
    result.files = [table, segments, figure]
    return result


def timeline(
    run_dir: str | Path,
    video: str | Path,
    out_dir: str | Path,
    *,
    window: float | None = None,
    stride: float | None = None,
    fps: float | None = None,
    top_k: int | None = None,
    min_confidence: float = 0.5,
    min_length: float = 0.0,
    weights: str | Path | None = None,
    device: str = "auto",
    batch_frames: int = 32,
    progress: bool = True,
) -> Timeline:
    """Slide windows over ``video`` with the run's probe and write the timeline, its segments and a figure."""
    check_segment_options(min_confidence, min_length)  # before the backbone is built and the video decoded
    model = RunModel(run_dir, weights=weights, device=device)
    result = run_timeline(
        model, video, window=window, stride=stride, fps=fps, batch_frames=batch_frames, progress=progress
    )
    result.chance_note = not_above_chance(run_dir)
    result.notes += [result.chance_note] if result.chance_note else []
    return write_timeline(result, out_dir, top_k=top_k, min_confidence=min_confidence, min_length=min_length)
