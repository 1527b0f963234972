"""What ``compact --project K`` keeps of a cache's tokens, per token kind, on clips the PCA never saw.

For each projected cache (written by ``compact SRC --out DST --project K``) this reads DST/projection.npy (W, mean)
and SRC's tokens of the held-out clips (splits val and test: the PCA is fitted on training clips only), in float32,
and prints per token kind (per-frame CLS tokens, patch tokens):

  spread      RMS distance of the kind's tokens to that kind's own mean, relative to the patches' (how much the
              kind varies from clip to clip and frame to frame)
  error       relative error of the reconstruction x_hat = ((x - mean) @ W.T) @ W + mean, against the kind's own
              spread: sqrt(sum |x - x_hat|^2 / sum |x - mean_kind|^2) (above 1: the projection loses more than the
              kind's tokens differ from one another)
  Δ error     the same relative error for a token's change from one frame to the next (x_t+1 - x_t, the same
              token position): what frame-order probes such as STEP rest on
  cos         mean cosine similarity between a token and its reconstruction x_hat, both taken about the kind's mean
  top-8 share mean share of a projected token's squared norm in its first 8 coordinates: how much the leading
              components dominate the mean and variance a probe's LayerNorm computes over the K coordinates
              (for the raw tokens, the same share is given for 8 of the D features chosen as the 8 largest-variance
              ones, for comparison)

The projection alone is measured (SRC's float tokens, not DST's int8 values).

    python bench/projection.py --source d48/shards --projected d48-int8-p128 d48-int8-p64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from step_cache.cache.projection import PROJECTION_NAME
from step_cache.cache.shards import open_shards


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the cache the projected ones were compacted from")
    parser.add_argument("--projected", type=Path, nargs="+", required=True, help="caches written with --project K")
    parser.add_argument("--clips", type=int, default=200, help="at most this many held-out clips are read")
    return parser.parse_args()


def held_out_tokens(source: Path, clips: int) -> tuple[np.ndarray, int]:
    """(n, T, P, D) float32 tokens of up to ``clips`` val/test clips, and the number of CLS tokens per frame."""
    shards = open_shards(source)
    held_out = np.flatnonzero(np.isin(shards.splits.astype(str), ["val", "test"]))[:clips]
    if len(held_out) == 0:
        raise SystemExit(f"{source}: no val or test clips to measure on")
    return shards.read_tokens(held_out, dtype=np.float32), shards.layout.cls_tokens


def spread(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))


def kind_figures(tokens: np.ndarray, components: np.ndarray, mean: np.ndarray) -> dict[str, float]:
    """tokens: (n, T, p, D) tokens of one kind."""
    delta = np.diff(tokens, axis=1).reshape(-1, tokens.shape[-1])
    delta_error = np.sqrt(np.sum((delta - delta @ components.T @ components) ** 2) / np.sum(delta**2))
    x = tokens.reshape(-1, tokens.shape[-1])
    y = (x - mean) @ components.T
    x_hat = y @ components + mean
    centred = x - x.mean(axis=0)
    centred_hat = x_hat - x.mean(axis=0)
    error = np.sqrt(np.sum((x - x_hat) ** 2) / np.sum(centred**2))
    cos = np.sum(centred * centred_hat, axis=1) / (
        np.linalg.norm(centred, axis=1) * np.linalg.norm(centred_hat, axis=1) + 1e-12
    )
    top8 = np.sum(y[:, :8] ** 2, axis=1) / np.sum(y**2, axis=1)
    raw = x - mean
    largest = np.argsort(raw.var(axis=0))[::-1][:8]
    raw8 = np.sum(raw[:, largest] ** 2, axis=1) / np.sum(raw**2, axis=1)
    return {
        "error": float(error),
        "delta": float(delta_error),
        "cos": float(cos.mean()),
        "top8": float(top8.mean()),
        "raw8": float(raw8.mean()),
    }


def main() -> None:
    args = parse_args()
    tokens, cls = held_out_tokens(args.source, args.clips)
    dim = tokens.shape[-1]
    kinds = {"CLS": tokens[:, :, :cls], "patches": tokens[:, :, cls:]}
    print(f"source {args.source}: {tokens.shape[0]} held-out clips, {tokens.shape[1:]} (T, P, D) each")
    spreads = {
        kind: spread(x.reshape(-1, dim)) / spread(kinds["patches"].reshape(-1, dim)) for kind, x in kinds.items()
    }
    print(
        f"{'cache':>28} {'K':>4} {'kind':>8} {'spread':>7} {'error':>7} {'Δ error':>7} {'cos':>7} "
        f"{'top-8 share':>12} {'raw top-8':>9}"
    )
    for directory in args.projected:
        array = np.load(directory / PROJECTION_NAME)
        components, mean = array[:-1], array[-1]
        for kind, x in kinds.items():
            f = kind_figures(x, components, mean)
            print(
                f"{directory.name:>28} {len(components):>4} {kind:>8} {spreads[kind]:>7.2g} "
                f"{f['error']:>7.3f} {f['delta']:>7.3f} "
                f"{f['cos']:>7.3f} {f['top8']:>12.3f} {f['raw8']:>9.3f}"
            )


if __name__ == "__main__":
    main()
