"""``predict --run R --videos PATH``: classify new videos with a trained probe, straight from the files.

The videos go through the very extraction the run's cache came from (``extract`` with the settings rebuilt from
the run: same backbone and weights, preprocessing, frames and clips per video, token dtype) into a cache, and
``predict`` reads that cache: the tokens, and so the answers, are the ones the probe would have got from a cache
extracted by hand. The cache lives in a temporary folder that is removed afterwards, unless ``cache`` names a
folder to keep (re-running with the same ``cache`` resumes: videos already there are not decoded again). A run
on a cache rewritten by ``step-cache compact`` (pooled patches, int8 read back as floats) gets its videos extracted
like the cache that was compacted, then compacted the same way (``settings.compaction``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from step_cache.cache.compact import compact
from step_cache.cache.manifest import Failure, ManifestError, read_manifest
from step_cache.catalog import VIDEO_EXTENSIONS, CatalogError, VideoItem
from step_cache.errors import InputError
from step_cache.extraction.engine import ExtractionError, extract
from step_cache.interface import option
from step_cache.recognition.settings import compaction, extract_options
from step_cache.training import runs
from step_cache.training.evaluation import predict
from step_cache.training.run_status import usable_checkpoint

log = logging.getLogger(__name__)


@dataclass
class VideoPredictions:
    """What ``predict_videos`` did: the CSV, the videos it classified, those it could not read and why."""

    csv: Path
    videos: int
    failures: list[Failure] = field(default_factory=list)
    cache: Path | None = None  # the kept cache, when one was asked for

    def summary(self) -> str:
        text = f"wrote predictions for {self.videos} videos to {self.csv}"
        if self.cache is not None:
            text += f" (tokens kept in {self.cache})"
        if self.failures:  # each reason was logged once as it was skipped ("skipped ...")
            names = ", ".join(f.video for f in self.failures[:_LISTED])
            more = f" and {len(self.failures) - _LISTED} more" if len(self.failures) > _LISTED else ""
            text += f"; {len(self.failures)} unreadable video(s) skipped: {names}{more}"
        return text


def _refuse_unreadable(videos: Path, directory: Path) -> None:
    """When no video could be read, raise an ExtractionError that lists every reason (the temporary cache that
    recorded them is about to be removed); otherwise return, and the original error stands."""
    try:
        manifest = read_manifest(directory)
    except ManifestError:
        return
    if manifest.num_videos or not manifest.failures:
        return
    reasons = "; ".join(failure.reason for failure in manifest.failures[:_LISTED])
    more = f"; and {len(manifest.failures) - _LISTED} more" if len(manifest.failures) > _LISTED else ""
    raise ExtractionError(
        f"{videos}: none of the {len(manifest.failures)} videos could be read: {reasons}{more} "
        f"({option('cache', 'DIR')} keeps every reason in DIR/manifest.json)"
    )


_LISTED = 5  # unreadable videos named in the error when none could be read


def predict_videos(
    run_dir: str | Path,
    videos: str | Path,
    out_csv: str | Path = "predictions.csv",
    *,
    annotations: str | Path | None = None,
    weights: str | Path | None = None,
    cache: str | Path | None = None,
    top_k: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    view_average: str | None = None,
) -> VideoPredictions:
    """Write ``predict``'s CSV (``video, clips, label, short, class_1, ...``) for the videos at ``videos``: one
    file, a folder (``<class>/`` sub-folders fill ``label``), or the rows of ``annotations`` (paths relative to
    ``videos``). Unreadable videos are skipped and returned with their reason. ``view_average``: as ``predict``."""
    if top_k is not None and top_k < 1:
        raise InputError(f"{option('top_k', top_k)}: must be >= 1")
    record = runs.read_config(run_dir)
    usable_checkpoint(run_dir)  # a failed run or a foreign checkpoint is refused before any video is decoded
    options = extract_options(record, weights)  # checks the weights before any video is decoded
    videos = Path(videos)
    items = None
    if annotations is None and videos.is_file():
        if videos.suffix.lower() not in VIDEO_EXTENSIONS:
            raise CatalogError(f"{videos}: not a video file (expected one of {', '.join(VIDEO_EXTENSIONS)})")
        items, videos = [VideoItem(path=videos.name)], videos.parent
    keep = cache is not None
    directory = Path(cache) if keep else Path(tempfile.mkdtemp(prefix="step-cache-predict-"))
    # A run on a cache rewritten by step-cache compact (pooled, or int8 read back): extract like its source cache
    # into a temporary folder, then compact into ``directory`` the same way, so the probe gets its kind of tokens.
    compacted = compaction(record["data"]["extraction"])
    extracted_to = Path(tempfile.mkdtemp(prefix="step-cache-predict-")) if compacted else directory
    try:
        try:
            extracted = extract(
                videos, extracted_to, annotations=annotations, items=items, device=device, workers=workers,
                batch_size=batch_size, progress=progress, **options,
            )  # fmt: skip
        except ExtractionError:
            if not keep or compacted:  # the error names the manifest of a folder removed below: give the reasons
                _refuse_unreadable(videos, extracted_to)
            raise
        if compacted:
            compact(
                extracted_to, directory, dtype=compacted["dtype"], pool_patches=compacted["pool_patches"],
                progress=progress,
            )  # fmt: skip
        path = predict(run_dir, directory, out_csv, top_k=top_k, device=device, view_average=view_average)
        failures = sorted(extracted.manifest.failures, key=lambda f: f.video)
        return VideoPredictions(path, extracted.manifest.num_videos, failures, directory if keep else None)
    finally:
        for folder in {directory, extracted_to} - ({directory} if keep else set()):
            shutil.rmtree(folder, ignore_errors=True)
