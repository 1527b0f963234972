"""Writing the demo benchmark to disk: videos in class folders, an annotation CSV with a split, the pairs file.

Layout (one root for everything, so both ``discover_videos(DIR)`` and ``read_annotations(DIR/annotations.csv,
DIR)`` work)::

    DIR/<class>/<class>_000.mp4 ...
    DIR/annotations.csv     path,label,split   (paths relative to DIR; split train / val / test)
    DIR/pairs.txt           mirrored class pairs, class_a,class_b
    DIR/benchmark.json      the settings that produced it
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from step_cache.catalog import VideoItem, write_annotations, write_pairs
from step_cache.demo_dataset.actions import DEFAULT_KINDS, KINDS
from step_cache.demo_dataset.scene import BenchmarkError, SceneConfig, class_table, render_clip
from step_cache.interface import switch
from step_cache.synthetic.videos import write_video

log = logging.getLogger(__name__)

METADATA_NAME = "benchmark.json"
ANNOTATIONS_NAME = "annotations.csv"
PAIRS_NAME = "pairs.txt"
_SPLIT_STREAM = 1_000_003  # keeps the split's random draws apart from the clips'


@dataclass(frozen=True)
class DemoDataset:
    root: Path  # the videos root: class folders, annotations.csv and pairs.txt live here
    annotations_path: Path
    pairs_path: Path
    classes: list[str]  # kind order: each pair's forward class, then its backward class
    pairs: list[tuple[str, str]]
    order_free: list[str]
    items: list[VideoItem]
    seconds: float  # generation time


def parse_size(text: str) -> tuple[int, int]:
    """``"112x96"`` -> (112, 96), width first."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise BenchmarkError(f"size must look like WIDTHxHEIGHT (e.g. 112x112), got {text!r}")
    return int(parts[0]), int(parts[1])


def clip_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The random source of clip ``index`` of ``label``: stable whatever other classes or counts are chosen."""
    return np.random.default_rng([seed, zlib.crc32(label.encode()), index])


def stratified_split(
    labels: list[str], per_class: int, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> dict[tuple[str, int], str]:
    """(label, index) -> "train", "val" or "test": the same number of val and of test clips in every class, drawn
    from a per-class seeded permutation (test first, then val), so a seed always gives the same split."""
    counts = []
    for fraction in (test_fraction, val_fraction):
        count = round(per_class * fraction)
        counts.append(max(count, 1) if fraction > 0 else 0)
    n_test, n_val = counts
    split = {}
    for label in labels:
        order = np.random.default_rng([seed, zlib.crc32(label.encode()), _SPLIT_STREAM]).permutation(per_class)
        test, val = set(order[:n_test].tolist()), set(order[n_test : n_test + n_val].tolist())
        split.update({(label, i): "test" if i in test else "val" if i in val else "train" for i in range(per_class)})
    return split


def _check_settings(per_class, num_frames, size, fps, crf, val_fraction, test_fraction) -> None:
    width, height = size
    if per_class < 1:
        raise BenchmarkError(f"per_class must be at least 1, got {per_class}")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise BenchmarkError(f"{name} must be in [0, 1), got {fraction}")
    held_out = [fraction for fraction in (val_fraction, test_fraction) if fraction > 0]
    if held_out:
        needed = len(held_out) + 1  # one training video, plus one for each held-out split
        held = sum(max(round(per_class * fraction), 1) for fraction in held_out)
        if per_class < needed or held >= per_class:
            splits = "train/val/test" if len(held_out) == 2 else "train/val" if val_fraction else "train/test"
            raise BenchmarkError(
                f"a {splits} split of val_fraction={val_fraction}, test_fraction={test_fraction} leaves no training "
                f"video: it needs at least {max(needed, held + 1)} videos per class, got per_class={per_class}"
            )
    if num_frames < 4:
        raise BenchmarkError(
            f"frames must be at least 4 (an action needs a start, a middle and an end), got {num_frames}"
        )
    if width < 32 or height < 32:
        raise BenchmarkError(f"size must be at least 32x32, got {width}x{height}")
    if width % 2 or height % 2:
        raise BenchmarkError(f"size must have even width and height (H.264 yuv420p), got {width}x{height}")
    if fps < 1:
        raise BenchmarkError(f"fps must be at least 1, got {fps}")
    if not 0 <= crf <= 51:
        raise BenchmarkError(f"crf must be between 0 and 51, got {crf}")


def _prepare_directory(root: Path, classes: list[str], overwrite: bool) -> None:
    """Refuse to mix with other files; with ``overwrite``, remove only what an earlier run of ours wrote."""
    if not root.exists() or not any(root.iterdir()):
        return
    metadata = root / METADATA_NAME
    if not overwrite:
        raise BenchmarkError(f"{root}: directory is not empty; pass {switch('overwrite')} to replace a demo")
    if not metadata.is_file():
        raise BenchmarkError(f"{root}: not empty and has no {METADATA_NAME}, so it is not a demo; refusing to delete")
    try:
        previous = list(json.loads(metadata.read_text(encoding="utf-8")).get("classes", []))
    except (json.JSONDecodeError, AttributeError, TypeError) as error:
        raise BenchmarkError(f"{metadata}: unreadable ({error}); refusing to delete") from None
    known = {label for kind in KINDS.values() for label in kind.classes}  # never delete anything else
    for name in known.intersection([*previous, *classes]):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    for name in (METADATA_NAME, ANNOTATIONS_NAME, PAIRS_NAME):
        (root / name).unlink(missing_ok=True)


def _check_readable(num_frames: int, size: tuple[int, int], fps: int, crf: int) -> None:
    """Write a probe video and read it back as the extractor will (decord), so that a size decord mangles fails
    now with a clear message rather than after generation. (decord 0.6 returns 4 channels or raises for some
    widths, e.g. 48 and 72 pixels.)"""
    import decord  # the project's video reader

    width, height = size
    with tempfile.TemporaryDirectory() as folder:
        path = write_video(Path(folder) / "probe.mp4", np.zeros((num_frames, height, width, 3), np.uint8), fps, crf)
        try:
            reader = decord.VideoReader(str(path))
            shape = (len(reader), *reader.get_batch([0]).asnumpy().shape[1:])
        except Exception as error:  # noqa: BLE001 - decord raises its own error types
            shape = f"an error ({str(error).splitlines()[0]})"
    if shape != (num_frames, height, width, 3):
        raise BenchmarkError(
            f"decord reads a {width}x{height} video of {num_frames} frames back as {shape}; choose another size"
        )


def make_demo_dataset(
    out_dir: str | Path,
    per_class: int = 20,
    seed: int = 0,
    num_frames: int = 33,
    size: tuple[int, int] = (112, 112),
    fps: int = 16,
    crf: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    difficulty: float = 0.5,
    scene: SceneConfig | None = None,
    kinds: tuple[str, ...] | list[str] = DEFAULT_KINDS,
    overwrite: bool = False,
    progress: bool = True,
) -> DemoDataset:
    """Generate the benchmark of nearly symmetric actions under ``out_dir`` (layout in the module doc).

    By default 60 % of each class's videos train, 20 % validate (the checkpoint is chosen there) and 20 % form a
    test split that nothing is selected on, so the figures a run reports are not the ones it was selected by.

    ``size`` is (width, height); ``difficulty`` in [0, 1] sets camera jitter, distractors, background texture and
    action length together (see ``SceneConfig.from_difficulty``); ``scene`` overrides it knob by knob. ``crf`` is
    0 (lossless) by default: x264's quality decays after each key frame, which would leak frame order, and lossless
    video decodes to the very same pixels on every run (x264's lossy output is not always bit-reproducible).

    ``num_frames`` is odd by default, and should be: extraction samples frame ⌊(i + ½)·N/T⌋ of N frames, and a
    mirrored clip is its partner played backwards (frame f ↦ N − 1 − f). For odd N no (i + ½)·N/T is an integer,
    whatever T (and clips per video), so the sampled frames of a clip and of its reverse are the same frames in
    reverse order; for even N they are shifted by one frame for some T (at N = 32, T = 4: frames 4, 12, 20, 28 of
    one against 3, 11, 19, 27 of the process behind the other), which an order-blind probe can exploit.
    """
    _check_settings(per_class, num_frames, size, fps, crf, val_fraction, test_fraction)
    if num_frames % 2 == 0:
        log.warning(
            "make-demo: %d frames per video is even, so the frames sampled from a clip and from its reverse differ "
            "(segment centres are not symmetric under reversal): order-blind probes can then tell mirrored classes "
            "apart. Use an odd number of frames (e.g. %d) for a benchmark where they cannot.", num_frames,
            num_frames + 1,
        )  # fmt: skip
    if scene is None:
        scene = SceneConfig.from_difficulty(difficulty)
    else:
        difficulty = None  # the explicit knobs win; record only those
    scene.check()
    table = class_table(kinds)
    classes = list(table)
    _check_readable(num_frames, size, fps, crf)
    root = Path(out_dir)
    _prepare_directory(root, classes, overwrite)
    root.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    split = stratified_split(classes, per_class, val_fraction, seed, test_fraction)
    items = []
    jobs = [(label, i) for label in classes for i in range(per_class)]
    for label, i in tqdm(jobs, desc="make-demo", unit="video", disable=not progress):
        clip = render_clip(label, clip_rng(seed, label, i), num_frames, size, scene, kinds)
        relative = f"{label}/{label}_{i:03d}.mp4"
        write_video(root / relative, clip.frames, fps=fps, crf=crf)
        items.append(VideoItem(relative, label, split[(label, i)]))

    pairs = [kind.classes for kind, backwards in table.values() if kind.mirrored and not backwards]
    order_free = [label for label, (kind, _) in table.items() if not kind.mirrored]
    annotations_path = write_annotations(root / ANNOTATIONS_NAME, items)
    header = (
        "Mirrored class pairs of the step-cache demo benchmark: every clip of the second class is a clip of the\n"
        "first class's process played backwards. Order-free classes: " + (", ".join(order_free) or "none")
    )
    pairs_path = write_pairs(root / PAIRS_NAME, pairs, header=header)
    metadata = {
        "generator": "step_cache.demo_dataset",
        "format": 1,
        "seed": seed,
        "per_class": per_class,
        "num_frames": num_frames,
        "size": list(size),
        "fps": fps,
        "crf": crf,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "difficulty": difficulty,
        "scene": asdict(scene),
        "kinds": list(kinds),
        "classes": classes,
        "pairs": [list(pair) for pair in pairs],
        "order_free": order_free,
    }
    (root / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - start
    return DemoDataset(
        root, annotations_path, pairs_path, classes, [tuple(p) for p in pairs], order_free, items, seconds
    )
