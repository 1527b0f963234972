"""Groups of videos that must land in the same split when ``prepare`` holds out val / test (``holdout.py``).

Read from the path alone:

- Same-named files in different class folders: a mirrored-pair dataset made by reversing clips has
  ``forward/bikes_3.mp4`` and ``backward/bikes_3.mp4``, one clip's content in two classes. Training on one and
  testing on the other leaks test content into training.
- UCF101-style names ``v_<Class>_g<NN>_c<MM>``: the clips of one group (``g<NN>``) come from one longer video of one
  person, so the dataset's own splits keep a group together; the key is ``v_<Class>_g<NN>``.
- HMDB51-style names ``<source>_<action>_<body>_<camera motion>_<people>_<viewpoint>_<quality>_<N>`` (the
  dataset's README: body ``f|h|l|u``, camera motion ``cm|nm``, ``np<k>``, viewpoint ``fr|ba|le|ri``, quality
  ``bad|med|goo``): clips are cut from source movies, and one movie gives clips of several actions
  (``AmericanGangster_eat_...``, ``AmericanGangster_drink_...``); the key is ``<source>``, the name before
  ``_<action>`` (the class folder where it ends the name before the tags, else the longest HMDB51 action that
  does, since actions such as ``brush_hair`` hold ``_`` and so may sources). A name with an unknown action keeps
  its clips of one action and tags together (the name without ``_<N>``); one without all six tags falls back to
  the rules of other names.
- Drive&Act: every recording of one participant, the subject the dataset's own splits are drawn by; the key is
  ``subject:vp<N>``, from the annotations' ``participant_id`` column where the adapter read one
  (``VideoItem.group``, ``keys`` below), else from the path ``.../vp<N>/<file>`` (the participant folder of the
  annotation's ``file_id``), which is all a cache's val hold-out has.

A video's group is the union of both: the groups are the connected sets of videos sharing a key. ``prepare``
links same-named files across every class folder; train-probe's val hold-out (``training/splits.py``) links them
only within the classes of a mirrored pair (``name_linked``), where a same-named file is a reversed copy rather than
a coincidence of numbering (``001.mp4`` in every class folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath

from step_cache.datasets.split_files import HMDB51_CLASSES

_UCF_NAME = re.compile(r"^(v_.+_g\d+)_c\d+$")
_HMDB_NAME = re.compile(r"^((.+)_[fhlu]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo))_\d+$")
_DRIVE_ACT_SUBJECT = re.compile(r"^vp\d+$")
_HMDB51_LONGEST_FIRST = sorted(HMDB51_CLASSES, key=len, reverse=True)  # ``draw_sword`` is tried before ``sword``


def group_key(path: str, name_linked: bool = True, hmdb51_sources: bool = True) -> str:
    """The key videos of one group share: the participant ``vp<N>`` of a Drive&Act path, ``v_<Class>_g<NN>`` for a
    UCF101-style name, the source movie of an HMDB51-style name (across its actions), else the file name without
    its extension (so same-named files of different folders share it), or, without ``name_linked``, the path itself
    (a group of its own). Without ``hmdb51_sources``, an HMDB51 name's key is the name without ``_<N>`` (its clips
    of one action and tags: the val hold-out rule ``groups-v1``, ``training/splits.py``)."""
    pure = PurePosixPath(path)
    # The folder nearest the file names the participant (``kinect_color/vp3/run1...``).
    subject = next((part for part in reversed(pure.parts[:-1]) if _DRIVE_ACT_SUBJECT.match(part)), None)
    if subject is not None:
        return f"subject:{subject}"
    match = _UCF_NAME.match(pure.stem)
    if match:
        return match.group(1)
    match = _HMDB_NAME.match(pure.stem)
    if match:
        return (hmdb51_sources and hmdb51_source(match.group(2), pure.parent.name)) or match.group(1)
    return pure.stem if name_linked else f"path:{path}"


def hmdb51_source(head: str, folder: str = "") -> str | None:
    """``source:<source>`` of an HMDB51 name's ``<source>_<action>`` part (the name before its six tags), the action
    being ``folder`` (the clip's class) where it ends the part, else the longest HMDB51 class that does (``sword``
    ends ``draw_sword``: the folder tells them apart); None when no known action ends it."""
    for action in [folder, *_HMDB51_LONGEST_FIRST] if folder else _HMDB51_LONGEST_FIRST:
        if head.endswith(f"_{action}") and len(head) > len(action) + 1:
            return f"source:{head[: -len(action) - 1]}"
    return None


def video_groups(
    paths: Iterable[str],
    name_linked: Callable[[str], bool] | None = None,
    keys: Mapping[str, str] | None = None,
    hmdb51_sources: bool = True,
) -> dict[str, str]:
    """Each path's group, named after the group's first path in sorted order (a lone video's group is its path).
    ``name_linked(path)`` says whether a path joins the same-named files' group (None: every path does); ``keys``
    gives a path's key where its annotations name its group (``VideoItem.group``), instead of ``group_key``
    (``hmdb51_sources``: as there)."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    paths = list(dict.fromkeys(paths))
    for path in paths:
        linked = name_linked is None or name_linked(path)
        key = (keys or {}).get(path) or group_key(path, linked, hmdb51_sources)
        a, b = find(f"path:{path}"), find(f"key:{key}")
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = {path: find(f"path:{path}") for path in paths}
    names: dict[str, str] = {}
    for path in sorted(paths):
        names.setdefault(roots[path], path)
    return {path: names[roots[path]] for path in paths}


def pool_small_mixed(by_stratum: dict[tuple, list[str]], fraction: float) -> dict[tuple, list[str]]:
    """Strata (class sets) of groups, with every stratum of several classes too small for its own draw of
    ``fraction`` (fewer than 2 groups, or under one group's worth) moved into one pooled stratum ``()``. Groups that
    each hold their own mix of classes (the participants of Drive&Act, whose recordings cover different activities)
    would otherwise each sit in a stratum of one or two, and none could be held out. A stratum of one class is kept
    as it is, and so is a large one (a mirrored pair's), so a set whose groups each hold one class draws as before."""
    pooled: dict[tuple, list[str]] = {}
    for stratum in sorted(by_stratum):
        groups = by_stratum[stratum]
        small = len(groups) < 2 or len(groups) * fraction < 1
        pooled.setdefault(() if len(stratum) > 1 and small else stratum, []).extend(groups)
    return pooled
