from pathlib import Path

import pytest

from step_cache.catalog import (
    CatalogError,
    VideoItem,
    class_names,
    discover_videos,
    read_annotations,
    read_pairs,
    write_annotations,
    write_pairs,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_discover_class_folders_and_unlabelled(tmp_path):
    for rel in ["b/2.mp4", "a/1.MKV", "a/readme.txt", "loose.webm"]:
        touch(tmp_path / rel)
    items = discover_videos(tmp_path)
    assert [(i.path, i.label) for i in items] == [("a/1.MKV", "a"), ("b/2.mp4", "b"), ("loose.webm", None)]
    assert class_names(items) == ["a", "b"]


def test_discover_errors(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        discover_videos(tmp_path / "missing")
    with pytest.raises(CatalogError, match="no videos found"):
        discover_videos(tmp_path)


def test_annotations_round_trip_with_segments(tmp_path):
    items = [
        VideoItem("x/a.mp4", "open", "train"),
        VideoItem("x/a.mp4", "close", "val", 10, 40),
        VideoItem("b.mp4", None, None),
    ]
    path = write_annotations(tmp_path / "ann.csv", items)
    assert read_annotations(path) == items
    assert items[1].key == "x/a.mp4#10-40" and items[0].key == "x/a.mp4"


@pytest.mark.parametrize(
    "text,message",
    [
        ("file,label\na.mp4,x\n", "missing column"),
        ("path,label\na.mp4,x\na.mp4,y\n", "duplicate row for a.mp4"),
        ("path,label,split\na.mp4,x,training\n", "split must be one of"),
        ("path,label,start_frame,end_frame\na.mp4,x,10,5\n", "must be greater than start_frame"),
        ("path,label,start_frame,end_frame\na.mp4,x,ten,20\n", "start_frame must be an integer"),
        ("path,label,colour\na.mp4,x,red\n", "unknown column"),
        ("path,label\n", "no rows"),
    ],
)
def test_annotation_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "ann.csv"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message) as info:
        read_annotations(path)
    assert str(path) in str(info.value)


def test_annotation_with_unknown_file(tmp_path):
    (tmp_path / "ann.csv").write_text("path,label\nmissing.mp4,x\n")
    with pytest.raises(CatalogError, match=r"ann.csv:2: listed video missing.mp4 does not exist"):
        read_annotations(tmp_path / "ann.csv", videos_root=tmp_path)


def test_pairs_round_trip_and_checks(tmp_path):
    path = write_pairs(tmp_path / "pairs.txt", [("open", "close"), ("left", "right")], header="mirrored")
    assert read_pairs(path, ["open", "close", "left", "right"]) == [("open", "close"), ("left", "right")]
    with pytest.raises(CatalogError, match="'left' is not among the classes"):
        read_pairs(path, ["open", "close"])
    (tmp_path / "bad.txt").write_text("open,close\nopen,shut\n")
    with pytest.raises(CatalogError, match="more than one pair"):
        read_pairs(tmp_path / "bad.txt")


def test_discover_skips_hidden_and_deep_files(tmp_path):
    touch(tmp_path / ".venv" / "lib" / "x.mp4")
    touch(tmp_path / "a" / "deeper" / "y.mp4")
    touch(tmp_path / "a" / "z.mp4")
    assert [i.path for i in discover_videos(tmp_path)] == ["a/z.mp4"]


def test_pairs_with_commas_in_class_names(tmp_path):
    pairs = [("Removing something, revealing something behind", "Putting something in front of something")]
    path = write_pairs(tmp_path / "pairs.txt", pairs)
    assert read_pairs(path) == pairs
