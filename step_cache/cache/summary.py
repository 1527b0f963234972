"""A readable summary of a shard directory (what ``step-cache inspect`` prints)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from step_cache.cache.shards import open_shards


def summarize_cache(directory: str | Path) -> dict[str, Any]:
    """Counts and settings of a cache, as plain data (JSON-serialisable)."""
    with open_shards(directory, check=False) as shards:  # metadata only: verify checks the bytes
        manifest = shards.manifest
        clean = shards.views == 0  # counts of clips are of clean views; augmented views are counted apart
        labels = Counter(int(label) for label in shards.labels[clean])
        augmented = Counter(str(video) for video in shards.videos[~clean])  # view rows per video
        views_per_video = Counter(augmented.get(str(v), 0) // manifest.clips_per_video for v in set(shards.videos))
        short = sorted(set(shards.videos[shards.short & clean].tolist()))
        return {
            "directory": str(directory),
            "format_version": manifest.to_dict()["format_version"],
            "backbone": manifest.extraction["backbone"],
            "weights": manifest.extraction["weights"],
            "frames": manifest.frames,
            "clips_per_video": manifest.clips_per_video,
            "tokens": manifest.layout.to_dict(),
            "preprocessing": manifest.extraction["preprocessing"],
            "decoder": manifest.decoder,  # decord when the manifest names none (caches before pluggable decoders)
            "videos": manifest.num_videos,
            "clips": int(clean.sum()),
            "view_clips": int((~clean).sum()),
            "views": manifest.extraction.get("views"),
            "test_views": manifest.extraction.get("test_views"),
            "sampling": manifest.extraction["sampling"],
            "views_per_video": {int(k): v for k, v in sorted(views_per_video.items())},
            "short_videos": len(short),
            "short_video_names": short,
            "bytes": sum(record.bytes for record in manifest.shards),
            "shards": len(manifest.shards),
            "classes": {name: labels.get(i, 0) for i, name in enumerate(manifest.classes)},
            "unlabelled_clips": labels.get(-1, 0),
            "splits": dict(Counter(split or "(none)" for split in shards.splits[clean])),
            "pairs": [list(pair) for pair in manifest.pairs],
            "failures": [{"video": f.video, "reason": f.reason} for f in manifest.failures],
            "warnings": [{"video": w.video, "reason": w.reason} for w in manifest.warnings],
            "compacted_from": manifest.source.get("compacted_from"),
            "projection": manifest.extraction["tokens"].get("projection"),
            "cls_copy": bool(manifest.storage.get("cls_copy", False)),
        }


_LISTED = 20  # videos named per list; --json has them all


def format_summary(summary: dict[str, Any]) -> str:
    tokens = summary["tokens"]
    weights = summary["weights"]
    weight_text = weights["source"] + (
        f" seed {weights['seed']}" if "seed" in weights else f" sha256 {weights.get('sha256', '')[:12]}"
    )
    lines = [
        f"{summary['directory']}  (shard format v{summary['format_version']})",
        f"  backbone   {summary['backbone']['name']} = timm {summary['backbone']['timm_model']}, weights {weight_text}",
        f"  sampling   {summary['frames']} frames{_step_text(summary.get('sampling', {}))} x "
        f"{summary['clips_per_video']} clip(s) per video{_test_views_text(summary.get('test_views'))}, "
        f"{_crop_text(summary['preprocessing'])}, decoded with {summary.get('decoder', 'decord')}",
        f"  tokens     {tokens['tokens_per_frame']} per frame ({tokens['cls_tokens']} CLS + "
        f"{tokens['grid'][0]}x{tokens['grid'][1]} patches, pool {tokens['patch_pool']}, "
        f"{tokens['registers_dropped']} registers dropped), dim {tokens['dim']}, {tokens['dtype']}",
        f"  contents   {summary['videos']} videos, {summary['clips']} clips"
        + (f" + {summary['view_clips']} of augmented views" if summary.get("view_clips") else "")
        + f", {summary['shards']} shard(s), {summary['bytes'] / 2**20:.1f} MiB "
        f"({summary['bytes'] / max(1, summary['clips'] + summary.get('view_clips', 0)) / 2**10:.0f} KiB/clip)",
        f"  splits     {', '.join(f'{k}: {v}' for k, v in sorted(summary['splits'].items()))}",
        f"  classes    {len(summary['classes'])}: "
        + ", ".join(f"{name} ({count})" for name, count in list(summary["classes"].items())[:12])
        + (" ..." if len(summary["classes"]) > 12 else ""),
    ]
    if summary.get("views"):
        lines.insert(5, _views_text(summary["views"], summary["views_per_video"]))
    if tokens["dtype"] == "int8":
        lines[3] += " (one float16 scale per token; read as float16)"
    if "layers" in tokens:  # format 5: a layer axis
        blocks = tokens["layers"]
        lines.insert(4, f"  layers     {len(blocks)} blocks {blocks} (0-based), each through the final norm")
    else:
        lines[3] += "; the last block"
    if summary.get("cls_copy"):
        lines[3] += "; CLS tokens also stored apart (CLS-only reads)"
    if projection := summary.get("projection"):
        lines.append(
            f"  projected  on the top {projection['components']} of {projection['source_dim']} principal directions "
            f"({100 * projection['explained_variance']:.1f} % of the variance; {projection['fit']['clips']} training "
            f"clips, seed {projection['fit']['seed']}; {projection['file']})"
        )
    if summary.get("compacted_from"):
        lines.append(f"  compacted  from {summary['compacted_from']}")
    if summary["unlabelled_clips"]:
        lines.append(f"  unlabelled {summary['unlabelled_clips']} clips")
    if summary["short_videos"]:
        lines.append(f"  short      {summary['short_videos']} videos had fewer frames than sampled (frames repeated):")
        names = summary.get("short_video_names", [])
        lines += [f"    {name}" for name in names[:_LISTED]]
        if len(names) > _LISTED:
            lines.append(f"    ... and {len(names) - _LISTED} more (inspect --json lists all)")
    if summary["pairs"]:
        lines.append(f"  pairs      {', '.join('/'.join(p) for p in summary['pairs'])}")
    if summary["warnings"]:
        lines.append(f"  warnings   {len(summary['warnings'])} videos extracted from less than asked for or from "
                     "damaged data (decoder errors):")  # fmt: skip
        lines += [f"    {warning['reason']}" for warning in summary["warnings"][:20]]
        if len(summary["warnings"]) > 20:
            lines.append(f"    ... and {len(summary['warnings']) - 20} more (see manifest.json)")
    if summary["failures"]:
        lines.append(f"  failures   {len(summary['failures'])}:")
        lines += [f"    {failure['reason']}" for failure in summary["failures"][:20]]
        if len(summary["failures"]) > 20:
            lines.append(f"    ... and {len(summary['failures']) - 20} more (see manifest.json)")
    return "\n".join(lines)


def _crop_text(preprocessing: dict[str, Any]) -> str:
    """'224 px crop', '1024x768 px crop (squash)': size and, when not a centre crop, timm's crop mode."""
    crop = preprocessing.get("crop")
    size = "x".join(map(str, crop)) if isinstance(crop, list) else str(crop)
    mode = preprocessing.get("crop_mode", "center")
    return f"{size} px crop" + ("" if mode == "center" else f" ({mode})")


def _views_text(views: dict[str, Any], per_video: dict[int, int]) -> str:
    """The views line of inspect: the settings, then how many videos have how many views."""
    span = f"sub-span >= {views['span']}" if views.get("span") else "whole video"
    flip = "off"
    if views.get("flip"):
        pairs = views.get("flip_pairs") or []
        flip = f"p 0.5, labels swapped for {len(pairs)} pair(s)" if pairs else "p 0.5, labels kept"
    settings = (
        f"  views      {views['count']} per training video: crop scale {views['scale'][0]}-{views['scale'][1]}, "
        f"ratio {views['ratio'][0]}-{views['ratio'][1]}, {span}, colour {views.get('colour') or 'off'}, "
        f"flip {flip}, seed {views.get('seed', 0)}"
    )
    counts = ", ".join(f"{n} views: {videos} videos" for n, videos in per_video.items())
    return f"{settings}\n  per video  {counts}"


def _step_text(sampling: dict[str, Any]) -> str:
    return f" {sampling['frame_step']} apart" if sampling.get("strategy") == "frame-step" else ""


def _test_views_text(test_views: dict[str, int] | None) -> str:
    if not test_views:
        return ""
    return f" (val/test: {test_views['segments']} segments x {test_views['crops']} crops)"
