"""``step-cache make-demo``: write the built-in benchmark of nearly symmetric actions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.main import app
from step_cache.benchmark import DEFAULT_KINDS, KINDS, BenchmarkError, make_demo_dataset, parse_size


@app.command("make-demo")
def make_demo(
    directory: Annotated[Path, typer.Argument(help="Output folder: DIR/<class>/*.mp4, annotations.csv, pairs.txt.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Videos per class.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same videos.")] = 0,
    frames: Annotated[int, typer.Option("--frames", help="Frames per video.")] = 32,
    size: Annotated[str, typer.Option("--size", help="Frame size WIDTHxHEIGHT (even numbers).")] = "112x112",
    fps: Annotated[int, typer.Option("--fps", help="Frames per second written in the videos.")] = 16,
    crf: Annotated[
        int, typer.Option("--crf", help="x264 quality, 0 (lossless) to 51; keep it low or quality leaks order.")
    ] = 4,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of each class's videos in the 'val' split.")
    ] = 0.3,
    difficulty: Annotated[
        float, typer.Option("--difficulty", help="0 to 1: camera jitter, distractors, texture, shorter actions.")
    ] = 0.5,
    kinds: Annotated[
        str, typer.Option("--kinds", help=f"Comma-separated action kinds among: {', '.join(KINDS)}.")
    ] = ",".join(DEFAULT_KINDS),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a demo written to DIR before.")] = False,
) -> None:
    """Generate mirrored action pairs (each clip of one class is a clip of the other played backwards) plus
    order-free classes, as near-lossless mp4 videos with an annotation CSV and a pairs file."""
    try:
        dataset = make_demo_dataset(
            directory,
            per_class=per_class,
            seed=seed,
            num_frames=frames,
            size=parse_size(size),
            fps=fps,
            crf=crf,
            val_fraction=val_fraction,
            difficulty=difficulty,
            kinds=[kind.strip() for kind in kinds.split(",") if kind.strip()],
            overwrite=overwrite,
        )
    except BenchmarkError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=1) from None
    pairs = ", ".join(f"{a}/{b}" for a, b in dataset.pairs)
    typer.echo(
        f"Wrote {len(dataset.items)} videos of {len(dataset.classes)} classes to {dataset.root} in "
        f"{dataset.seconds:.1f} s: {len(dataset.pairs)} mirrored pairs ({pairs}); "
        f"order-free: {', '.join(dataset.order_free) or 'none'}."
    )
    typer.echo(f"Annotations: {dataset.annotations_path}  Pairs: {dataset.pairs_path}")
