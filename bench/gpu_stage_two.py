"""bench/gpu.py's stage-two sections: token reads four ways, train_probe with the tokens on the device vs in memory,
stacked steps K = 16 vs K = 1 with their sync count, TF32 on and off."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_common import GB, Timer, device_of, sig, timed

from step_cache.host_traffic import HostTraffic


def _token_cache(args: argparse.Namespace, directory: Path) -> Path:
    from step_cache.synthetic.tokens import write_token_cache

    grid, dim, per_class = ((2, 2), 32, 10) if args.small else ((16, 16), 384, 256)
    write_token_cache(
        directory, task="static", num_classes=4, videos_per_class=per_class, frames=4 if args.small else 16,
        grid=grid, dim=dim, val_every=5, clips_per_shard=256,
    )  # fmt: skip
    return directory


def tokens(args: argparse.Namespace) -> dict[str, Any]:
    from step_cache.cache.shards import open_shards
    from step_cache.training.streaming import StreamingTokens
    from step_cache.training.token_data import InMemoryTokens, batch_plan, select_tokens

    device = device_of(args)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = open_shards(_token_cache(args, Path(tmp) / "cache"))
        selection = select_tokens(shards.layout)
        everything = np.arange(len(shards))
        memory = InMemoryTokens(shards, everything, selection, shards.labels)
        plan = batch_plan(everything, 16 if args.small else 64, shuffle=True)
        nbytes = sum(memory.tokens[memory.row[b]].nbytes for b in plan)
        gather_s = timed(lambda: [memory.tokens[memory.row[b]] for b in plan])
        figures["numpy_gather_gb_s"] = sig(nbytes / gather_s / GB)
        batches = [torch.from_numpy(memory.tokens[memory.row[b]]) for b in plan]
        for name, prepare in (("pageable", lambda t: t), ("pinned", lambda t: t.pin_memory())):
            if device.type != "cuda":
                figures[f"{name}_copy_gb_s"] = None
                continue
            ready = [prepare(b) for b in batches]
            with Timer(device) as timer:
                for batch in ready:
                    batch.to(device, non_blocking=True)
            figures[f"{name}_copy_gb_s"] = sig(nbytes / timer.seconds / GB)
        for readers in sorted({4, max(1, (os.cpu_count() or 2) - 2)}):
            source = StreamingTokens(shards, selection, shards.labels, workers=readers)
            list(source.batches(plan[:1]))  # start the readers
            figures[f"streaming_{readers}_readers_gb_s"] = sig(
                nbytes / timed(lambda s=source: list(s.batches(plan))) / GB
            )
            source.close()
    return figures


def train(args: argparse.Namespace) -> dict[str, Any]:
    from step_cache.training.trainer import train_probe

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = _token_cache(args, Path(tmp) / "cache")
        for data in ("device", "memory"):
            result = train_probe(
                cache, "step", Path(tmp) / data, epochs=3, batch_size=16 if args.small else 64, data=data,
                device=args.device, progress=False, early_stop=False,
            )  # fmt: skip
            best = max(result.history[1:], key=lambda record: record["clips_per_s"])
            figures[data] = {
                "clips_per_s": round(best["clips_per_s"], 1),
                "data_wait_share": round(best["data_wait_s"] / best["train_s"], 4),
                "test_top1": result.metrics.get("top1"),
            }
    return figures


def _stacked_step(members: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from step_cache.probes import build_probe
    from step_cache.training.stacking.adamw import StackedAdamW
    from step_cache.training.stacking.members import StackedProbes
    from step_cache.training.stacking.stacked_run import member_losses

    frames, tokens_per_frame, dim, batch = (4, 5, 32, 8) if args.small else (16, 257, 768, 64)
    probes = [
        build_probe("step", dim=dim, num_classes=10, frames=frames, tokens_per_frame=tokens_per_frame, cls_index=0)
        for _ in range(members)
    ]
    stack = StackedProbes([p.to(device) for p in probes])
    optimizer = StackedAdamW(stack.params, lr=[1e-3] * members, weight_decay=[0.05] * members,
                             warmup_steps=[0] * members, clip_grad=[1.0] * members, total_steps=100)  # fmt: skip
    smoothing = torch.zeros(members, device=device)
    x = torch.randn(batch, frames, tokens_per_frame, dim, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        losses = member_losses(stack(x).float(), y, smoothing)
        stack.zero_grad()
        losses.sum().backward()
        optimizer.clip_gradients(stack.params)
        optimizer.step(stack.params)

    step()
    with HostTraffic() as traffic:
        step()
    steps = 2 if args.small else 20
    with Timer(device) as timer:
        for _ in range(steps):
            step()
    return {"step_ms": round(1000 * timer.seconds / steps, 3), "syncs": len(traffic.syncs),
            "host_tensors": len(traffic.host_tensors)}  # fmt: skip


def stacked(args: argparse.Namespace) -> dict[str, Any]:
    device = device_of(args)
    one, sixteen = _stacked_step(1, args, device), _stacked_step(16, args, device)
    return {"k1": one, "k16": sixteen, "k16_over_k1": round(sixteen["step_ms"] / one["step_ms"], 2), "goal": "<= 2"}


def tf32(args: argparse.Namespace) -> dict[str, Any]:
    from step_cache.probes import build_probe
    from step_cache.training.inference import autocast, tf32_matmuls

    device = device_of(args)
    frames, tokens_per_frame, dim, batch = (4, 5, 32, 8) if args.small else (16, 257, 768, 64)
    torch.manual_seed(0)
    probe = build_probe("step", dim=dim, num_classes=10, frames=frames, tokens_per_frame=tokens_per_frame, cls_index=0)
    probe = probe.to(device)
    x = torch.randn(batch, frames, tokens_per_frame, dim, device=device)
    figures: dict[str, Any] = {"cuda": device.type == "cuda"}
    logits = {}
    for enabled in (False, True):  # through the library's switch (train-probe --tf32), which restores the mode
        with tf32_matmuls(device, enabled):
            logits[enabled] = probe(x).detach().float()
            steps = 3 if args.small else 20
            with Timer(device) as timer:
                for _ in range(steps):
                    probe(x).sum().backward()
            figures[f"step_ms_tf32_{'on' if enabled else 'off'}"] = round(1000 * timer.seconds / steps, 3)
    with tf32_matmuls(device, False), autocast(device, True):  # the bound TF32 is judged by: bf16 autocast's error
        bf16 = probe(x).detach().float()
    figures["max_logit_difference_bf16_autocast"] = float((bf16 - logits[False]).abs().max())
    figures["max_logit_difference"] = float((logits[True] - logits[False]).abs().max())
    if device.type != "cuda":
        figures["note"] = "TF32 and bf16 autocast are CUDA modes here: on the CPU every run is float32 (differences 0)"
    else:  # TF32 keeps 10 mantissa bits to bf16's 7: its error should be well inside autocast's
        figures["tf32_within_bf16_bound"] = (
            figures["max_logit_difference"] <= figures["max_logit_difference_bf16_autocast"]
        )
    return figures
