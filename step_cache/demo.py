"""The demo (``make demo`` / ``step-cache demo DIR``): what STEP is for, in one command, offline.

1. write the built-in benchmark of nearly symmetric actions (``step_cache.demo_dataset``): mirrored class pairs whose
   clips are the same visual process played forwards or backwards, plus order-free classes;
2. extract tokens with an offline-capable backbone (a random-initialised small ViT by default; ``weights`` picks
   pretrained ones when available);
3. train the linear, attentive, self-attentive and STEP probes on the cache;
4. print one comparison table and write a report.

Every step resumes: re-running reuses the videos, the cache and finished runs when the settings are unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from step_cache.cache.files import atomic_write_text
from step_cache.extras import MissingExtraError

log = logging.getLogger(__name__)
PROBES = ("linear", "attentive", "self-attentive", "step")


@dataclass
class DemoSettings:
    """The demo's defaults were chosen so that it runs in a few minutes on 2 CPU cores (docs/step.md)."""

    per_class: int = 48  # videos per class (60 % train, 20 % val to choose checkpoints, 20 % test to report)
    video_frames: int = 33  # odd: sampled frames of a clip and of its reverse match (demo_dataset/dataset.py)
    video_size: tuple[int, int] = (112, 112)
    difficulty: float = 0.5
    seed: int = 0
    backbone: str = "vit-tiny"
    weights: str = "random"
    image_size: int | None = 112
    frames: int = 8  # T sampled per clip
    # Training uses train-probe's defaults (the automatic schedule, docs/training.md): the demo shows what a
    # user gets without tuning. None: the default.
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seeds: int = 3  # trained together as one stack; the table shows mean ± std over them
    probes: tuple[str, ...] = PROBES
    extract_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    directory: Path
    runs: list[Path]
    report: Path | None  # None: matplotlib is missing, no report was written
    table: str
    seconds: dict[str, float]

    def summary(self) -> str:
        timing = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in self.seconds.items())
        report = self.report or "not written (pip install 'step-cache[report]' for it)"
        return f"{self.table}\n\nreport: {report}  ({timing})"


def run_demo(directory: str | Path, settings: DemoSettings | None = None, progress: bool = True) -> DemoResult:
    """Run the whole demo in ``directory`` (data/, shards/, runs/<probe>/, report/).

    A stage whose settings changed is redone, and so is everything after it; a stage that was interrupted resumes.
    """
    # Imported here so that the CLI (which reads DemoSettings' defaults) starts without torch.
    from step_cache.demo_dataset import make_demo_dataset
    from step_cache.extraction.engine import extract
    from step_cache.report import build_report
    from step_cache.report.build import format_comparison, load_run
    from step_cache.training.trainer import train_probe

    settings = settings or DemoSettings()
    directory = Path(directory)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    annotations = directory / "data" / "annotations.csv"
    redo = not (_is_current(directory, settings, "generated") and annotations.is_file())
    if redo:
        make_demo_dataset(
            directory / "data",
            per_class=settings.per_class,
            seed=settings.seed,
            num_frames=settings.video_frames,
            size=settings.video_size,
            difficulty=settings.difficulty,
            overwrite=True,
            progress=progress,
        )
        _mark_done(directory, settings, "generated")
    seconds["videos"] = time.perf_counter() - started

    started = time.perf_counter()
    redo = redo or _is_stale(directory, settings, "extracted")
    extract(
        annotations.parent,
        directory / "shards",
        annotations=annotations,
        backbone=settings.backbone,
        weights=settings.weights,
        frames=settings.frames,
        image_size=settings.image_size,
        progress=progress,
        overwrite=redo,
        **settings.extract_options,
    )
    _mark_done(directory, settings, "extracted")
    seconds["extract"] = time.perf_counter() - started

    started = time.perf_counter()
    redo = redo or _is_stale(directory, settings, "trained")
    run_dirs = []
    # One summary line per probe instead of one line per epoch of every probe.
    training_log = logging.getLogger("step_cache.training.trainer")
    previous_level = training_log.level
    training_log.setLevel(logging.WARNING)
    try:
        for probe in settings.probes:
            run_dir = directory / "runs" / probe
            resume = not redo and (run_dir / "config.json").is_file()  # finished: returns at once; killed: goes on
            recipe = {
                name: getattr(settings, name)
                for name in ("epochs", "batch_size", "lr", "weight_decay")
                if getattr(settings, name) is not None
            }
            result = train_probe(
                [directory / "shards"], probe, run_dir, resume=resume, overwrite=not resume, seed=settings.seed,
                seeds=settings.seeds, progress=progress, **recipe,
            )  # fmt: skip
            log.info("%s", result.summary())
            run_dirs.append(run_dir)
    finally:
        training_log.setLevel(previous_level)
    _mark_done(directory, settings, "trained")
    seconds["train"] = time.perf_counter() - started

    table = format_comparison([load_run(run) for run in run_dirs])
    try:
        report = build_report(run_dirs, directory / "report", title="step-cache demo: nearly symmetric actions")
    except MissingExtraError as error:  # the report is a bonus: the table above says it all
        log.warning("no report: %s", error)
        report = None
    return DemoResult(directory, run_dirs, report, table, seconds)


_STAGE_FIELDS = {
    "generated": ("per_class", "video_frames", "video_size", "difficulty", "seed"),
    "extracted": ("backbone", "weights", "image_size", "frames", "extract_options"),
    "trained": ("epochs", "batch_size", "lr", "weight_decay", "seeds", "probes"),
}


def _stage_fingerprint(settings: DemoSettings, stage: str) -> dict[str, Any]:
    """The settings a stage's output depends on: its own fields and those of every earlier stage."""
    values = json.loads(json.dumps(asdict(settings), default=list))
    names = []
    for name, fields in _STAGE_FIELDS.items():
        names += fields
        if name == stage:
            break
    return {name: values[name] for name in names}


def _is_current(directory: Path, settings: DemoSettings, stage: str) -> bool:
    path = directory / f".demo-{stage}.json"
    return path.is_file() and json.loads(path.read_text()) == _stage_fingerprint(settings, stage)


def _is_stale(directory: Path, settings: DemoSettings, stage: str) -> bool:
    """Done before with other settings (an interrupted stage has no marker yet and is resumed instead)."""
    return (directory / f".demo-{stage}.json").is_file() and not _is_current(directory, settings, stage)


def _mark_done(directory: Path, settings: DemoSettings, stage: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / f".demo-{stage}.json", json.dumps(_stage_fingerprint(settings, stage)))
