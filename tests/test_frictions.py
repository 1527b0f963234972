"""Small frictions of a first walkthrough: ``inspect`` names the decoder."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.cache.summary import format_summary, summarize_cache
from step_cache.synthetic.tokens import write_token_cache

_register_commands()


def test_inspect_shows_the_decoder(tmp_path):
    write_token_cache(tmp_path / "cache", videos_per_class=2, dim=16)
    summary = summarize_cache(tmp_path / "cache")
    assert summary["decoder"] == "decord"  # a manifest that names no decoder was decoded with decord
    as_json = CliRunner().invoke(app, ["inspect", str(tmp_path / "cache"), "--json"])
    assert json.loads(as_json.stdout)["decoder"] == "decord"
    summary["backbone"] = {"name": "vit-tiny", "timm_model": "vit_tiny_patch16_224"}  # synthetic tokens have none
    lines = format_summary({**summary, "decoder": "pyav"}).splitlines()
    assert lines[2].startswith("  sampling   4 frames x 1 clip(s) per video") and lines[2].endswith("decoded with pyav")
