"""``step-cache sweep``: an Optuna search over probe hyperparameters, trials trained as stacked batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import PROBES_PANEL, app
from cli.console import setup_logging, user_errors
from cli.options import (
    CacheArguments,
    FeaturesOption,
    Quiet,
    Threads,
    Verbose,
    chosen_caches,
    config_options,
    given_options,
)
from step_cache.cpu_budget import apply_threads
from step_cache.errors import InputError


@app.command(rich_help_panel=PROBES_PANEL)
@config_options("sweep", after="out")
def sweep(
    ctx: typer.Context,
    caches: CacheArguments = None,
    features: FeaturesOption = None,
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
    retrain: Annotated[
        bool, typer.Option(help="Retrain the best configuration alone into OUT/best-run (train-probe format).")
    ] = True,
    plots: Annotated[bool, typer.Option(help="Write PNG figures to OUT/plots.")] = True,
    quiet: Quiet = False,
    threads: Threads = None,
    verbose: Verbose = False,
    **config: Any,
) -> None:
    """Search probe hyperparameters with Optuna; K trials at a time train together as one stacked batch.

    --protocol NAME trains an anchor's published grid (docs/protocols.md): its fields, its grid (V-JEPA 2's lrs x
    weight decays, DINOv2's lrs x blocks x avgpool) as --param lists, --grid, --trials and --parallel the grid's
    size (one batch), --pruner none; options given explicitly (a --param of the same name too) override the
    preset."""
    from step_cache.extras import require

    setup_logging(verbose)
    apply_threads(threads)
    with user_errors():
        require("optuna", "step-cache sweep")
        from step_cache.sweeps.results import trial_line
        from step_cache.sweeps.space import build_space
        from step_cache.sweeps.study import run_sweep
        from step_cache.training import runs

        chosen = chosen_caches("sweep", caches, features)
        if grid and sampler not in ("tpe", "grid"):
            raise InputError(f"--grid and --sampler {sampler} exclude each other")
        protocol = config.get("protocol")
        if protocol is not None:  # only what the user gave overrides the preset
            from step_cache.cache.manifest import read_manifest
            from step_cache.training.protocol_use import grid_flags, grid_size, protocol_probe

            config = {**given_options(ctx, config), "protocol": protocol}
            config["probe"] = protocol_probe(protocol, config.get("probe"))
            # the grid less what the user fixed, of the layers the cache holds; a --param given replaces the preset's
            fixed = (set(config), read_manifest(chosen[0]).extraction)
            param = [*grid_flags(protocol, *fixed), *(param or [])]
            unset = {"sampler", "trials", "parallel", "pruner"} - set(given_options(ctx, dict.fromkeys(
                ("sampler", "trials", "parallel", "pruner"))))  # fmt: skip
            sampler = "grid" if "sampler" in unset else sampler
            trials = grid_size(protocol, *fixed) if "trials" in unset else trials
            parallel = grid_size(protocol, *fixed) if "parallel" in unset else parallel
            pruner = "none" if "pruner" in unset else pruner
        probe = config.pop("probe")
        search_space = build_space(probe, param, space)
        result = run_sweep(
            chosen,
            probe,
            out or Path("sweeps") / (protocol or probe),
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
            progress=not quiet,
            **config,
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
