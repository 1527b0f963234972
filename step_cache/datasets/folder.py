"""A generic one-folder-per-class tree, with or without split folders.

- ``<videos root>/<class>/<video>``: every video labelled by its folder, no split (ask for ``val_fraction`` /
  ``test_fraction`` to draw a stratified random split; the rest becomes ``train``);
- ``<videos root>/{train,val,test}/<class>/<video>`` (``validation`` is read as ``val``): splits from the folders.
Videos directly in the root (or directly in a split folder) are kept, unlabelled.
"""

from __future__ import annotations

from step_cache.catalog import CatalogError, VideoItem, discover_videos
from step_cache.datasets.adapter import AdapterResult, DatasetError, Request, unsupported

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def read(request: Request) -> AdapterResult:
    unsupported(
        request,
        split=request.split,
        view=request.view,
        use_frame_ranges=request.use_frame_ranges,
        annotations=request.annotations,
    )
    root = request.videos_root
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    split_folders = [name for name in folders if name in SPLIT_FOLDERS]
    try:
        if not split_folders:
            return AdapterResult(discover_videos(root), [])
        if len(split_folders) != len(folders):
            others = [name for name in folders if name not in SPLIT_FOLDERS]
            raise DatasetError(
                f"{root}: mixes split folders ({', '.join(split_folders)}) with other folders "
                f"({', '.join(others[:3])}); use either <class>/ folders or {{train,val,test}}/<class>/ folders"
            )
        items = []
        for name in split_folders:
            for item in discover_videos(root / name):
                items.append(VideoItem(f"{name}/{item.path}", item.label, SPLIT_FOLDERS[name]))
        return AdapterResult(items, [])
    except DatasetError:
        raise
    except CatalogError as error:
        raise DatasetError(str(error)) from None
