"""What an extraction run did: counts, failures, warnings, speed (``step-cache extract`` prints its summary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from step_cache.cache.manifest import Failure, Manifest, VideoWarning


@dataclass
class ExtractReport:
    out: Path
    manifest: Manifest
    videos: int = 0  # extracted in this run
    clips: int = 0
    view_clips: int = 0  # rows of augmented views (extract --views), besides the clips
    frames: int = 0  # through the backbone, views included
    skipped: int = 0  # already in the cache
    failures: list[Failure] = field(default_factory=list)  # of this run
    warnings: list[VideoWarning] = field(default_factory=list)  # of this run: extracted from less than asked
    short: list[str] = field(default_factory=list)  # of this run: fewer frames than T, so clips repeat frames
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        text = (
            f"{self.out}: extracted {self.videos} videos ({self.clips} clips"
            + (f" + {self.view_clips} augmented view clips" if self.view_clips else "")
            + f") in {self.seconds:.1f} s "
            f"({self.frames_per_second:.1f} frames/s); {self.skipped} already done; "
            f"cache holds {self.manifest.num_videos} videos in {len(self.manifest.shards)} shards"
        )
        if self.failures:
            text += f"; {len(self.failures)} failed: " + "; ".join(f.reason for f in self.failures[:3])
            text += " ..." if len(self.failures) > 3 else ""
        if self.short:  # clips that repeat frames are not what the user asked for: say so, and where to look
            text += (
                f"; {len(self.short)} short ({self.manifest.too_short}, frames repeated; "
                f"step-cache inspect {self.out} lists them)"
            )
        if self.warnings:
            text += f"; {len(self.warnings)} with warnings: " + "; ".join(w.reason for w in self.warnings[:3])
            text += " ..." if len(self.warnings) > 3 else ""
        return text
