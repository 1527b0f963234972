"""``step-cache timeline``: follow actions along an untrimmed video with a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import PROBES_PANEL, app
from cli.console import setup_logging, user_errors
from cli.options import RunDir, Threads
from step_cache.cpu_budget import apply_threads


@app.command(rich_help_panel=PROBES_PANEL)
def timeline(
    video: Annotated[Path, typer.Argument(help="An untrimmed video file.", show_default=False)],
    run: RunDir,
    out: Annotated[Path, typer.Option(help="Folder for timeline.csv, segments.csv and timeline.png.")],
    window: Annotated[
        float | None,
        typer.Option(
            help="Window length in seconds (default: the median duration of the run's training videos, recorded "
            "at extraction; caches extracted before that need this option; a --frame-step run: K x (T x S + 1) "
            "frames, the span of its training clips)."
        ),
    ] = None,
    stride: Annotated[
        float | None,
        typer.Option(
            help="Seconds between window starts (default: one segment of the window, window / T, so that each new "
            "window encodes one new frame per clip; the window is then rounded to a multiple of T frames; a "
            "--frame-step run: S frames)."
        ),
    ] = None,
    fps: Annotated[float | None, typer.Option(help="Frame rate, when the container does not state it.")] = None,
    min_confidence: Annotated[
        float,
        typer.Option(
            help="Segments: a window votes for its top class only at this confidence above chance or more: "
            "(p - 1/C) / (1 - 1/C) for C classes, 0 = a guess, 1 = certain (0.5 with 2 classes: p >= 0.75)."
        ),
    ] = 0.5,
    min_length: Annotated[
        float, typer.Option(help="Segments: shorter ones (seconds) are dropped, their same-class neighbours joined.")
    ] = 0.0,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Classes per window in timeline.csv [default: 5, or every class].")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Backbone weights file (default: where the run's cache recorded it; sha256 checked)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per backbone call.")] = 32,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    threads: Threads = None,
) -> None:
    """Slide windows over an untrimmed video and name the action in each: every window is sampled with the run's
    T frames like a training clip; the video is decoded once and each sampled frame encoded once (overlapping
    windows share it). Writes OUT/timeline.csv (start_s, end_s, class_1, prob_1, ...), OUT/segments.csv (windows
    merged into action segments) and OUT/timeline.png."""
    from step_cache.recognition.timeline import timeline as run_timeline

    setup_logging()
    apply_threads(threads)
    with user_errors():
        result = run_timeline(
            run, video, out, window=window, stride=stride, fps=fps, top_k=top_k, min_confidence=min_confidence,
            min_length=min_length, weights=weights, device=device, batch_frames=batch_size, progress=not quiet,
        )  # fmt: skip
    typer.echo(result.summary())
    typer.echo("wrote " + ", ".join(str(path) for path in result.files))
