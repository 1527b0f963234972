"""What V-JEPA 2's deeper attentive probe (``--probe attentive --depth N``) costs per training step against depth 1.

Depth 1 pools with one query (O(T·P·D) per head on the token side, docs/step.md); each further block is a full
self-attention over all T·P tokens (O((T·P)²·D) plus 12·D² per token). This times one training step (forward,
cross-entropy, backward) of each depth on the same random tokens (B, T, P, D), alternating the depths so that a
shared machine's load falls on both alike, and prints the median milliseconds and the ratio to depth 1.

    python bench/attentive_depth.py --depths 1,2,4 --dim 192 --frames 8 --tokens 197 --batch 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from step_cache.probes import build_probe, count_parameters


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="1,2,4", help="comma-separated depths; the first is the baseline")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=197, help="tokens per frame (P)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per depth (after one warm-up step)")
    return parser.parse_args()


def step_seconds(probe: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    start = time.perf_counter()
    F.cross_entropy(probe(tokens), labels).backward()
    probe.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    shape = {"dim": args.dim, "num_classes": args.classes, "frames": args.frames, "tokens_per_frame": args.tokens}
    probes = {depth: build_probe("attentive", **shape, cls_index=0, depth=depth) for depth in depths}
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(args.batch, args.frames, args.tokens, args.dim, generator=generator)
    labels = torch.randint(args.classes, (args.batch,), generator=generator)
    times: dict[int, list[float]] = {depth: [] for depth in depths}
    for depth in depths:
        step_seconds(probes[depth], tokens, labels)  # warm-up
    for _ in range(args.repeats):
        for depth in depths:
            times[depth].append(step_seconds(probes[depth], tokens, labels))
    base = statistics.median(times[depths[0]])
    print(f"B={args.batch} T={args.frames} P={args.tokens} D={args.dim}, {torch.get_num_threads()} threads")
    for depth in depths:
        median = statistics.median(times[depth])
        parameters = count_parameters(probes[depth], exclude_head=True)
        print(f"depth {depth}: {1000 * median:8.1f} ms/step  x{median / base:5.2f}  {parameters:,} parameters")


if __name__ == "__main__":
    main()
