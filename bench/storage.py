"""Storage benchmark: bytes per clip and read speed for each shard compression and patch pooling.

Extracts a small real cache (generated videos, a ViT at 224 px), then rewrites its clips with each option and
measures, with a warm page cache: bytes per clip, write MB/s, random single-clip reads (GB/s of decoded tokens)
and whole-shard sequential reads.

    python bench/storage.py --clips 48
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from step_cache import extract, open_shards
from step_cache.cache.manifest import Manifest, TokenLayout, settings_hash, write_manifest
from step_cache.cache.shards import ClipRecord, ShardWriter, shard_name
from step_cache.synthetic.videos import moving_square, write_video


def pool_patches(tokens: np.ndarray, grid: tuple[int, int], pool: int) -> np.ndarray:
    """Average pool x pool patch neighbourhoods, as extract --pool-patches does (CLS kept first)."""
    if pool == 1:
        return tokens
    n, t, _, d = tokens.shape
    h, w = grid
    patches = tokens[:, :, 1:].astype(np.float32).reshape(n, t, h, w, d)
    hp, wp = -(-h // pool), -(-w // pool)
    padded = np.full((n, t, hp * pool, wp * pool, d), np.nan, dtype=np.float32)
    padded[:, :, :h, :w] = patches
    pooled = np.nanmean(padded.reshape(n, t, hp, pool, wp, pool, d), axis=(3, 5))
    return np.concatenate([tokens[:, :, :1].astype(np.float32), pooled.reshape(n, t, hp * wp, d)], axis=2)


def write_variant(directory: Path, source, tokens: np.ndarray, grid, dtype: str, compression: str) -> float:
    directory.mkdir(parents=True)
    layout = TokenLayout(cls_tokens=1, grid=grid, dim=tokens.shape[-1], dtype=dtype)
    manifest = Manifest(
        extraction={**source.manifest.extraction, "tokens": layout.to_dict()},
        classes=source.classes,
        storage={"compression": compression},
    )
    started = time.perf_counter()
    writer = ShardWriter(
        directory, shard_name(0), layout, tokens.shape[1], compression, settings=settings_hash(manifest.extraction)
    )
    for i in range(len(tokens)):
        writer.append(
            ClipRecord(
                tokens[i].astype(dtype),
                int(source.labels[i]),
                str(source.videos[i]),
                0,
                "",
                source.frame_indices[i],
                int(source.num_frames[i]),
                False,
            )
        )
    manifest.shards.append(writer.finish())
    seconds = time.perf_counter() - started
    write_manifest(directory, manifest)
    return seconds


def read_speeds(directory: Path, repeats: int) -> tuple[float, float]:
    shards = open_shards(directory)
    order = np.random.default_rng(0).permutation(len(shards))
    shards.read_tokens(order[:4])  # open handles, warm caches
    started = time.perf_counter()
    for _ in range(repeats):
        for index in order:
            shards.read_tokens([index])
    random_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(repeats):
        shards.read_shard_tokens(0)
    sequential_seconds = time.perf_counter() - started
    total = shards.tokens_nbytes * repeats / 1e9
    return total / random_seconds, total / sequential_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.clips):
            write_video(root / "videos" / "c" / f"{i:03d}.mp4", moving_square(48, (240, 320), 1 - 2 * (i % 2), seed=i))
        extract(
            root / "videos", root / "base", backbone=args.backbone, weights="random", frames=args.frames, progress=False
        )
        source = open_shards(root / "base")
        base_tokens = source.read_tokens(range(len(source)))
        grid = source.layout.grid
        variants = [("float16", 1, c) for c in ("none", "gzip", "lz4", "zstd")]
        variants += [("float16", 2, "none"), ("float16", 4, "none"), ("float32", 1, "none")]
        for dtype, pool, compression in variants:
            tokens = pool_patches(base_tokens, grid, pool)
            pooled_grid = (-(-grid[0] // pool), -(-grid[1] // pool))
            directory = root / f"{dtype}-pool{pool}-{compression}"
            seconds = write_variant(directory, source, tokens, pooled_grid, dtype, compression)
            size = sum(p.stat().st_size for p in directory.glob("shard-*.h5"))
            random_gbs, sequential_gbs = read_speeds(directory, args.repeats)
            raw = tokens[:1].astype(dtype).nbytes
            rows.append(
                {
                    "dtype": dtype,
                    "pool": pool,
                    "compression": compression,
                    "tokens_per_frame": tokens.shape[2],
                    "bytes_per_clip": round(size / len(tokens)),
                    "vs_raw": round(size / len(tokens) / raw, 3),
                    "write_mb_s": round(size / seconds / 1e6, 1),
                    "random_read_gb_s": round(random_gbs, 2),
                    "sequential_read_gb_s": round(sequential_gbs, 2),
                }
            )
    print(
        f"{args.clips} clips of {args.backbone} tokens, T={args.frames}, D={base_tokens.shape[-1]} "
        f"(warm page cache; GB/s of decoded tokens)"
    )
    header = (
        f"{'dtype':8} {'pool':>4} {'compression':>11} {'P':>4} {'KiB/clip':>9} {'vs raw':>7} "
        f"{'write MB/s':>10} {'random GB/s':>11} {'seq GB/s':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['dtype']:8} {r['pool']:>4} {r['compression']:>11} {r['tokens_per_frame']:>4} "
            f"{r['bytes_per_clip'] / 1024:>9.0f} {r['vs_raw']:>7.3f} {r['write_mb_s']:>10.1f} "
            f"{r['random_read_gb_s']:>11.2f} {r['sequential_read_gb_s']:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
