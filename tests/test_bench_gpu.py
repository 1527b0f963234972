"""bench/gpu.py, the command to run the first time a GPU is lent, runs end to end on the CPU at tiny sizes: every
section's figures are there and sane, and a section past its timeout is reported, not fatal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def run(*options: str, timeout: float = 900) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--small", "--device", "cpu", "--json", "-", *options],
        capture_output=True, text=True, timeout=timeout, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_every_section_runs_on_the_cpu_and_reports_sane_figures():
    report = run("--in-process")
    assert report["machine"]["cuda"] is False and report["machine"]["small"] is True
    sections = ("backbone", "copies", "host", "extract", "tokens", "train", "stacked", "tf32")
    assert all(name in report and "error" not in report[name] for name in sections), report
    backbone = report["backbone"]
    assert backbone["ceiling_frames_per_s"] > 0 and backbone["gflops_per_frame"] > 0 and backbone["mfu"] is None
    assert backbone["token_computer_over_ceiling"] > 0
    assert report["copies"]["host_copy_gb_s"] > 0 and report["copies"]["h2d_pinned_gb_s"] is None
    host = report["host"]
    for key in ("int8_quantise_gb_s", "int8_quantise_device_gb_s", "shard_write_gb_s", "shard_finish_fsync_hash_gb_s",
                "sha256_gb_s", "pipe_pickle_gb_s", "concatenate_gb_s", "decode_pool_480p_frames_per_s"):  # fmt: skip
        assert host[key] > 0, key
    assert host["torchcodec_cuda_frames_per_s"] is None  # CUDA only
    decord = report["extract"]["decord"]
    assert decord["frames_per_s"] > 0 and decord["over_ceiling"] > 0 and decord["gpu_utilisation_percent"] is None
    tokens = report["tokens"]
    assert tokens["numpy_gather_gb_s"] > 0 and tokens["pinned_copy_gb_s"] is None
    streaming = {key: value for key, value in tokens.items() if key.startswith("streaming_")}
    assert "streaming_4_readers_gb_s" in streaming and all(value > 0 for value in streaming.values())
    train = report["train"]
    # the same seed through both data paths: the same run
    assert train["device"]["test_top1"] == train["memory"]["test_top1"]
    assert all(0 <= train[d]["data_wait_share"] < 1 and train[d]["clips_per_s"] > 0 for d in ("device", "memory"))
    stacked = report["stacked"]
    for members in ("k1", "k16"):  # the stacked step: no device sync, no host tensor
        assert stacked[members]["syncs"] == 0 and stacked[members]["host_tensors"] == 0
    assert stacked["k16_over_k1"] > 0
    tf32 = report["tf32"]  # no TF32 nor bf16 autocast here on a CPU: every run is float32
    assert tf32["max_logit_difference"] == 0.0 and tf32["max_logit_difference_bf16_autocast"] == 0.0


def test_a_section_past_its_timeout_is_reported_and_the_others_still_run():
    report = run("--sections", "copies,tf32", "--timeout-scale", "0.0001", timeout=300)
    assert report["copies"] == {"error": "timed out after 0 s"}
    assert report["tf32"] == {"error": "timed out after 0 s"}
    assert set(report) == {"machine", "copies", "tf32"}
