"""``step-cache make-demo`` (the built-in benchmark of nearly symmetric actions) and ``step-cache demo`` (the
whole pipeline on it: videos -> tokens -> four probes -> comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import DEMO_PANEL, app
from cli.console import setup_logging, user_errors
from cli.options import Threads
from step_cache.cpu_budget import apply_threads
from step_cache.demo import DemoSettings
from step_cache.demo_dataset import DEFAULT_KINDS, KINDS, make_demo_dataset, parse_size


@app.command("make-demo", rich_help_panel=DEMO_PANEL)
def make_demo(
    directory: Annotated[Path, typer.Argument(help="Output folder: DIR/<class>/*.mp4, annotations.csv, pairs.txt.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Videos per class.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same videos.")] = 0,
    frames: Annotated[
        int,
        typer.Option(
            "--frames",
            help="Frames per video; keep it odd, so frames sampled from a clip and from its reverse match.",
        ),
    ] = 33,
    size: Annotated[str, typer.Option("--size", help="Frame size WIDTHxHEIGHT (even numbers).")] = "112x112",
    fps: Annotated[int, typer.Option("--fps", help="Frames per second written in the videos.")] = 16,
    crf: Annotated[
        int, typer.Option("--crf", help="x264 quality: 0 (lossless, the default) to 51; low, or quality leaks order.")
    ] = 0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of each class's videos in the 'val' split (model selection).")
    ] = 0.2,
    test_fraction: Annotated[
        float,
        typer.Option("--test-fraction", help="Share of each class's videos in the 'test' split (reported figures)."),
    ] = 0.2,
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
    with user_errors():
        dataset = make_demo_dataset(
            directory,
            per_class=per_class,
            seed=seed,
            num_frames=frames,
            size=parse_size(size),
            fps=fps,
            crf=crf,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            difficulty=difficulty,
            kinds=[kind.strip() for kind in kinds.split(",") if kind.strip()],
            overwrite=overwrite,
        )
    pairs = ", ".join(f"{a}/{b}" for a, b in dataset.pairs)
    typer.echo(
        f"Wrote {len(dataset.items)} videos of {len(dataset.classes)} classes to {dataset.root} in "
        f"{dataset.seconds:.1f} s: {len(dataset.pairs)} mirrored pairs ({pairs}); "
        f"order-free: {', '.join(dataset.order_free) or 'none'}."
    )
    typer.echo(f"Annotations: {dataset.annotations_path}  Pairs: {dataset.pairs_path}")


@app.command(rich_help_panel=DEMO_PANEL)
def demo(
    directory: Annotated[Path, typer.Argument(help="Working folder: data/, shards/, runs/<probe>/, report/.")] = Path(
        "demo"
    ),
    per_class: Annotated[int, typer.Option(help="Videos per class.")] = DemoSettings.per_class,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs per probe (default: train-probe's automatic schedule).")
    ] = DemoSettings.epochs,
    seeds: Annotated[
        int, typer.Option(min=1, help="Seeds per probe, trained together; the table shows mean ± std.")
    ] = DemoSettings.seeds,
    backbone: Annotated[str, typer.Option(help="Backbone (see extract --help).")] = DemoSettings.backbone,
    weights: Annotated[
        str, typer.Option(help="'random' works offline; 'hub' or a file for pretrained weights.")
    ] = DemoSettings.weights,
    image_size: Annotated[int, typer.Option(help="Frame size fed to the backbone.")] = DemoSettings.image_size,
    seed: Annotated[int, typer.Option(help="Seed of the videos, the random backbone and training.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    threads: Threads = None,
) -> None:
    """Show what STEP is for, offline, in a few minutes: generate the near-symmetric benchmark, extract tokens,
    train the linear, attentive, self-attentive and STEP probes (3 seeds each), print the comparison on the
    test split (mean ± std) and write a report. Re-running reuses every finished step."""
    from step_cache.demo import run_demo

    setup_logging()
    apply_threads(threads)
    settings = DemoSettings(
        per_class=per_class,
        epochs=epochs,
        seeds=seeds,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        seed=seed,
    )
    with user_errors():
        result = run_demo(directory, settings, progress=not quiet)
    typer.echo(result.summary())
