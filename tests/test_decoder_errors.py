"""Damaged video data: an mp4 whose every 500th byte of frame data is inverted still opens and decodes, with
FFmpeg reporting "error while decoding MB ...". Those errors are counted per video (decord through file
descriptor 2, PyAV through its log), recorded in the manifest (inspect and verify list the video), ``--strict``
stops on it and ``--max-decode-errors`` skips it; clean videos get no such record."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import TINY
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.cache.manifest import read_manifest
from step_cache.cache.summary import format_summary, summarize_cache
from step_cache.cache.verify import verify_cache
from step_cache.cache.writer import ExtractionError
from step_cache.extraction.decoder_errors import is_error_line
from step_cache.extraction.engine import extract
from step_cache.synthetic.videos import write_class_folders

_register_commands()


def invert_frame_data(src: Path, dst: Path, every: int = 500) -> None:
    """Copy ``src`` with every ``every``-th byte of its ``mdat`` box (the coded frames) inverted: the container
    still opens, the frames decode with errors."""
    data = bytearray(src.read_bytes())
    position = 0
    while position + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"mdat":
            for i in range(position + 8 + every, position + size, every):
                data[i] ^= 0xFF
        position += max(size, 8)
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    write_class_folders(root, {"left": -1, "right": 1}, videos_per_class=2, num_frames=40)
    invert_frame_data(root / "left" / "left_0.mp4", root / "left" / "flipped.mp4")
    return root


@pytest.mark.parametrize("decoder, workers", [("decord", 0), ("decord", 1), ("pyav", 0)])
def test_a_bit_flipped_mp4_is_recorded_with_its_decoder_errors(videos, tmp_path, decoder, workers):
    out = tmp_path / "cache"
    report = extract(videos, out, **{**TINY, "workers": workers, "decoder": decoder})
    manifest = read_manifest(out)
    assert manifest.num_videos == 5 and not manifest.failures
    damaged = {w.video: w for w in manifest.warnings}
    assert set(damaged) == {"left/flipped.mp4"}, damaged  # the clean videos have no record
    warning = damaged["left/flipped.mp4"]
    assert warning.decode_errors > 0 and "decoder error(s)" in warning.reason
    assert "frames may be wrong" in warning.reason
    assert [w.video for w in report.warnings] == ["left/flipped.mp4"]
    shown = format_summary(summarize_cache(out))
    assert "damaged data (decoder errors)" in shown and "left/flipped.mp4: " in shown
    verified = verify_cache(out)
    assert verified.ok and any("left/flipped.mp4" in w and "decoder error(s)" in w for w in verified.warnings)


def test_strict_stops_on_decoder_errors_and_a_threshold_skips_the_video(videos, tmp_path):
    with pytest.raises(ExtractionError, match=r"\(strict=True\): .*flipped.mp4: \d+ decoder error\(s\)"):
        extract(videos, tmp_path / "strict", **{**TINY, "strict": True})
    result = CliRunner().invoke(app, ["extract", "--videos", str(videos), "--out", str(tmp_path / "skip"),
                                      "--backbone", "vit-tiny", "--weights", "random", "--frames", "4",
                                      "--image-size", "32", "--workers", "0", "--quiet",
                                      "--max-decode-errors", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "skip")
    assert manifest.num_videos == 4 and [f.video for f in manifest.failures] == ["left/flipped.mp4"]
    assert "more than --max-decode-errors 0" in manifest.failures[0].reason
    # A generous threshold keeps it, recorded.
    extract(videos, tmp_path / "keep", **{**TINY, "max_decode_errors": 10**6})
    assert [w.video for w in read_manifest(tmp_path / "keep").warnings] == ["left/flipped.mp4"]


def test_ffmpeg_error_lines_are_told_from_other_output():
    assert is_error_line("[h264 @ 0x55a0b5f028c0] error while decoding MB 2 0, bytestream 3606") is not None
    assert is_error_line("[h264 @ 0x55a0b5f0e400] concealing 120 DC, 120 AC, 120 MV errors in P frame") is not None
    assert is_error_line("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5566] stream 0, timescale not set") is None
    assert is_error_line("some other program's line with an error") is None
