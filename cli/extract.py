"""``step-cache extract``."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import TOKENS_PANEL, app
from cli.console import setup_logging, user_errors
from cli.extract_views import extract_views, view_options
from cli.options import Device, Quiet, Threads, options_of, spliced_options
from step_cache.cpu_budget import apply_threads
from step_cache.errors import InputError


@app.command(rich_help_panel=TOKENS_PANEL)
@spliced_options(options_of(view_options), after="part")
def extract(
    videos: Annotated[
        Path | None,
        typer.Option(
            help="Videos root: DIR/<class>/*.mp4 (files directly in DIR are unlabelled), "
            "or the root the --annotations paths are relative to."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Cache directory to create or resume.")] = Path("shards"),
    annotations: Annotated[
        Path | None, typer.Option(help="CSV with columns path,label[,split][,start_frame,end_frame].")
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(help="Mirrored class pairs, lines 'open,close' (default: pairs.txt beside --annotations)."),
    ] = None,
    backbone: Annotated[
        str,
        typer.Option(
            help="dinov2-s|b|l|g[-reg], clip-b16, clip-l14, vit-tiny, dinov2 (=dinov2-b), "
            "clip (=clip-b16), or timm:<model name>."
        ),
    ] = "dinov2",
    weights: Annotated[
        str,
        typer.Option(
            help="'hub' (timm pretrained download), 'random' (seeded, for tests/offline demo), "
            "or a local .safetensors/.pth file."
        ),
    ] = "hub",
    frames: Annotated[int, typer.Option(min=1, help="Frames T sampled per clip (centres of T equal segments).")] = 16,
    clips: Annotated[int, typer.Option(min=1, help="Temporal clips K per video (multi-view evaluation).")] = 1,
    image_size: Annotated[
        int | None, typer.Option(help="Input size in pixels (default: the backbone's; 224 for DINOv2).")
    ] = None,
    pool_patches: Annotated[
        int, typer.Option(min=1, help="Average NxN patch neighbourhoods to cut storage (1 = keep all).")
    ] = 1,
    layers: Annotated[
        str,
        typer.Option(
            help="Backbone blocks to store: last (default: the last block, as always), lastN (e.g. last4), or "
            "0-based block indices (8,10,11; negative from the end). Several blocks store a layer axis, each "
            "final-normalised as timm's forward_intermediates(norm=True) (shard format 5)."
        ),
    ] = "last",
    dtype: Annotated[
        str,
        typer.Option(
            help="Storage dtype: float16, float32, or int8 (one absmax scale per token; about half the bytes of "
            "float16, read back as float16; shard format version 2)."
        ),
    ] = "float16",
    device: Device = "auto",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Frames per backbone call (default 32 on CPU, 256 on CUDA).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Decode processes (default: spare cores up to 8 on CPU, cores up to 32 on CUDA; 0 = in-process). "
            "Not used by --decoder torchcodec-cuda, which decodes on the GPU from one thread.",
        ),
    ] = None,
    decoder: Annotated[
        str,
        typer.Option(
            help="Video decoder: decord (default), pyav (threaded FFmpeg), torchcodec (extra [torchcodec]) or "
            "torchcodec-cuda (decodes on the GPU; frames stay there). Recorded in the cache: caches of different "
            "decoders are not resumed into or merged."
        ),
    ] = "decord",
    shard_size_mb: Annotated[float, typer.Option(help="Target shard size in MiB.")] = 1024.0,
    seed: Annotated[int, typer.Option(help="Seed of --weights random.")] = 0,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first video that cannot be read or whose decoder reports errors.")
    ] = False,
    max_decode_errors: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Skip (as a failure) a video whose decoder reports more errors than this (damaged data). "
            "Default: cache it, recorded with its error count (inspect and verify list it).",
        ),
    ] = None,
    allow_outside: Annotated[
        bool, typer.Option(help="Accept --annotations paths outside --videos (absolute, or with '..').")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing cache in --out and start over.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Print the clip count, bytes per clip, cache size, free space on --out's disk and a stage-two "
            "epoch's read time (from a short read test there: a 64 MiB file, deleted), then stop: no video is "
            "read, nothing is kept."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Start even when --out's disk has less free space than the cache still needs (its estimated size "
            "plus a margin of 5 % + 16 MiB): extract what fits, then stop in one line; re-run to resume."
        ),
    ] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the backbone (worth it for long GPU runs).")] = False,
    compression: Annotated[
        str, typer.Option(help="Shard compression: none (default; fastest reads), lz4, zstd or gzip.")
    ] = "none",
    num_parts: Annotated[
        int, typer.Option(min=1, help="Split the videos into N parts (SLURM arrays); under torchrun: WORLD_SIZE.")
    ] = 1,
    part: Annotated[int, typer.Option(min=0, help="Which part (0..N-1) this process extracts.")] = 0,
    quiet: Quiet = False,
    threads: Threads = None,
    **view_options: Any,
) -> None:
    """Run a frozen image backbone over videos once and store per-frame tokens in HDF5 shards.

    Re-running the same command resumes where it stopped; unreadable videos are skipped and recorded.
    With --num-parts N --part I each job writes OUT/parts/part-I-of-N; `step-cache merge OUT` joins them.
    Under torchrun every rank extracts its part and rank 0 merges.
    """
    from step_cache.extraction.distributed import extract_distributed, torchrun_environment
    from step_cache.extraction.engine import extract as extract_videos
    from step_cache.extraction.engine import plan_extract

    setup_logging()
    apply_threads(threads)
    with user_errors():
        if videos is None and annotations is None:
            raise InputError("give --videos DIR (class folders) and/or --annotations FILE.csv")
        if dry_run:
            estimate = plan_extract(
                videos, out, annotations=annotations, backbone=backbone, frames=frames, clips=clips,
                image_size=image_size, pool_patches=pool_patches, layers=layers, dtype=dtype,
                shard_size_mb=shard_size_mb, allow_outside=allow_outside, num_parts=num_parts, part=part,
                **extract_views(**view_options),
            )  # fmt: skip
            typer.echo(estimate.summary())
            return
        under_torchrun = torchrun_environment() is not None and num_parts == 1
        run_extract = extract_distributed if under_torchrun else partial(extract_videos, num_parts=num_parts, part=part)
        report = run_extract(
            videos,
            out,
            annotations=annotations,
            pairs=pairs,
            backbone=backbone,
            weights=weights,
            frames=frames,
            clips=clips,
            image_size=image_size,
            pool_patches=pool_patches,
            layers=layers,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            workers=workers,
            shard_size_mb=shard_size_mb,
            seed=seed,
            strict=strict,
            allow_outside=allow_outside,
            **({} if max_decode_errors is None else {"max_decode_errors": max_decode_errors}),
            overwrite=overwrite,
            force=force,
            compile=compile,
            progress=not quiet,
            compression=compression,
            decoder=decoder,
            **extract_views(**view_options),
        )
    typer.echo(report.summary())
