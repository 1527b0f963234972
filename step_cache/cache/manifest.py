"""The manifest of a cache (``OUT/manifest.json``): what was extracted, how, and where. A public contract
(``docs/shard-format.md``), versioned: older versions are upgraded on read where possible, newer ones are refused
with a clear message. It is always replaced atomically, so a reader sees either the previous or the next complete
manifest, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from step_cache.cache.files import atomic_write_text, now_iso
from step_cache.cache.layout import LAYERS_FORMAT_VERSION as LAYERS_FORMAT_VERSION  # importable from here too
from step_cache.cache.layout import TokenLayout
from step_cache.cache.quantize import TOKEN_DTYPES
from step_cache.cache.sealing import seal, seal_problem
from step_cache.errors import StepCacheError

FORMAT_NAME = "step-cache-shards"
FORMAT_VERSION = 5  # the newest version this step-cache reads and writes (2: int8; 3: views; 4: several roots;
# 5: several layers (LAYERS_FORMAT_VERSION, step_cache.cache.layout) and test views)
VIEWS_FORMAT_VERSION = 3  # a cache with augmented views (``extraction.views``) is written as version 3
# a merge of caches extracted from different video folders records each shard's root (``ShardRecord.root``)
ROOTS_FORMAT_VERSION = 4
TEST_VIEWS_FORMAT_VERSION = 5  # val/test videos as segments x crops (``extraction.test_views``)
MANIFEST_NAME = "manifest.json"
# extraction.decoder is absent from caches decoded by decord, the default (and the only decoder before 0.2)
DEFAULT_DECODER = "decord"


class ManifestError(StepCacheError, ValueError):
    """A manifest that is missing, unreadable, of an unknown version, or incompatible with another."""


@dataclass
class ShardRecord:
    """One completed shard file, as listed in the manifest."""

    file: str
    clips: int
    videos: int
    bytes: int
    sha256: str
    root: str | None = None  # its part's videos root, in a merge of several roots (format 4); else not written

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.root is None:  # caches from one root keep the entries (and content_hash) they always had
            del data["root"]
        return data


@dataclass
class Failure:
    """A video that could not be extracted, and why."""

    video: str
    reason: str


@dataclass
class VideoWarning:
    """A video extracted from less than asked for (truncated, a segment past its end) or damaged data: ``reason``."""

    video: str
    reason: str
    decode_errors: int = 0  # written only when > 0 (absent from older manifests: none)


@dataclass
class Manifest:
    """Everything needed to read the shards and to reproduce them.

    ``extraction`` holds the settings that define the tokens (backbone, weights, preprocessing, sampling, token
    layout): a resumed run must match them exactly. ``source`` is informational (where videos came from).
    """

    extraction: dict[str, Any]
    classes: list[str]
    pairs: list[tuple[str, str]] = field(default_factory=list)
    shards: list[ShardRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[VideoWarning] = field(default_factory=list)  # absent from manifests written before it existed
    source: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)  # how shards are stored, e.g. {"compression": "lz4"}
    # clip durations: seconds (rounded to ms, as text) -> videos; absent from manifests written before it existed
    durations: dict[str, int] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    tool_version: str = ""

    # -- typed views of the extraction settings ---------------------------------------------------------
    @property
    def layout(self) -> TokenLayout:
        return TokenLayout.from_dict(self.extraction["tokens"])

    @property
    def frames(self) -> int:
        return int(self.extraction["sampling"]["frames"])

    @property
    def too_short(self) -> str:
        """What a video flagged ``short`` lacked: fewer than T frames, or (``--frame-step``) than a clip spans."""
        sampling = self.extraction["sampling"]
        if sampling.get("strategy") == "frame-step":
            return f"fewer frames than a clip spans ({self.frames} frames {sampling['frame_step']} apart)"
        return f"fewer than {self.frames} frames"

    @property
    def clips_per_video(self) -> int:
        return int(self.extraction["sampling"]["clips"])

    @property
    def view_count(self) -> int:
        """Augmented views stored per training video besides the clean one (``extract --views``; 0: none)."""
        return int(self.extraction.get("views", {}).get("count", 0))

    @property
    def format_version(self) -> int:
        """The oldest format that holds this cache: 1 for float tokens, 2 for int8, 3 with augmented views, 4 with
        shards of several video roots, 5 with a layer axis or test views (older readers would mix views, same-named
        videos, layers or crops up, so must refuse)."""
        roots = ROOTS_FORMAT_VERSION if any(s.root is not None for s in self.shards) else 1
        test_views = TEST_VIEWS_FORMAT_VERSION if self.extraction.get("test_views") else 1
        return max(self.layout.format_version, VIEWS_FORMAT_VERSION if self.view_count else 1, roots, test_views)

    @property
    def backbone(self) -> str:
        return str(self.extraction["backbone"]["name"])

    def add_duration(self, seconds: float) -> None:
        key = f"{seconds:.3f}"
        self.durations[key] = self.durations.get(key, 0) + 1

    @property
    def typical_duration(self) -> float | None:
        """Median clip duration in seconds (None when the manifest records none)."""
        values = sorted((float(k), n) for k, n in self.durations.items())
        total, seen = sum(n for _, n in values), 0
        for seconds, count in values:
            seen += count
            if 2 * seen >= total:
                return seconds
        return None

    @property
    def decoder(self) -> str:
        return str(self.extraction.get("decoder", DEFAULT_DECODER))

    @property
    def num_clips(self) -> int:
        return sum(s.clips for s in self.shards)

    @property
    def num_videos(self) -> int:
        return sum(s.videos for s in self.shards)

    # -- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        warnings = [{k: v for k, v in asdict(w).items() if v or k != "decode_errors"} for w in self.warnings]
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "created": self.created,
            "updated": self.updated,
            "extraction": self.extraction,
            "classes": list(self.classes),
            "pairs": [list(p) for p in self.pairs],
            "num_videos": self.num_videos,
            "num_clips": self.num_clips,
            "shards": [s.to_dict() for s in self.shards],
            "failures": [asdict(f) for f in self.failures],
            # only when there are any: a cache without warnings keeps the manifest (and content_hash) it had
            **({"warnings": warnings} if warnings else {}),
            "source": self.source,
            "storage": self.storage,
            **({"durations": dict(sorted(self.durations.items()))} if self.durations else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "manifest") -> Manifest:
        data = upgrade(data, origin)
        _check_settings(data.get("extraction"), origin)
        try:
            return cls(
                extraction=data["extraction"],
                classes=list(data["classes"]),
                pairs=[(str(a), str(b)) for a, b in data.get("pairs", [])],
                shards=[ShardRecord(**s) for s in data.get("shards", [])],
                failures=[Failure(**f) for f in data.get("failures", [])],
                warnings=[VideoWarning(**w) for w in data.get("warnings", [])],
                source=data.get("source", {}),
                storage=data.get("storage", {}),
                durations={str(k): int(n) for k, n in data.get("durations", {}).items()},
                created=data.get("created", ""),
                updated=data.get("updated", ""),
                tool_version=data.get("tool_version", ""),
            )
        except (KeyError, TypeError) as error:
            raise ManifestError(f"{origin}: malformed manifest ({error!r})") from None

    def content_hash(self) -> str:
        """sha256 of the manifest's content without timestamps: identifies the exact cache a probe was trained on."""
        data = self.to_dict()
        for volatile in ("created", "updated", "tool_version"):
            data.pop(volatile)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def settings_hash(extraction: dict[str, Any]) -> str:
    """sha256 of the extraction settings; every shard carries it, so a shard from another cache is recognised."""
    return hashlib.sha256(json.dumps(extraction, sort_keys=True).encode()).hexdigest()


_REQUIRED_SETTINGS = {
    "backbone": ("name",),
    "weights": ("source",),
    "preprocessing": (),
    "sampling": ("frames", "clips"),
    "tokens": ("cls_tokens", "grid", "dim", "dtype"),
}


def _check_settings(extraction: Any, origin: str) -> None:
    if not isinstance(extraction, dict):
        raise ManifestError(f"{origin}: malformed manifest (extraction is not an object)")
    for section, keys in _REQUIRED_SETTINGS.items():
        value = extraction.get(section)
        missing = [k for k in keys if not isinstance(value, dict) or k not in value]
        if not isinstance(value, dict) or missing:
            raise ManifestError(f"{origin}: malformed manifest (extraction.{section} lacks {missing or 'a value'})")


def upgrade(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """Bring a manifest dict of any readable version to the current one, or refuse it clearly."""
    if data.get("format") != FORMAT_NAME:
        raise ManifestError(f"{origin}: not a step-cache shard manifest (format={data.get('format')!r})")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ManifestError(f"{origin}: manifest has no integer format_version")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"{origin}: shard format version {version} is newer than this step-cache reads "
            f"(up to {FORMAT_VERSION}); upgrade step-cache"
        )
    if version < 1:
        raise ManifestError(f"{origin}: shard format version {version} is not supported; re-extract the videos")
    # Versions 2-5 only added (int8 tokens, views, shard roots, a layer axis, test views: docs/shard-format.md), so
    # older manifests read unchanged; a later change of meaning adds a step here, e.g. `data = _v5_to_v6(data)`.
    tokens = data.get("extraction", {}).get("tokens", {}) if isinstance(data.get("extraction"), dict) else {}
    dtype = tokens.get("dtype") if isinstance(tokens, dict) else None
    layers = tokens.get("layers") if isinstance(tokens, dict) else None
    if layers is not None and not (
        isinstance(layers, list) and layers and all(isinstance(n, int) and n >= 0 for n in layers)
        and layers == sorted(set(layers))
    ):  # fmt: skip
        raise ManifestError(f"{origin}: tokens.layers must list ascending block indices >= 0, got {layers!r}")
    if dtype is not None and dtype not in TOKEN_DTYPES:
        known = ", ".join(TOKEN_DTYPES)
        raise ManifestError(f"{origin}: unknown token dtype {dtype!r} (this step-cache reads {known})")
    return data


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    directory = Path(directory)
    manifest.updated = now_iso()
    manifest.created = manifest.created or manifest.updated
    path = directory / MANIFEST_NAME
    atomic_write_text(path, json.dumps(seal(manifest.to_dict()), indent=2) + "\n")
    return path


def read_manifest(directory: str | Path, check_seal: bool = True) -> Manifest:
    """The manifest of a cache directory (or a manifest file). ``check_seal``: refuse a manifest edited after it
    was written (``step_cache.cache.sealing``); ``verify`` turns it off to report that among its findings."""
    directory = Path(directory)
    if not directory.exists():
        # "no manifest" kept in the text: callers (and tests) that matched the old message still do
        raise ManifestError(
            f"{directory}: cache directory does not exist, so there is no manifest to read (check the path, or run "
            "step-cache extract)"
        )
    path = directory / MANIFEST_NAME if directory.is_dir() else directory
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (is this a step-cache shard directory? run step-cache extract)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: unreadable manifest ({error})") from None
    manifest = Manifest.from_dict(data, origin=str(path))
    if check_seal and (problem := seal_problem(data, str(path))):
        raise ManifestError(problem)
    return manifest


def extraction_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of settings that differ between two ``extraction`` dicts."""
    if not prefix:  # name both decoders, also when one is decord's (which is not written down)
        old, new = ({"decoder": DEFAULT_DECODER, **settings} for settings in (old, new))
    differences = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += extraction_differences(a, b, prefix=f"{name}.")
        elif a != b:
            differences.append(f"{name}: {a!r} != {b!r}")
    return differences
