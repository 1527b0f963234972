""" "Minutes, not GPU-days", side by side (issue 30): the same probe for the same epochs, trained (a) online, the way
the anchors' frozen evaluations train (decode and run the backbone every epoch, a fresh augmented view of every
training video each epoch), and (b) from a cache extracted once with ``--views`` (each epoch draws one of the
cached views per clip: ``train-probe --views on``).

On generated demo videos (``make_demo_dataset``) with vit-tiny (random weights) on this CPU:

  online    per epoch: decode + augment (``extraction.views``: random resized crop, drawn anew each epoch) + the
            backbone on every training clip, then one epoch of the probe on those tokens (in memory). Measured for
            --online-epochs epochs; E = 10 and 50 are projected from the measured mean epoch (the output says so).
  cache     ``extract --views V`` once (timed), then ``train_probe`` for max(E) epochs (early stopping off); the
            time to E epochs is extract + the training time of the first E epochs.
  K = 16    a sweep of 16 learning rates: from the cache one ``train_stacked`` run (measured); online the backbone
            pass is shared by the 16 heads as the anchors do (DINOv2's linear evaluation, V-JEPA 2's 20 heads), so
            an online epoch is the measured feature epoch + the stack's measured training epoch (projected).

Training time only on both sides (no validation passes). Prints the times and the ratios.

    python bench/online_vs_cache.py                    # a few minutes on 2 cores
    python bench/online_vs_cache.py --per-class 4 --views 4 --probe step
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from step_cache.demo_dataset import make_demo_dataset
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.engine import extract
from step_cache.extraction.frame_batches import TokenComputer
from step_cache.extraction.video import decode_clips
from step_cache.extraction.views import ViewSettings, render_views, view_sampler
from step_cache.probes import ProbeShape, build_probe
from step_cache.training.config import make_config
from step_cache.training.stacking import train_stacked
from step_cache.training.trainer import train_probe

EPOCHS = (1, 10, 50)


def online_epochs(args: argparse.Namespace, videos: list[tuple[Path, int]], classes: int) -> tuple[float, float]:
    """Mean seconds per online epoch: (decode + augment + backbone, probe training)."""
    backbone = load_backbone("vit-tiny", "random", args.image_size, 1, seed=0, dtype="float16")
    computer = TokenComputer(backbone, torch.device("cpu"), "float16")
    layout = backbone.layout
    shape = ProbeShape(
        dim=layout.dim, num_classes=classes, frames=args.frames, tokens_per_frame=layout.tokens_per_frame, cls_index=0
    )
    probe = build_probe(args.probe, **shape)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    features_s, train_s = 0.0, 0.0
    for epoch in range(args.online_epochs):
        settings = ViewSettings(count=1, seed=epoch)  # a fresh view of every video each epoch
        started = time.perf_counter()
        tokens = []
        with torch.no_grad():
            for path, _ in videos:
                decoded = decode_clips(path, args.frames, views=view_sampler(settings, str(path), args.frames, 1))
                pixels = render_views(decoded, settings, backbone.preprocessing)[0]
                tokens.append(computer(pixels)[0].reshape(args.frames, layout.tokens_per_frame, layout.dim))
        features = torch.stack(tokens)
        labels = torch.tensor([label for _, label in videos])
        features_s += time.perf_counter() - started
        started = time.perf_counter()
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(videos)))
        for batch in order.split(args.batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(probe(features[batch]).float(), labels[batch]).backward()
            optimizer.step()
        train_s += time.perf_counter() - started
    return features_s / args.online_epochs, train_s / args.online_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=4, help="demo videos per class (12 classes)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--views", type=int, default=4, help="augmented views cached per training clip")
    parser.add_argument("--probe", default="step")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--online-epochs", type=int, default=2, help="online epochs actually run")
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        make_demo_dataset(root / "videos", per_class=args.per_class, progress=False)
        annotations = root / "videos" / "annotations.csv"
        rows = [line.split(",") for line in annotations.read_text().splitlines()[1:]]
        classes = sorted({row[1] for row in rows})
        train = [(root / "videos" / row[0], classes.index(row[1])) for row in rows if row[2].strip() == "train"]
        feature_s, probe_s = online_epochs(args, train, len(classes))
        online_epoch = feature_s + probe_s
        print(
            f"online: {len(train)} training videos; an epoch {online_epoch:.1f} s (decode + augment + backbone "
            f"{feature_s:.1f} s, probe {probe_s:.2f} s), mean of {args.online_epochs} measured",
            flush=True,
        )

        started = time.perf_counter()
        extract(
            None,
            root / "cache",
            annotations=annotations,
            backbone="vit-tiny",
            weights="random",
            frames=args.frames,
            image_size=args.image_size,
            views=args.views,
            workers=0,
            progress=False,
        )
        extract_s = time.perf_counter() - started
        options = {"batch_size": args.batch_size, "early_stop": False, "progress": False, "data": "memory"}
        run = train_probe(root / "cache", args.probe, root / "run", epochs=max(EPOCHS), **options)
        cumulative = np.cumsum([record["train_s"] for record in run.history])
        print(
            f"cache: extract --views {args.views} {extract_s:.1f} s (every clip + {args.views} views of each "
            f"training clip); a training epoch {cumulative[-1] / len(cumulative):.2f} s",
            flush=True,
        )
        records: list[dict] = []
        configs = [
            make_config(args.probe, {**options, "epochs": max(EPOCHS), "lr": float(lr)})
            for lr in np.geomspace(1e-4, 1e-2, 16)
        ]
        train_stacked(root / "cache", configs, on_epoch=lambda member, record: records.append(record))
        stack_epochs = np.cumsum([r["train_s"] for r in records[:: len(configs)]])  # one record per member per epoch
    print(f"\n{'epochs':>8} {'online s':>10} {'cache s':>9} {'online / cache':>15}")
    for epochs in EPOCHS:
        online = epochs * online_epoch
        cache = extract_s + cumulative[epochs - 1]
        note = "" if epochs <= args.online_epochs else "  (online projected from the measured epoch)"
        print(f"{epochs:>8} {online:>10.1f} {cache:>9.1f} {online / cache:>14.1f}x{note}")
    for epochs in EPOCHS:
        online = epochs * (feature_s + stack_epochs[-1] / len(stack_epochs))
        cache = extract_s + stack_epochs[epochs - 1]
        print(
            f"K=16 {epochs:>3} {online:>10.1f} {cache:>9.1f} {online / cache:>14.1f}x  (online projected: measured "
            f"feature epoch + the stack's measured training epoch)"
        )
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
