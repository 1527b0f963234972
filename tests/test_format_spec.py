"""docs/shard-format.md is enough to read a cache: a reader written from the doc's rules alone (h5py, hdf5plugin,
numpy and the standard library; nothing from step_cache) reads every kind of cache ``extract`` writes (float16,
int8, augmented views, zstd- and gzip-compressed, test views), and finds every token, label and key the project's loader
(``open_shards``) hands out."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import GOOD_VIDEOS, TINY

from step_cache.cache.shards import open_shards
from step_cache.extraction.engine import extract
from step_cache.synthetic.videos import moving_square, write_video

# --- the reader: docs/shard-format.md, nothing else -----------------------------------------------------------

STRINGS = ("video", "split", "view_params")


def canonical_sha256(data: dict) -> str:
    """The doc's serialisation (settings_sha256, the seal): json.dumps with sort_keys=True and otherwise the
    defaults (", " and ": " separators, ASCII escapes), encoded as ASCII, sha256 in lowercase hex."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("ascii")).hexdigest()


def read_cache(directory: Path) -> dict:
    """Every row of a cache in the doc's row order: shards in the manifest's order, rows in stored order."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "step-cache-shards" and manifest["format_version"] in (1, 2, 3, 4, 5)
    if "manifest_sha256" in manifest:  # the seal: the same serialisation, of the manifest without the seal
        unsealed = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
        assert canonical_sha256(unsealed) == manifest["manifest_sha256"]
    if manifest.get("storage", {}).get("compression") in ("lz4", "zstd"):
        import hdf5plugin  # noqa: F401 - registers the Blosc filter with HDF5 before any read

    layout = manifest["extraction"]["tokens"]
    frames, per_frame = manifest["extraction"]["sampling"]["frames"], layout["cls_tokens"] + np.prod(layout["grid"])
    expected_settings = canonical_sha256(manifest["extraction"])
    columns: dict[str, list] = {}
    for record in manifest["shards"]:
        with h5py.File(directory / record["file"], "r") as shard:  # "file" is relative to the manifest's folder
            assert bool(shard.attrs["complete"]) and int(shard.attrs["num_clips"]) == record["clips"]
            assert shard.attrs["settings_sha256"] == expected_settings
            assert int(shard.attrs["format_version"]) <= manifest["format_version"]
            tokens = shard["tokens"][...]
            layer_axis = (len(layout["layers"]),) if "layers" in layout else ()  # version 5: (N, L, T, P, D)
            assert tokens.shape[1:] == (*layer_axis, frames, per_frame, layout["dim"])
            if manifest["storage"].get("cls_copy"):  # the CLS tokens once more, as stored
                cls = layout["cls_tokens"]
                np.testing.assert_array_equal(shard["cls"][...], tokens[..., :cls, :])
                if layout["dtype"] == "int8":
                    np.testing.assert_array_equal(shard["cls_scales"][...], shard["token_scales"][..., :cls])
            if layout["dtype"] == "int8":  # q * s in float32 (exact), rounded once to float16: what readers hand out
                scales = shard["token_scales"][...].astype(np.float32)
                tokens = (tokens.astype(np.float32) * scales[..., None]).astype(np.float16)
            columns.setdefault("tokens", []).append(tokens)
            for key in ("labels", "clip", "frame_indices", "num_frames", "short", *STRINGS, "view", "crop"):
                if key in shard:
                    values = shard[key][...]
                    if key in STRINGS:  # variable-length UTF-8: h5py returns bytes
                        values = np.array([value.decode("utf-8") for value in values], dtype=object)
                elif key in ("view", "crop"):  # no views (versions 1, 2) / no test views (before 5): 0 throughout
                    values = np.zeros(len(tokens), np.int32)
                else:
                    values = np.full(len(tokens), "", dtype=object)
                columns.setdefault(key, []).append(values)
    rows = {key: np.concatenate(parts) for key, parts in columns.items()}
    rows["class"] = [manifest["classes"][label] if label >= 0 else None for label in rows["labels"]]
    return {"manifest": manifest, **rows}


# --- the caches the tool writes -------------------------------------------------------------------------------

KINDS = {
    "float16": {},
    "int8": {"dtype": "int8"},
    "views": {"views": 2, "view_flip": True},
    "zstd": {"compression": "zstd"},
    "gzip-int8": {"compression": "gzip", "dtype": "int8"},
    "layers-int8": {"layers": "0,-1", "dtype": "int8"},  # version 5: a layer axis
}


@pytest.fixture(scope="module")
def videos(_video_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tree plus one video directly in the root: unlabelled (label -1)."""
    root = tmp_path_factory.mktemp("spec") / "videos"
    shutil.copytree(_video_tree, root)
    write_video(root / "loose.mp4", moving_square(num_frames=12, direction=1, seed=3))
    return root


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_reader_from_the_doc_reads_what_the_loader_reads(kind, videos, tmp_path):
    out = tmp_path / kind
    # Shards of ~10 kB: about one video each, so the row order across shards is exercised.
    extract(videos, out, **{**TINY, "clips": 2, "shard_size_mb": 0.01}, **KINDS[kind])
    ours, loader = read_cache(out), open_shards(out)
    manifest = ours["manifest"]
    assert len(manifest["shards"]) > 3
    tokens = loader.read_tokens(np.arange(len(loader)))
    assert ours["tokens"].dtype == tokens.dtype == np.dtype("float16")
    np.testing.assert_array_equal(ours["tokens"], tokens)  # bit for bit
    for key, theirs in (
        ("labels", loader.labels),
        ("video", loader.videos),
        ("clip", loader.clip_index),
        ("split", loader.splits),
        ("frame_indices", loader.frame_indices),
        ("num_frames", loader.num_frames),
        ("short", loader.short),
        ("view", loader.views),
        ("view_params", loader.view_params),
        ("crop", loader.crops),
    ):
        np.testing.assert_array_equal(ours[key], theirs, err_msg=key)
    assert list(loader.classes) == manifest["classes"]
    assert ours["class"].count(None) == 2 * (1 + KINDS[kind].get("views", 0))  # loose.mp4: 2 clips (x views)
    # source: every catalogue item tried (12 files + loose.mp4), each extracted or listed as a failure.
    assert manifest["source"]["finished"] is True and manifest["source"]["items"] == GOOD_VIDEOS + 3 + 1
    assert manifest["num_videos"] + len(manifest["failures"]) == manifest["source"]["items"]
    assert manifest["storage"] == {"compression": KINDS[kind].get("compression", "none"), "cls_copy": True}
    cls = manifest["extraction"]["tokens"]["cls_tokens"]
    np.testing.assert_array_equal(loader.read_tokens(np.arange(len(loader)), part="cls"), ours["tokens"][..., :cls, :])


def test_a_reader_from_the_doc_reads_test_views(videos, tmp_path):
    """Version 5: val/test videos as segments (``clip``) x crops (``crop``), frame-step sampling in the manifest."""
    good = sorted(p.relative_to(videos).as_posix() for p in videos.glob("slide_*/slide_*_[0-9].mp4"))
    splits = ["train", "val", "test"]
    lines = ["path,label,split"] + [f"{path},{path.split('/')[0]},{splits[i % 3]}" for i, path in enumerate(good)]
    (videos / "splits.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "test-views"
    extract(videos, out, annotations=videos / "splits.csv", **{**TINY, "shard_size_mb": 0.01},
            test_views="2x3", frame_step=2)  # fmt: skip
    ours, loader = read_cache(out), open_shards(out)
    manifest = ours["manifest"]
    assert manifest["format_version"] == 5 and manifest["extraction"]["test_views"] == {"segments": 2, "crops": 3}
    assert manifest["extraction"]["sampling"]["strategy"] == "frame-step"
    np.testing.assert_array_equal(ours["tokens"], loader.read_tokens(np.arange(len(loader))))
    for key, theirs in (("video", loader.videos), ("clip", loader.clip_index), ("crop", loader.crops),
                        ("split", loader.splits), ("frame_indices", loader.frame_indices)):  # fmt: skip
        np.testing.assert_array_equal(ours[key], theirs, err_msg=key)
    for video in set(ours["video"]):
        rows = ours["video"] == video
        tested = ours["split"][rows][0] in ("val", "test")
        # the doc's row order: segment-major, crop within segment; training videos keep their one clip
        expected = [(s, c) for s in range(2) for c in range(3)] if tested else [(0, 0)]
        assert list(zip(ours["clip"][rows].tolist(), ours["crop"][rows].tolist(), strict=True)) == expected


def test_compression_filters_are_the_documented_ones(videos, tmp_path):
    """tokens only: Blosc (HDF5 filter 32001; zstd = compressor code 5, level 3, byte shuffle) or deflate (1) at
    level 1 after the shuffle filter (2); the other datasets are stored unfiltered."""
    import hdf5plugin  # noqa: F401

    for compression in ("zstd", "gzip"):
        out = tmp_path / compression
        extract(videos, out, **TINY, compression=compression)
        with h5py.File(out / "shard-00000.h5", "r") as shard:
            plist = shard["tokens"].id.get_create_plist()
            filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
            if compression == "zstd":
                assert [(f[0], f[2][4:]) for f in filters] == [(32001, (3, 1, 5))]
            else:
                assert [(f[0], f[2]) for f in filters] == [(2, (2,)), (1, (1,))]
            assert shard["labels"].id.get_create_plist().get_nfilters() == 0
