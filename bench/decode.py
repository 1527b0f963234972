"""Decoder benchmark: which backend samples frames fastest, and do they agree?

On the same generated videos (H.264 .mp4 and VP9 .webm, as in SSv2; 240p, 480p and 1080p; short and long; a
textured background panning under a moving square, keyframe every 32 frames), for each installed backend:

  sparse  frames/s  16 frames at segment centres (what extract samples), decode_clips
  dense   frames/s  every frame, read in runs of 32 consecutive frames
  each on one core (one process, decoder threads 1: frames per CPU-second, undisturbed by other jobs), on all
  cores (one process per core, as extract's decode workers; wall clock), and dense with one process and the
  decoder's own threads (threads = cores; wall clock)
  max |Δ|           largest pixel difference to decord after resize and crop to 224 (8-bit levels)

then the extraction ratio per backend: end-to-end extract (vit-tiny, random weights, T = 16, 224 px) over the
backbone alone on the same frames. With a CUDA GPU the torchcodec-cuda backend joins, and the mean GPU
utilisation during each end-to-end run is printed.

    python bench/decode.py                                  # the default cases (no 1080p/240p long videos)
    python bench/decode.py --full                           # every codec x size x length
    python bench/decode.py --sizes 1080p --lengths long     # one corner of it
    python bench/decode.py --device cuda --extract-videos 256 --batch-size 256   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import av  # before decord: decord's bundled FFmpeg, loaded first, breaks PyAV's libvpx-vp9 encoder
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract import GpuUtilisation, backbone_only  # bench/extract.py, beside this script

from step_cache import extract
from step_cache.devices import resolve_device
from step_cache.extraction.decoders import DECODERS, decoder_spec, open_video
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.video import decode_clips
from step_cache.extras import MissingExtraError

SIZES = {"240p": (240, 428), "480p": (480, 854), "1080p": (1080, 1920)}
LENGTHS = {"short": 64, "long": 300}
CODECS = {"h264": ("mp4", "libx264"), "vp9": ("webm", "libvpx-vp9")}
PREPROCESSING = Preprocessing(crop=224, scale=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def write_textured(path: Path, frames: int, size: tuple[int, int], codec: str, seed: int = 0) -> Path:
    """A panning random texture (detail the encoder must spend bits on, like real footage) with a moving square."""
    height, width = size
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(tile, 8, 0), 8, 1)  # 8x8 blocks: compressible, yet not flat
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 32
        if codec == "libx264":
            stream.options = {"crf": "23", "preset": "veryfast"}
        else:  # VP9 at a real-time speed setting: the defaults take minutes per 1080p video
            stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        for t in range(frames):
            frame = texture[t % 8 : t % 8 + height, t % 16 // 2 : t % 16 // 2 + width].copy()
            side = height // 4
            top, left = (height - side) // 2, (t * width // frames) % (width - side)
            frame[top : top + side, left : left + side] = (255, 64, 0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _sparse(path: str, decoder: str, threads: int) -> int:
    decoded = decode_clips(path, 16, decoder=decoder) if threads == 1 else None
    if decoded is None:  # decode_clips opens with one thread; the threaded variant opens the source itself
        source = open_video(path, decoder, threads=threads)
        source.read(sorted(set(np.linspace(0, source.num_frames - 1, 16).round().astype(int).tolist())))
        source.close()
        return 16
    return len(decoded.frames)


def _dense(path: str, decoder: str, threads: int) -> int:
    source = open_video(path, decoder, threads=threads)
    total = source.num_frames
    for start in range(0, total, 32):
        source.read(list(range(start, min(total, start + 32))))
    source.close()
    return total


def _job(job: tuple[str, str, str, int]) -> int:
    mode, path, decoder, threads = job
    return (_sparse if mode == "sparse" else _dense)(path, decoder, threads)


def timed(mode: str, path: Path, decoder: str, threads: int = 1) -> float:
    """Frames/s in this process, after a sparse warm-up (imports, page cache). One decoder thread: frames per
    CPU-second of this process (time.process_time), which other jobs on a shared machine do not disturb; more
    threads: frames per wall-clock second (what the threads buy)."""
    _job(("sparse", str(path), decoder, threads))
    clock = time.process_time if threads == 1 else time.perf_counter
    started = clock()
    frames = _job((mode, str(path), decoder, threads))
    return frames / (clock() - started)


def timed_parallel(pool: mp.pool.Pool, processes: int, mode: str, path: Path, decoder: str) -> float:
    """Frames/s (wall clock) of ``processes`` decoding at once, one video each (one process per core, as
    extract's decode workers)."""
    pool.map(_job, [("sparse", str(path), decoder, 1)] * processes, chunksize=1)  # warm-up: imports the backend
    started = time.perf_counter()
    frames = sum(pool.map(_job, [(mode, str(path), decoder, 1)] * processes, chunksize=1))
    return frames / (time.perf_counter() - started)


def max_difference(path: Path, decoder: str) -> int:
    """Largest pixel difference to decord, after resize and crop to 224 (what the backbone is given)."""
    reference = PREPROCESSING.resize_and_crop(decode_clips(path, 16, decoder="decord").frames).astype(int)
    if decoder_spec(decoder).on_device:
        from step_cache.extraction.device_preprocess import resize_and_crop_tensor
        from step_cache.extraction.video import decode_clips_on_device

        frames = decode_clips_on_device(path, 16, 1, None, None, decoder, "cuda").frames
        pixels = resize_and_crop_tensor(PREPROCESSING, frames).cpu().numpy()
    else:
        pixels = PREPROCESSING.resize_and_crop(decode_clips(path, 16, decoder=decoder).frames)
    return int(np.abs(pixels.astype(int) - reference).max())


def installed_backends(device: torch.device) -> list[str]:
    names = []
    for name, spec in DECODERS.items():
        if spec.on_device and device.type != "cuda":
            continue
        try:
            decoder_spec(name)
        except MissingExtraError as error:
            print(f"  (skipped {name}: {error})")
            continue
        names.append(name)
    return names


# The default run: every codec and size, short videos, and long ones at 480p (SSv2-like); 1080p long videos and
# 240p long ones only with --full (or by naming --sizes/--lengths), to keep the default to minutes on 2 cores.
DEFAULT_CASES = [(codec, size, "short") for codec in CODECS for size in SIZES] + [
    (codec, "480p", "long") for codec in CODECS
]


def cases(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    if not (args.full or args.codecs or args.sizes or args.lengths):
        return sorted(DEFAULT_CASES, key=lambda case: (case[0], list(SIZES).index(case[1]), case[2] == "long"))
    return [
        (codec, size, length)
        for codec in args.codecs or CODECS
        for size in args.sizes or SIZES
        for length in args.lengths or LENGTHS
    ]


def _one_torch_thread() -> None:
    torch.set_num_threads(1)  # torchcodec's frame copies are torch ops: a decoder gets one core, as in extract


def decode_table(args: argparse.Namespace, root: Path, backends: list[str]) -> list[dict]:
    cores = os.cpu_count() or 1
    rows = []
    cpu_backends = [name for name in backends if not decoder_spec(name).on_device]
    threads = torch.get_num_threads()
    _one_torch_thread()
    with mp.get_context("spawn").Pool(cores, initializer=_one_torch_thread) as pool:
        for codec, size, length in cases(args):
            extension, encoder = CODECS[codec]
            path = write_textured(root / f"{codec}-{size}-{length}.{extension}", LENGTHS[length], SIZES[size], encoder)
            for name in backends:
                on_cpu = name in cpu_backends
                row = {"codec": codec, "size": size, "length": length, "frames": LENGTHS[length],
                       "backend": name, "mb": round(path.stat().st_size / 2**20, 2)}  # fmt: skip
                row["sparse_1"] = timed("sparse", path, name)
                row["sparse_all"] = timed_parallel(pool, cores, "sparse", path, name) if on_cpu else None
                row["dense_1"] = timed("dense", path, name)
                row["dense_all"] = timed_parallel(pool, cores, "dense", path, name) if on_cpu else None
                row["dense_threads"] = timed("dense", path, name, threads=cores) if on_cpu else None
                row["max_diff"] = max_difference(path, name)
                rows.append(row)
                print(_row_text(row), flush=True)
    torch.set_num_threads(threads)
    return rows


def _fps(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


HEADER = (
    "| codec | size | frames | backend | sparse 1 core (CPU s) | sparse all cores | dense 1 core (CPU s) "
    "| dense all cores | dense 1 proc threaded | max abs diff |"
)


def _row_text(row: dict) -> str:
    cells = [row["codec"], row["size"], str(row["frames"]), row["backend"]]
    cells += [_fps(row[key]) for key in ("sparse_1", "sparse_all", "dense_1", "dense_all", "dense_threads")]
    return "| " + " | ".join([*cells, str(row["max_diff"])]) + " |"


def extraction_ratio(args: argparse.Namespace, root: Path, backends: list[str]) -> list[dict]:
    """End-to-end / backbone-only frames/s per backend, on the same generated videos."""
    videos = root / "extract"
    videos.mkdir()
    for i in range(args.extract_videos):
        write_textured(videos / f"v{i:03d}.mp4", 120, SIZES["480p"], "libx264", seed=i)
    settings = argparse.Namespace(
        backbone="vit-tiny", weights="random", image_size=None, pool_patches=1, device=args.device, dtype="float16",
        frames=16, clips=1, batch_size=args.batch_size,
    )  # fmt: skip
    model_fps, _ = backbone_only(settings, sorted(videos.glob("*.mp4")))
    rows = []
    for name in backends:
        device = resolve_device(args.device)
        with GpuUtilisation(device) as utilisation:
            report = extract(
                videos, root / f"cache-{name}", backbone="vit-tiny", weights="random", frames=16,
                device=args.device, batch_size=args.batch_size, workers=args.workers, progress=False,
                overwrite=True, decoder=name,
            )  # fmt: skip
        row = {"backend": name, "backbone_only_fps": model_fps, "end_to_end_fps": report.frames_per_second,
               "ratio": report.frames_per_second / model_fps, "gpu_busy": utilisation.mean}  # fmt: skip
        busy = "" if row["gpu_busy"] is None else f", GPU busy {row['gpu_busy']:.0f} %"
        print(f"  {name:16s} end-to-end {row['end_to_end_fps']:7.1f} frames/s, backbone-only {model_fps:7.1f}: "
              f"ratio {row['ratio']:.2f}{busy}", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every codec x size x length (default: a subset)")
    parser.add_argument("--codecs", nargs="+", default=None, choices=list(CODECS))
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--lengths", nargs="+", default=None, choices=list(LENGTHS))
    parser.add_argument("--backends", nargs="+", default=None, help="default: every installed one")
    parser.add_argument("--device", default="cpu", help="backbone device for the extraction ratio")
    parser.add_argument("--extract-videos", type=int, default=8, help="480p H.264 videos for the ratio (0: skip)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    backends = args.backends or installed_backends(device)
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, PyAV {av.__version__}; backends: {', '.join(backends)}")
    print(f"load average before: {os.getloadavg()[0]:.1f}; frames/s (1 core: per CPU-second of the process; others: "
          "wall clock); max abs diff: 8-bit levels after resize+crop to 224, against decord\n")  # fmt: skip
    print(HEADER)
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = decode_table(args, Path(tmp), backends)
        ratios = []
        if args.extract_videos:
            print(f"\nextraction ratio: vit-tiny (random weights), T=16, 224 px, {args.extract_videos} 480p H.264 "
                  f"videos of 120 frames, device {device}")  # fmt: skip
            ratios = extraction_ratio(args, Path(tmp), backends)
    if args.json:
        args.json.write_text(json.dumps({"decode": rows, "extraction": ratios}, indent=2))


if __name__ == "__main__":
    main()
