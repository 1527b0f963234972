"""Commands that look after an existing cache: ``inspect``, ``verify`` and ``merge``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.app import TOKENS_PANEL, app
from cli.console import setup_logging, user_errors
from cli.options import Quiet


@app.command(rich_help_panel=TOKENS_PANEL)
def inspect(
    cache: Annotated[Path, typer.Argument(help="Cache directory written by extract.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarise a cache: backbone, sampling and decoder, token layout, counts per class and split,
    failures."""
    from step_cache.cache.summary import format_summary, summarize_cache

    with user_errors():
        summary = summarize_cache(cache)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@app.command(rich_help_panel=TOKENS_PANEL)
def verify(
    cache: Annotated[Path, typer.Argument(help="Cache directory written by extract.")],
    checksums: Annotated[bool, typer.Option(help="Compare every shard's sha256 with the manifest.")] = True,
    quiet: Quiet = False,
) -> None:
    """Check every shard against the manifest: sizes, checksums, shapes, readable chunks, labels, no NaN/Inf,
    no duplicate videos. Exits with 1 and names the damaged shard when anything is wrong."""
    from step_cache.cache.verify import verify_cache

    with user_errors():
        report = verify_cache(cache, checksums=checksums, progress=not quiet)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command(rich_help_panel=TOKENS_PANEL)
def merge(
    out: Annotated[Path, typer.Argument(help="Cache directory whose parts/ to merge (extract --num-parts N).")],
    parts: Annotated[
        list[Path] | None, typer.Argument(help="Part directories to merge instead of OUT/parts/*.")
    ] = None,
) -> None:
    """Write OUT/manifest.json listing the shards of every part, so that OUT reads as one cache."""
    from step_cache.extraction.distributed import merge as merge_parts

    setup_logging()
    with user_errors():
        merged = merge_parts(out, parts or None)
    typer.echo(
        f"{out}: merged {len(merged.source['parts'])} parts: {merged.num_videos} videos, "
        f"{merged.num_clips} clips in {len(merged.shards)} shards, {len(merged.failures)} failures"
    )
