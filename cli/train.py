"""``step-cache train-probe``, ``step-cache evaluate`` and ``step-cache predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import PROBES_PANEL, app
from cli.console import setup_logging, user_errors
from cli.options import (
    CacheArguments,
    DataMode,
    Device,
    FeaturesOption,
    Quiet,
    RunDir,
    Threads,
    Verbose,
    Workers,
    chosen_caches,
    config_options,
    given_options,
)
from step_cache.cpu_budget import apply_threads
from step_cache.errors import InputError

# evaluate's and predict's override of the run's --view-average
ViewAverage = Annotated[
    str | None,
    typer.Option(
        help="Combine a video's rows (clips, test-view crops) by the mean of their softmax or of their logits "
        "[default: the run's own --view-average; logits for runs from before it existed]."
    ),
]


@app.command("train-probe", rich_help_panel=PROBES_PANEL)
@config_options("train-probe", after="out")
def train_probe(
    ctx: typer.Context,
    caches: CacheArguments = None,
    features: FeaturesOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<probe>).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Probe dropout (default: the probe's, 0).")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads (default D // 64).")] = None,
    depth: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Number of blocks (default 1). step / self-attentive: transformer blocks. attentive: V-JEPA 2's "
            "num_probe_blocks: DEPTH-1 self-attention blocks over the tokens before the cross-attention (its "
            "frozen evaluation uses 4).",
        ),
    ] = None,
    mlp_ratio: Annotated[float | None, typer.Option(help="MLP width / D, where the probe has an MLP.")] = None,
    frame_pos: Annotated[
        bool | None, typer.Option("--frame-pos/--no-frame-pos", help="STEP: learnable frame-wise position.")
    ] = None,
    global_cls: Annotated[
        bool | None, typer.Option("--global-cls/--no-global-cls", help="STEP: one CLS token for the clip.")
    ] = None,
    mlp: Annotated[
        bool | None, typer.Option("--mlp/--no-mlp", help="STEP: full block with MLP instead of attention only.")
    ] = None,
    output_projection: Annotated[
        bool | None,
        typer.Option(
            "--output-projection/--no-output-projection",
            help="attentive: apply the attention's output projection (released V-JEPA: no; jepa after PR 17: yes).",
        ),
    ] = None,
    avgpool: Annotated[
        bool | None,
        typer.Option(
            "--avgpool/--no-avgpool", help="linear: CLS token + mean of the patch tokens (DINOv2's use_avgpool)."
        ),
    ] = None,
    layer_norm: Annotated[
        bool | None,
        typer.Option("--layer-norm/--no-layer-norm", help="linear: LayerNorm before the head (DINOv2: none)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue a killed run from its last commit (runs commit about every 30 s).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    quiet: Quiet = False,
    threads: Threads = None,
    verbose: Verbose = False,
    **config: Any,
) -> None:
    """Train a probe on cached tokens; validate every epoch, keep the best checkpoint, report order metrics.

    The checkpoint is chosen on the val split (by --select-metric; --val none: the last epoch's); the printed
    figures are the test split's when the cache has one (else the val figures, and the line says so). Epochs and
    batch size default to a schedule chosen from the number of training clips (docs/training.md). --protocol NAME
    sets an anchor's published evaluation (docs/protocols.md); options given explicitly override the preset."""
    from step_cache.training.trainer import train_probe as run_training

    setup_logging(verbose)
    apply_threads(threads)
    given = {
        "dropout": dropout,
        "num_heads": heads,
        "depth": depth,
        "mlp_ratio": mlp_ratio,
        "frame_pos": frame_pos,
        "global_cls": global_cls,
        "mlp": mlp,
        "output_projection": output_projection,
        "avgpool": avgpool,
        "layer_norm": layer_norm,
    }
    if config.get("protocol") is not None:  # only what the user gave overrides the preset
        config = {**given_options(ctx, config), "protocol": config["protocol"]}
    probe = config.pop("probe", None)
    with user_errors():
        result = run_training(
            chosen_caches("train-probe", caches, features),
            probe,
            out=out or Path("runs") / (config.get("protocol") or probe),
            resume=resume,
            overwrite=overwrite,
            probe_options={k: v for k, v in given.items() if v is not None},
            progress=not quiet,
            **config,
        )
    typer.echo(result.summary())


EVAL_SPLIT_HELP = (
    "all (every labelled clip), or the run's own train / val / test selection [default: test when the cache has test "
    "clips, else val on the run's own cache, else all]."
)


@app.command(rich_help_panel=PROBES_PANEL)
def evaluate(
    run: RunDir,
    caches: CacheArguments = None,
    features: FeaturesOption = None,
    split: Annotated[str | None, typer.Option(help=EVAL_SPLIT_HELP)] = None,
    seed: Annotated[int | None, typer.Option(help="Score this seed of a --seeds run alone [default: all].")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    device: Device = "auto",
    data: DataMode = "auto",
    workers: Workers = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    view_average: ViewAverage = None,
    threads: Threads = None,
) -> None:
    """Evaluate a trained probe (best checkpoint of each seed) on a cache; classes are matched by name."""
    from step_cache.training.evaluation import evaluate as run_evaluation
    from step_cache.training.evaluation_text import evaluation_line
    from step_cache.training.runs import write_json

    setup_logging()
    apply_threads(threads)
    with user_errors():
        metrics = run_evaluation(
            run,
            chosen_caches("evaluate", caches, features),
            split=split,
            seed=seed,
            device=device,
            data=data,
            workers=workers,
            batch_size=batch_size,
            view_average=view_average,
        )
        if out is not None:
            write_json(out, metrics)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    typer.echo(evaluation_line(metrics))


@app.command(rich_help_panel=PROBES_PANEL)
def predict(
    run: RunDir,
    caches: CacheArguments = None,
    features: FeaturesOption = None,
    videos: Annotated[
        Path | None,
        typer.Option(
            help="Classify videos directly instead of a cache: one video file, a folder (DIR/<class>/*.mp4 fills "
            "the label column), or the root of --annotations. Tokens are extracted with the run's own settings."
        ),
    ] = None,
    annotations: Annotated[
        Path | None, typer.Option(help="With --videos: CSV path,label[,split][,start_frame,end_frame].")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="With --videos: the backbone weights file (default: where the run's cache recorded it); a file "
            "whose sha256 differs from the recorded one is refused."
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="With --videos: keep the extracted tokens in this cache directory (default: none kept)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="CSV to write: video, clips, label, short, class_1, prob_1, ...")] = Path(
        "predictions.csv"
    ),
    top_k: Annotated[int | None, typer.Option(min=1, help="Classes per video [default: 5, or every class].")] = None,
    device: Device = "auto",
    data: DataMode = "auto",
    workers: Workers = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Clips per probe batch (256) / with --videos: frames per backbone call.")
    ] = None,
    view_average: ViewAverage = None,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Per-video top-k classes and probabilities (the clips' softmax, or their logits, averaged per video as the
    run's --view-average says) of a trained probe, from a cache
    (CACHE or --features) or straight from video files (--videos: the run's backbone, preprocessing and frame
    sampling are rebuilt from its recorded settings; unreadable videos are listed with the reason)."""
    setup_logging()
    apply_threads(threads)
    with user_errors():
        given = [*(caches or []), *(features or [])]
        if bool(given) == (videos is not None):
            raise InputError("give either a cache (CACHE/ or --features CACHE/) or --videos PATH")
        if videos is None:
            if annotations or weights or cache:
                raise InputError("--annotations, --weights and --cache go with --videos")
            from step_cache.training.evaluation import predict as run_prediction

            path = run_prediction(
                run, given, out, top_k=top_k, device=device, data=data, workers=workers,
                batch_size=batch_size or 256, view_average=view_average,
            )  # fmt: skip
            lines = path.read_text(encoding="utf-8").splitlines()
            shown = sum(cell.startswith("class_") for cell in lines[0].split(","))  # top_k, capped at the classes
            typer.echo(f"wrote top-{shown} predictions for {len(lines) - 1} videos to {path}")
            return
        from step_cache.recognition.videos import predict_videos

        result = predict_videos(
            run, videos, out, annotations=annotations, weights=weights, cache=cache, top_k=top_k, device=device,
            workers=workers, batch_size=batch_size, progress=not quiet, view_average=view_average,
        )  # fmt: skip
    typer.echo(result.summary())
