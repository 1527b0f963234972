"""Options that several commands share, defined once so their help and defaults cannot drift apart."""

from __future__ import annotations

from typing import Annotated

import typer

Epochs = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Training epochs (default: auto, at least 30 and enough for 1500 optimizer steps; docs/training.md).",
        show_default=False,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Clips per optimizer step (default: auto, about 16 batches per epoch, a power of two in 16-64).",
        show_default=False,
    ),
]
TokenDrop = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=0.99,
        help="Training augmentation: drop this share of each frame's patch tokens per clip and epoch (CLS tokens "
        "stay). Not for the linear probe, which reads CLS only.",
    ),
]
ReversePairs = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Training augmentation for exact mirrored pairs only: with this probability play a clip of a paired "
        "class backwards and label it as its partner (off by default: real near-mirror actions are not exact "
        "reverses).",
    ),
]
Views = Annotated[
    str,
    typer.Option(
        help="on: each epoch, every training clip contributes one of its cached views, drawn uniformly from the "
        "clean one and its augmented ones (extract --views N; the views are held in memory too: (1 + N) x the "
        "training clips' tokens); off: clean clips only, to measure the gain. A no-op on a cache without views. "
        "Validation, test, evaluate and predict always use the clean views.",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads for torch (and the size of the decode / reader process pools). Default: OMP_NUM_THREADS "
        "if set, else the CPUs this process may use (affinity, capped by a container's CPU quota). A training "
        "run records it in config.json.",
        show_default=False,
    ),
]
EarlyStop = Annotated[
    bool,
    typer.Option(
        "--early-stop/--no-early-stop",
        help="Stop a run (each seed, each trial) once its validation score (what picks best.pt: val top-1, or "
        "train-probe's --select-metric; then val loss) has not improved for --patience epochs after the warm-up; "
        "the schedule stays the planned one (docs/training.md, Early stopping).",
    ),
]
Patience = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Early stopping: epochs without a better validation score before a run stops (default: max(10, 30 % "
        "of the planned epochs)).",
        show_default=False,
    ),
]
