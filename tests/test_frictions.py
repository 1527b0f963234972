"""Small frictions of a first walkthrough: ``inspect`` names the decoder."""

from __future__ import annotations

import json

import numpy as np
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


class _FakeModel:
    """encode: a frame's token is its number; classify: the sum of a window's tokens. Records batch sizes."""

    def __init__(self):
        self.batches: list[int] = []

    def encode(self, frames):
        self.batches.append(len(frames))
        return np.array([[[float(frame[0, 0, 0])]] for frame in frames])

    def classify(self, windows):
        return windows.reshape(len(windows), -1).sum(axis=1, keepdims=True)


def _answers(runner, frames: int) -> list[tuple[int, int, float]]:
    """(frame pushed, window start, logit) of every window answered, in order."""
    answers = []
    for index in range(frames):
        frame = np.full((2, 2, 3), index % 256, dtype=np.uint8)
        answers += [(index, r.window.start, float(r.logits[0])) for r in runner.push(index, frame)]
    return answers


def test_recognizer_batches_frames_yet_answers_each_window_at_its_last_frame():
    from step_cache.recognition.stream import WindowRunner
    from step_cache.recognition.windows import WindowPlan

    plan = WindowPlan(length=50, stride=12, frames=16, clips=1)  # the case: 2 s windows every 0.5 s
    one, batched = _FakeModel(), _FakeModel()
    per_frame = _answers(WindowRunner(one, plan.stream(), batch_frames=1), 200)
    runner = WindowRunner(batched, plan.stream(), batch_frames=64, when_due=True)
    due = _answers(runner, 200)
    assert due == per_frame and len(due) == 13  # the same windows, answered at the same frames, same logits
    # Each sampled frame encoded once either way (the batched runner still holds those of the pending window) ...
    assert sum(batched.batches) + len(runner.buffer) == sum(one.batches) and max(one.batches) == 1
    # ... but in one call per answered window: the first window's frames with its successors', then a stride's.
    assert batched.batches == [32] + [12] * 12
