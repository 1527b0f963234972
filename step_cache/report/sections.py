"""The report's sections drawn from loaded runs: the comparison figures, one section per run, one per sweep."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from step_cache.report import figures
from step_cache.report.document import Block, Heading, Image, Paragraph, Table
from step_cache.report.summaries import RunSummary, cell
from step_cache.training.metrics_file import describe
from step_cache.training.records import run_chance


def figure_path(out: Path, name: str) -> Path:
    return out / "figures" / (name.replace("/", "_") + ".png")


def comparison_figures(summaries: Sequence[RunSummary], out: Path) -> list[Block]:
    """The accuracy bars of every run (as is and reversed), and the training curves of those with a history."""
    shown = [("top-1", "top1"), ("pair acc", "pair_accuracy"), ("reversed top-1", "reversed_top1"),
             ("reversed pair", "reversed_pair_accuracy")]  # fmt: skip
    headlines = [s.headline for s in summaries]
    splits = " / ".join(sorted({split for split, _, _ in headlines}))
    bars = figures.comparison_bars(
        [s.name for s in summaries],
        {label: [figures_.get(key) for _, figures_, _ in headlines] for label, key in shown},
        figure_path(out, "comparison"),
        errors={label: [(std or {}).get(key) for _, _, std in headlines] for label, key in shown},
        split=splits,
        chance=[(run_chance(s.metrics) or {}).get("level") for s in summaries],
    )
    blocks: list[Block] = [Image(bars.relative_to(out).as_posix(), f"Accuracy per run ({splits}), as is and reversed")]
    if any(s.history for s in summaries):
        path = figure_path(out, "curves")
        curves = figures.training_curves({s.name: s.history for s in summaries if s.history}, path)
        caption = "Loss and val top-1 (the first seed of a run with several)"
        blocks += [Heading("Training curves"), Image(curves.relative_to(out).as_posix(), caption)]
    return blocks


def run_blocks(summary: RunSummary, out: Path) -> list[Block]:
    """One run's section: its settings (epochs trained / planned), then its per-class accuracy and confusion
    matrix on the headline split, captioned with that split and the seeds (``metrics_file.describe``)."""
    metrics = summary.metrics
    config = summary.config.get("config", {})
    settings = ", ".join(
        f"{k}={config[k]}" for k in ("lr", "weight_decay", "batch_size", "seed", "seeds") if k in config
    )
    if read := summary.config.get("data", {}).get("tokens", {}).get("layers"):  # train-probe --layers
        settings += f", layers={config.get('layers')} (blocks {', '.join(map(str, read))})"
    epochs = f"epochs {metrics.get('epochs_trained')}/{metrics.get('epochs')} (trained/planned)"
    split, seeds = metrics.get("headline_split", "val"), metrics.get("seeds") or [0]
    pooled = describe(split, metrics.get("pooled_seeds") or seeds, pooled=True)
    checkpoint = (
        f"no val: fixed schedule, last epoch's weights (epoch {metrics.get('best_epoch')})"
        if metrics.get("checkpoint") == "last"  # --val none
        else f"best epoch {metrics.get('best_epoch')}"
    )
    blocks: list[Block] = [
        Heading(f"{summary.name} ({metrics.get('probe')})"),
        Paragraph(f"{summary.directory} — {epochs}; {settings}; {checkpoint}"),
    ]
    per_class = metrics.get("per_class_accuracy") or {}
    if per_class:
        path = figures.per_class_bars(summary.name, per_class, figure_path(out, f"{summary.name}-per-class"))
        caption = f"{summary.name}: per-class accuracy ({pooled})"
        blocks.append(Image(path.relative_to(out).as_posix(), caption))
    matrix, classes = metrics.get("confusion_matrix"), metrics.get("classes")
    if matrix and classes:
        path = figures.confusion(summary.name, matrix, classes, figure_path(out, f"{summary.name}-confusion"))
        blocks.append(Image(path.relative_to(out).as_posix(), f"{summary.name}: confusion matrix ({pooled})"))
    return blocks


def sweep_blocks(sweep_dir: Path, out: Path, top: int = 10) -> list[Block]:
    """A sweep's section: its best trials and its figures (objective vs each parameter, parallel coordinates)."""
    from step_cache.sweeps.plots import sweep_figures
    from step_cache.sweeps.results import read_trials

    content = read_trials(sweep_dir / "trials.json", tables=True)  # a file of another shape: one line naming it
    trials = [t for t in content["trials"] if t["state"] == "COMPLETE" and t.get("value") is not None]
    names = [n for n, spec in content["space"].items() if spec["type"] != "fixed"]
    header = ["trial", *names, f"val {content['metric']}", "pair acc", "reversed top-1"]
    rows = [
        [
            str(t["number"]),
            *(
                f"{t['params'].get(n)}" if not isinstance(t["params"].get(n), float) else f"{t['params'][n]:.3g}"
                for n in names
            ),
            cell(t["value"], "pct"),
            cell(t.get("metrics", {}).get("pair_accuracy"), "pct"),
            cell(t.get("metrics", {}).get("reversed_top1"), "pct"),
        ]
        for t in trials[:top]
    ]
    blocks: list[Block] = [
        Heading(f"Sweep {sweep_dir.name}"),
        Paragraph(
            f"{sweep_dir}: {len(content['trials'])} trials ({len(trials)} completed), objective val "
            f"{content['metric']} ({content['direction']}); best {min(top, len(trials))} shown."
        ),
        Table(header, rows, align_right=set(range(len(header)))),
    ]
    target = out / "figures" / sweep_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for figure in sweep_figures(sweep_dir):
        copied = Path(shutil.copy(figure, target / figure.name))
        blocks.append(Image(copied.relative_to(out).as_posix(), figure.stem.replace("_", " ")))
    return blocks
