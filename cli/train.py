"""``step-cache train-probe``, ``step-cache evaluate`` and ``step-cache predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.app import app
from cli.console import setup_logging, user_errors
from cli.options import BatchSize, EarlyStop, Epochs, Patience, ReversePairs, Threads, TokenDrop, Views
from step_cache.cpu_budget import apply_threads
from step_cache.training.metrics import format_percent

PANEL = "Stage two: probes"
Features = Annotated[
    list[Path], typer.Option(help="Shard directory written by extract (repeat to combine compatible caches).")
]
ShardArguments = Annotated[
    list[Path] | None, typer.Argument(help="Shard directories (the same as --features)", show_default=False)
]


def _all_features(positional: list[Path] | None, features: list[Path] | None) -> list[Path]:
    chosen = [*(positional or []), *(features or [])]
    if not chosen:
        raise ValueError("give the shard directory: step-cache train-probe SHARDS/ (or --features SHARDS/)")
    return chosen


Device = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
DataMode = Annotated[
    str, typer.Option(help="auto (in memory when it fits), memory (load all tokens into RAM) or streaming (HDF5).")
]
Workers = Annotated[
    int | None,
    typer.Option(min=0, help="Streaming reader processes (default: spare threads of the CPU budget, at most 4)."),
]


@app.command("train-probe", rich_help_panel=PANEL)
def train_probe(
    shards: ShardArguments = None,
    features: Annotated[
        list[Path] | None,
        typer.Option(help="Shard directory written by extract (repeat to combine compatible caches)."),
    ] = None,
    probe: Annotated[str, typer.Option(help="linear, attentive, self-attentive or step.")] = "step",
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<probe>).")] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate (AdamW); default 1e-2 for linear, 1e-3 for the others.", show_default=False
        ),
    ] = None,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", "--wd", help="On weight matrices only (not norms, biases, tokens).")
    ] = 0.05,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up (per step), then cosine decay.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option()] = 0.0,
    dropout: Annotated[float | None, typer.Option(help="Probe dropout (default: the probe's, 0).")] = None,
    clip_grad: Annotated[float, typer.Option(help="Max gradient norm; 0 disables clipping.")] = 1.0,
    token_drop: TokenDrop = 0.0,
    reverse_pairs: ReversePairs = 0.0,
    views: Views = "on",
    early_stop: EarlyStop = True,
    patience: Patience = None,
    select_metric: Annotated[
        str,
        typer.Option(
            help="The validation metric that picks best.pt and drives early stopping (ties: lower val loss): top1, "
            "mean-class (mean of per-class accuracies, for imbalanced sets such as Drive&Act) or pair (mirrored "
            "pairs' accuracy). Recorded in config.json and metrics.json.",
        ),
    ] = "top1",
    seed: Annotated[int, typer.Option(help="Seed of the initial weights, batch order and held-out val videos.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train seeds SEED..SEED+N-1 together as one stacked batch and report mean ± std (same batches and "
            "splits; the seeds differ in initial weights and dropout).",
        ),
    ] = 1,
    val_fraction: Annotated[
        float, typer.Option(help="Share of training videos held out (stratified) when the cache has no val split.")
    ] = 0.2,
    tokens: Annotated[
        str,
        typer.Option(help="Tokens the probe sees per frame: all, cls, patches, or auto (cls for linear, else all)."),
    ] = "auto",
    pairs: Annotated[
        Path | None, typer.Option(help="Mirrored class pairs file 'a,b' per line (default: the cache's pairs).")
    ] = None,
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
    device: Device = "auto",
    data: DataMode = "auto",
    memory_fraction: Annotated[float, typer.Option(help="data=auto loads into RAM below this share.")] = 0.5,
    workers: Workers = None,
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA.")] = True,
    resume: Annotated[
        bool, typer.Option(help="Continue a killed run from its last commit (runs commit about every 30 s).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    threads: Threads = None,
    verbose: Annotated[
        bool, typer.Option(help="Print every epoch's figures (they are always in RUN/metrics.jsonl).")
    ] = False,
) -> None:
    """Train a probe on cached tokens; validate every epoch, keep the best checkpoint, report order metrics.

    The checkpoint is chosen on the val split (by --select-metric); the printed figures are the test split's when
    the cache has one (else the val figures, and the line says so). Epochs and batch size default to a schedule
    chosen from the number of training clips (docs/training.md)."""
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
    with user_errors():
        result = run_training(
            _all_features(shards, features),
            probe,
            out or Path("runs") / probe,
            resume=resume,
            overwrite=overwrite,
            probe_options={k: v for k, v in given.items() if v is not None},
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
            clip_grad=clip_grad,
            token_drop=token_drop,
            reverse_pairs=reverse_pairs,
            views=views,
            early_stop=early_stop,
            patience=patience,
            select_metric=select_metric,
            seed=seed,
            seeds=seeds,
            val_fraction=val_fraction,
            tokens=tokens,
            pairs=str(pairs) if pairs else None,
            amp=amp,
            device=device,
            data=data,
            memory_fraction=memory_fraction,
            workers=workers,
            progress=not quiet,
        )
    typer.echo(result.summary())


@app.command(rich_help_panel=PANEL)
def evaluate(
    run: Annotated[Path, typer.Option(help="Run directory written by train-probe.")],
    features: Features,
    split: Annotated[
        str, typer.Option(help="all (every labelled clip), or the run's own train / val / test selection.")
    ] = "all",
    out: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    device: Device = "auto",
    data: DataMode = "auto",
    workers: Workers = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    threads: Threads = None,
) -> None:
    """Evaluate a trained probe (best checkpoint) on shards; classes are matched by name."""
    from step_cache.training.evaluation import evaluate as run_evaluation
    from step_cache.training.runs import write_json

    setup_logging()
    apply_threads(threads)
    with user_errors():
        metrics = run_evaluation(
            run, features, split=split, device=device, data=data, workers=workers, batch_size=batch_size
        )
        if out is not None:
            write_json(out, metrics)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    excluded = f" | {metrics['excluded_clips']} clips of unknown classes left out" if metrics["excluded_clips"] else ""
    pct = format_percent
    typer.echo(
        f"{metrics['probe']} on {metrics['videos']} videos ({metrics['clips']} clips, split {split}): "
        f"top-1 {pct(metrics['top1'])} | top-5 {pct(metrics['top5'])} | mean class "
        f"{pct(metrics['mean_class_accuracy'])} | pair {pct(metrics.get('pair_accuracy'))} | reversed "
        f"{pct(metrics.get('reversed_top1'))} | shuffled {pct(metrics.get('shuffled_top1'))}{excluded}"
    )


@app.command(rich_help_panel=PANEL)
def predict(
    run: Annotated[Path, typer.Option(help="Run directory written by train-probe.")],
    features: Annotated[
        list[Path] | None,
        typer.Option(help="Shard directory written by extract (repeat to combine compatible caches)."),
    ] = None,
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
        typer.Option(help="With --videos: keep the extracted tokens in this shard directory (default: none kept)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="CSV to write: video, clips, label, short, class_1, prob_1, ...")] = Path(
        "predictions.csv"
    ),
    top_k: Annotated[int, typer.Option(min=1, help="Classes per video.")] = 5,
    device: Device = "auto",
    data: DataMode = "auto",
    workers: Workers = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Clips per probe batch (256) / with --videos: frames per backbone call.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    threads: Threads = None,
) -> None:
    """Per-video top-k classes and probabilities (clip logits averaged per video) of a trained probe, from a cache
    (--features) or straight from video files (--videos: the run's backbone, preprocessing and frame sampling are
    rebuilt from its recorded settings; unreadable videos are listed with the reason)."""
    setup_logging()
    apply_threads(threads)
    with user_errors():
        if (features is None) == (videos is None):
            raise ValueError("give either --features SHARDS/ or --videos PATH")
        if videos is None:
            if annotations or weights or cache:
                raise ValueError("--annotations, --weights and --cache go with --videos")
            from step_cache.training.evaluation import predict as run_prediction

            path = run_prediction(
                run, features, out, top_k=top_k, device=device, data=data, workers=workers,
                batch_size=batch_size or 256,
            )  # fmt: skip
            lines = path.read_text(encoding="utf-8").splitlines()
            shown = sum(cell.startswith("class_") for cell in lines[0].split(","))  # top_k, capped at the classes
            typer.echo(f"wrote top-{shown} predictions for {len(lines) - 1} videos to {path}")
            return
        from step_cache.recognition.videos import predict_videos

        result = predict_videos(
            run, videos, out, annotations=annotations, weights=weights, cache=cache, top_k=top_k, device=device,
            workers=workers, batch_size=batch_size, progress=not quiet,
        )  # fmt: skip
    typer.echo(result.summary())
