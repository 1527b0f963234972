"""An empty label cell in an annotations CSV (issue 31): an error naming the file, line and column where the row
is meant for training or validation; unlabelled where the row says so (a test row, an empty split cell, a file
without any label)."""

from __future__ import annotations

import pytest

from step_cache.catalog import CatalogError, VideoItem, read_annotations, write_annotations


@pytest.mark.parametrize(
    "text,line,keep",
    [
        ("path,label,split\na.mp4,x,train\nb.mp4,,train\n", 3, "leave its split cell empty or 'test'"),
        ("path,label,split\na.mp4,x,train\nb.mp4, ,val\nc.mp4,,val\n", 3, "leave its split cell empty or 'test'"),
        ("path,label\na.mp4,x\nb.mp4,y\nc.mp4,\n", 4, "add a split column, empty or 'test' there,"),
    ],
)
def test_an_empty_label_on_a_training_row_is_an_error_naming_file_line_and_column(tmp_path, text, line, keep):
    csv = tmp_path / "ann.csv"
    csv.write_text(text)
    with pytest.raises(CatalogError) as error:
        read_annotations(csv)
    more = " (and 1 more row(s))" if text.count(",val") == 2 else ""
    assert str(error.value) == (
        f"{csv}:{line}: column 'label' is empty{more}; give the class, or {keep} to keep the video unlabelled "
        "(classified by predict, never trained on)"
    )


def test_rows_that_say_they_are_unlabelled_stay_unlabelled(tmp_path):
    csv = tmp_path / "ann.csv"
    csv.write_text("path,label,split\na.mp4,x,train\nb.mp4,,test\nc.mp4,,\n")
    assert [(i.path, i.label, i.split) for i in read_annotations(csv)] == [
        ("a.mp4", "x", "train"), ("b.mp4", None, "test"), ("c.mp4", None, None),
    ]  # fmt: skip
    unlabelled = tmp_path / "to_classify.csv"
    unlabelled.write_text("path,label\na.mp4,\nb.mp4,\n")
    assert [i.label for i in read_annotations(unlabelled)] == [None, None]


def test_what_write_annotations_writes_reads_back(tmp_path):
    items = [VideoItem("a.mp4", "x", "train"), VideoItem("loose.mp4"), VideoItem("held.mp4", None, "test")]
    assert read_annotations(write_annotations(tmp_path / "ann.csv", items)) == items


def test_extract_refuses_it_in_one_line_before_any_work(tmp_path):
    from test_bad_input_round3 import invoke, one_error_line

    csv = tmp_path / "ann.csv"
    csv.write_text("path,label,split\na.mp4,x,train\nb.mp4,,train\n")
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).touch()  # listed files exist: the label is what is wrong
    line = one_error_line(invoke("extract", "--annotations", csv, "--videos", tmp_path, "--out", tmp_path / "c",
                                 "--backbone", "vit-tiny", "--weights", "random", "--quiet"))  # fmt: skip
    assert line.endswith(f"{csv}:3: column 'label' is empty; give the class, or leave its split cell empty or 'test' "
                         "to keep the video unlabelled (classified by predict, never trained on)")  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_prepare_writes_loose_videos_of_split_folders_without_a_split_so_extract_reads_them(tmp_path):
    from step_cache.datasets import prepare

    root = tmp_path / "videos"
    for path in ("train/open/a.mp4", "train/loose.mp4", "val/open/b.mp4", "val/loose.mp4", "test/loose.mp4"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    result = prepare("folder", root, tmp_path / "f.csv", progress=False)
    assert "2 unlabelled video(s) of train/val lists written without a split (predicted, never trained)" in result.notes
    assert {(i.path, i.label, i.split) for i in read_annotations(tmp_path / "f.csv")} == {
        ("train/open/a.mp4", "open", "train"), ("val/open/b.mp4", "open", "val"),
        ("train/loose.mp4", None, None), ("val/loose.mp4", None, None), ("test/loose.mp4", None, "test"),
    }  # fmt: skip
