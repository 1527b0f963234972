"""``step-cache compact``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import TOKENS_PANEL, app
from cli.console import setup_logging, user_errors


@app.command(rich_help_panel=TOKENS_PANEL)
def compact(
    src: Annotated[Path, typer.Argument(help="Cache directory to read (written by extract or compact).")],
    out: Annotated[Path, typer.Option(help="Cache directory to write (never SRC); re-run to resume.")],
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Token dtype of OUT: int8 (one absmax scale per token, about half of float16), float16 or "
            "float32 (default: SRC's)."
        ),
    ] = None,
    pool_patches: Annotated[
        int, typer.Option(min=1, help="Average NxN patch neighbourhoods (1 = keep the grid); CLS tokens are kept.")
    ] = 1,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Keep only these stored layers (a cache of extract --layers): lastN (the last N stored) or 0-based "
            "block indices that are stored, such as 8,11 (default: all)."
        ),
    ] = None,
    project: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Store tokens as their coordinates on the top-K principal directions (PCA fitted on a seeded "
            "sample of training clips; matrix and mean in OUT/projection.npy).",
        ),
    ] = None,
    project_clips: Annotated[int, typer.Option(min=1, help="Training clips the PCA of --project is fitted on.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the --project sample.")] = 0,
    shard_size_mb: Annotated[float, typer.Option(help="Target shard size in MiB.")] = 1024.0,
    compression: Annotated[str, typer.Option(help="Shard compression: none (default), lz4, zstd or gzip.")] = "none",
    overwrite: Annotated[bool, typer.Option(help="Delete an existing cache in --out and start over.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Rewrite a cache smaller without running the backbone again: int8 tokens, pooled patches, projected tokens.

    SRC's shards are checked before use and never modified. OUT is written like extract writes: shards published
    whole, the manifest after each, so an interrupted run resumes when re-run with the same options. `verify`,
    `inspect`, `train-probe`, `evaluate`, `predict` and `sweep` read OUT as any cache.
    """
    from step_cache.cache.compact import compact as compact_cache

    setup_logging()
    with user_errors():
        report = compact_cache(
            src,
            out,
            dtype=dtype,
            pool_patches=pool_patches,
            layers=layers,
            project=project,
            project_clips=project_clips,
            project_seed=seed,
            shard_size_mb=shard_size_mb,
            compression=compression,
            overwrite=overwrite,
            progress=not quiet,
        )
    typer.echo(report.summary())
