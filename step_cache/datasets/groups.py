"""Groups of videos that must land in the same split when ``prepare`` holds out val / test (``holdout.py``).

Two kinds, both read from the file name alone:

- Same-named files in different class folders: a mirrored-pair dataset made by reversing clips has
  ``forward/bikes_3.mp4`` and ``backward/bikes_3.mp4``, one clip's content in two classes. Training on one and
  testing on the other leaks test content into training.
- UCF101-style names ``v_<Class>_g<NN>_c<MM>``: the clips of one group (``g<NN>``) come from one longer video of one
  person, so the dataset's own splits keep a group together; the key is ``v_<Class>_g<NN>``.

A video's group is the union of both: the groups are the connected sets of videos sharing a key. ``prepare``
links same-named files across every class folder; train-probe's val hold-out (``training/splits.py``) links them
only within the classes of a mirrored pair (``name_linked``), where a same-named file is a reversed copy rather than
a coincidence of numbering (``001.mp4`` in every class folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

_UCF_NAME = re.compile(r"^(v_.+_g\d+)_c\d+$")


def group_key(path: str, name_linked: bool = True) -> str:
    """The key videos of one group share: ``v_<Class>_g<NN>`` for a UCF101-style name, else the file name without
    its extension (so same-named files of different folders share it), or, without ``name_linked``, the path
    itself (a group of its own)."""
    stem = PurePosixPath(path).stem
    match = _UCF_NAME.match(stem)
    if match:
        return match.group(1)
    return stem if name_linked else f"path:{path}"


def video_groups(paths: Iterable[str], name_linked: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Each path's group, named after the group's first path in sorted order (a lone video's group is its path).
    ``name_linked(path)`` says whether a path joins the same-named files' group (None: every path does)."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    paths = list(dict.fromkeys(paths))
    for path in paths:
        linked = name_linked is None or name_linked(path)
        a, b = find(f"path:{path}"), find(f"key:{group_key(path, linked)}")
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = {path: find(f"path:{path}") for path in paths}
    names: dict[str, str] = {}
    for path in sorted(paths):
        names.setdefault(roots[path], path)
    return {path: names[roots[path]] for path in paths}
