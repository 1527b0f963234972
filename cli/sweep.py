"""``step-cache sweep``: an Optuna search over probe hyperparameters, trials trained as stacked batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import app
from cli.console import setup_logging, user_errors
from cli.options import BatchSize, EarlyStop, Epochs, Patience, Threads, Views
from step_cache.cpu_budget import apply_threads
from step_cache.errors import InputError

PANEL = "Stage two: probes"


@app.command(rich_help_panel=PANEL)
def sweep(
    shards: Annotated[
        list[Path] | None, typer.Argument(help="Shard directories (the same as --features)", show_default=False)
    ] = None,
    features: Annotated[
        list[Path] | None, typer.Option(help="Shard directory written by extract (repeat to combine caches).")
    ] = None,
    probe: Annotated[str, typer.Option(help="linear, attentive, self-attentive or step.")] = "step",
    out: Annotated[Path | None, typer.Option(help="Sweep directory (default: sweeps/<probe>).")] = None,
    trials: Annotated[int, typer.Option(min=0, help="Total trials of the study (all workers together).")] = 64,
    parallel: Annotated[int, typer.Option(min=1, help="Trials asked at once and trained as one stacked batch.")] = 16,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="NAME=SPEC, repeatable: lr=log:1e-4..3e-3, dropout=0..0.3, wd=0,0.05,0.1, depth=1,2; "
            "a single value fixes it (label_smoothing=0.1).",
        ),
    ] = None,
    space: Annotated[Path | None, typer.Option(help="Search space file (.toml / .yaml), see docs/sweeps.md.")] = None,
    grid: Annotated[bool, typer.Option(help="Exhaustive grid over the listed values (= --sampler grid).")] = False,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid.")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median, hyperband or none (per-epoch validation).")] = "median",
    metric: Annotated[
        str, typer.Option(help="Objective: top1, top5, mean_class_accuracy, pair_accuracy or loss (minimised).")
    ] = "top1",
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna RDB URL shared by workers: sqlite:///sweep.db, postgresql+psycopg://user@host:5432/db "
            "(default: OUT/study.journal; re-running the command resumes it)."
        ),
    ] = None,
    study_name: Annotated[str | None, typer.Option(help="Study name in --storage (workers use the same).")] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            min=1,
            help="--storage: seconds between a running trial's heartbeats; a trial silent for 3x this long "
            "(its worker died) is re-queued.",
        ),
    ] = 60,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    seed: Annotated[int, typer.Option(help="Data order, initial weights and sampler seed.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Held-out share of training videos when no val split.")] = 0.2,
    tokens: Annotated[str, typer.Option(help="all, cls, patches or auto.")] = "auto",
    views: Views = "on",
    early_stop: EarlyStop = True,
    patience: Patience = None,
    pairs: Annotated[Path | None, typer.Option(help="Mirrored class pairs file (default: the cache's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    data: Annotated[str, typer.Option(help="auto, memory or streaming.")] = "auto",
    memory_fraction: Annotated[float, typer.Option(help="data=auto loads into RAM below this share.")] = 0.5,
    workers: Annotated[int | None, typer.Option(min=0, help="Streaming reader processes.")] = None,
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA.")] = True,
    retrain: Annotated[
        bool, typer.Option(help="Retrain the best configuration alone into OUT/best-run (train-probe format).")
    ] = True,
    plots: Annotated[bool, typer.Option(help="Write PNG figures to OUT/plots.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    threads: Threads = None,
    verbose: Annotated[
        bool,
        typer.Option(
            help="Debug log: a line per epoch of each stacked batch and one per trial that stops early; the retrained "
            "best-run logs every epoch's figures."
        ),
    ] = False,
) -> None:
    """Search probe hyperparameters with Optuna; K trials at a time train together as one stacked batch."""
    from step_cache.extras import require

    setup_logging(verbose)
    apply_threads(threads)
    with user_errors():
        require("optuna", "step-cache sweep")
        from step_cache.sweeps.results import trial_line
        from step_cache.sweeps.space import build_space
        from step_cache.sweeps.study import run_sweep
        from step_cache.training import runs

        chosen = [*(shards or []), *(features or [])]
        if not chosen:
            raise InputError("give the shard directory: step-cache sweep SHARDS/ (or --features SHARDS/)")
        if grid and sampler not in ("tpe", "grid"):
            raise InputError(f"--grid and --sampler {sampler} exclude each other")
        search_space = build_space(probe, param, space)
        result = run_sweep(
            chosen,
            probe,
            out or Path("sweeps") / probe,
            space=search_space,
            trials=trials,
            parallel=parallel,
            sampler="grid" if grid else sampler,
            pruner=pruner,
            metric=metric,
            storage=storage,
            study_name=study_name,
            heartbeat=heartbeat,
            retrain=retrain,
            plots=plots,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            val_fraction=val_fraction,
            tokens=tokens,
            views=views,
            early_stop=early_stop,
            patience=patience,
            pairs=str(pairs) if pairs else None,
            device=device,
            data=data,
            memory_fraction=memory_fraction,
            workers=workers,
            amp=amp,
            progress=not quiet,
        )
    states = [row["state"] for row in result.rows]
    typer.echo(
        f"{len(states)} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
        f"{len(states) - states.count('COMPLETE') - states.count('PRUNED')} other -> {result.out}"
    )
    for row in [r for r in result.rows if r["state"] == "COMPLETE"][:5]:
        typer.echo(trial_line(row, metric))
    if result.best_run is not None:
        sweep_record = runs.read_config(result.best_run.run_dir).get("sweep", {})
        typer.echo(
            f"best configuration (trial #{sweep_record.get('trial')} of sweep {sweep_record.get('name')}) retrained: "
            f"{result.best_run.summary()}"
        )
