"""No host stalls in the hot loops: device syncs and host tensors counted (step_cache.host_traffic) per training
step (single and stacked), per validation pass and per extraction batch, on the CPU with the code the GPU runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from step_cache.cache.shards import open_shards
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.frame_batches import FrameBatcher, PendingVideo, TokenComputer
from step_cache.host_traffic import HostTraffic
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import make_config
from step_cache.training.inference import forward_batches
from step_cache.training.splits import HOLDOUT_GROUPS
from step_cache.training.stacking import member_optim
from step_cache.training.stacking.adamw import StackedAdamW
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import StackedRun
from step_cache.training.token_data import batch_plan
from step_cache.training.trainer import _Run

# What an epoch reads back once, whatever its length: the loss, top-1 and finiteness sums (epoch_loop.train_epoch's
# three .tolist()) and, for a single run, the divergence check (one .item()). A device-held pass also uploads its
# batch plan once (device_tokens). Anything per step would make the event lists of a 2- and a 6-batch epoch differ.
PER_EPOCH = [
    ("sync", "Tensor.tolist", "train_epoch"),
    ("sync", "Tensor.tolist", "train_epoch"),
    ("sync", "Tensor.tolist", "train_epoch"),
]
DIVERGENCE_CHECK = [("sync", "aten._local_scalar_dense", "_raise_if_diverged")]
PLAN_UPLOAD = [("host tensor", "aten.lift_fresh", "batches")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """3 classes x 10 videos, every 5th video val: 24 training clips of 4 frames x 5 tokens x D = 16."""
    directory = tmp_path_factory.mktemp("traffic") / "shards"
    write_token_cache(directory, task="static", num_classes=3, videos_per_class=10, dim=16, val_every=5)
    return directory


def summary(traffic: HostTraffic) -> list[tuple[str, str, str]]:
    return sorted((e.kind, e.op, e.where.rsplit(" ", 1)[-1]) for e in traffic.events)


def single_epoch_traffic(cache: Path, data: str, batch_size: int, **options) -> list[tuple[str, str, str]]:
    shards = open_shards(cache)
    config = make_config("step", {"epochs": 3, "batch_size": batch_size, "progress": False, "data": data,
                                  "clip_grad": 1.0, **options})  # fmt: skip
    run = _Run(shards, config, Path(tempfile.mkdtemp()), HOLDOUT_GROUPS)
    run.build_optimizer()
    run.open_data()
    run.train_epoch(0)  # the first step creates the optimizer's state
    # torch's AdamW keeps its step counters on the host (capturable=False): reading them is no device sync
    host_steps = [state["step"] for state in run.optimizer.state.values() if "step" in state]  # SGD has none
    with HostTraffic(exempt=host_steps) as traffic:
        run.train_epoch(1)
    run.source.close()
    return summary(traffic)


@pytest.mark.parametrize("data", ["device", "memory"])
@pytest.mark.parametrize(
    "options", [{}, {"token_drop": 0.25}, {"optimizer": "sgd"}], ids=["plain", "token-drop", "sgd"]
)
def test_single_training_step_makes_no_host_tensor_and_no_sync(cache, data, options):
    long, short = (single_epoch_traffic(cache, data, size, **options) for size in (4, 12))  # 6 and 2 batches
    assert long == short
    assert long == sorted(PER_EPOCH + DIVERGENCE_CHECK + (PLAN_UPLOAD if data == "device" else []))


def stacked_epoch_traffic(
    cache: Path, data: str, batch_size: int, optimizer: str = "adamw"
) -> list[tuple[str, str, str]]:
    base = {"epochs": 3, "batch_size": batch_size, "progress": False, "data": data, "optimizer": optimizer}
    configs = [
        make_config("step", {**base, "clip_grad": clip, "seed": seed, "lr": lr})
        for seed, lr, clip in ((0, 1e-3, 1.0), (1, 3e-3, 0.0), (2, 1e-2, 0.5))
    ]
    cache_data = DataCache(open_shards(cache))
    run = StackedRun(cache_data.get(configs[0]), configs)
    run.train_epoch(0)
    with HostTraffic() as traffic:
        run.train_epoch(1)
    cache_data.close()
    return summary(traffic)


@pytest.mark.parametrize("data", ["device", "memory"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_stacked_training_step_makes_no_host_tensor_and_no_sync(cache, data, optimizer):
    long, short = (stacked_epoch_traffic(cache, data, size, optimizer) for size in (4, 12))
    assert long == short
    assert long == sorted(PER_EPOCH + (PLAN_UPLOAD if data == "device" else []))


def test_stacked_adamw_uploads_its_schedule_once_per_chunk(monkeypatch):
    """Per-member scalars come from a device table refreshed every SCHEDULE_CHUNK steps (and after keep): one
    host tensor at each refresh, none in between, and the same weights as with any other chunk size."""
    monkeypatch.setattr(member_optim, "SCHEDULE_CHUNK", 3)
    results = {}
    for chunk in (3, 256):
        monkeypatch.setattr(member_optim, "SCHEDULE_CHUNK", chunk)
        params = {"w": torch.ones(2, 4, requires_grad=True), "bias": torch.zeros(2, 4, requires_grad=True)}
        optimizer = StackedAdamW(params, lr=[1e-2, 3e-2], weight_decay=[0.1, 0.0], warmup_steps=[2, 0],
                                 clip_grad=[1.0, 0.0], total_steps=8)  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        uploads = []
        for _ in range(8):
            for p in params.values():
                p.grad = torch.randn(p.shape, generator=generator)
            with HostTraffic() as traffic:
                optimizer.clip_gradients(params)
                optimizer.step(params)
            uploads.append(len(traffic.events))
        results[chunk] = {name: p.detach().clone() for name, p in params.items()}
        if chunk == 3:
            # steps 0, 3, 6 refresh the table (and step 0 makes the clip limits)
            assert uploads == [2, 0, 0, 1, 0, 0, 1, 0]
    assert all(torch.equal(results[3][name], results[256][name]) for name in results[3])


@pytest.mark.parametrize("data", ["device", "memory"])
def test_validation_pass_reads_back_once(cache, data):
    shards = open_shards(cache)
    config = make_config("step", {"epochs": 1, "batch_size": 4, "progress": False, "data": data})
    run = _Run(shards, config, Path(tempfile.mkdtemp()), HOLDOUT_GROUPS)
    run.open_data()
    counts = []
    for batch_size in (1, 4):  # 6 batches, then 2
        with HostTraffic() as traffic:
            outputs = forward_batches(run.model, run.source, run.splits.val, batch_size=batch_size,
                                      device=run.device, amp=False, order="reversed")  # fmt: skip
        counts.append(summary(traffic))
        plan = batch_plan(run.splits.val, batch_size, shuffle=False)
        assert [len(o) for o in outputs] == [len(b) for b in plan] and len(plan) == {1: 6, 4: 2}[batch_size]
    run.source.close()
    assert counts[0] == counts[1]
    # one copy back of every batch's logits at the end, the frame order once per pass, (device) the plan once
    expected = [("sync", "Tensor.cpu", "forward_batches"), ("host tensor", "aten.lift_fresh", "forward_batches")]
    assert counts[0] == sorted(expected + (PLAN_UPLOAD if data == "device" else []))


@pytest.mark.parametrize("in_flight", [False, True], ids=["synchronous", "in-flight"])
def test_extraction_batch_moves_its_frames_and_tokens_only(in_flight):
    """Per backbone batch: the frames go up once (from_numpy) and the tokens come back once (numpy); the
    normalisation constants are made once per device, not per batch. ``in_flight`` runs the CUDA branch (streams,
    pinned buffers, one batch in flight) through the CPU fake of step_cache.streams."""
    backbone = load_backbone("vit-tiny", weights="random", image_size=32)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for n in (5, 7, 4, 8)]  # 24 frames
    reference = TokenComputer(backbone, torch.device("cpu"), "float16")
    expected = [reference(v)[0].numpy() for v in videos]  # one video per call: no batching at all
    computer = TokenComputer(backbone, torch.device("cpu"), "float16", in_flight=in_flight)
    batcher = FrameBatcher(6, computer)
    finished = []
    with HostTraffic() as traffic:
        for index, frames in enumerate(videos):
            finished += batcher.add(PendingVideo(payload=index, frames=frames))
        finished += batcher.flush()
    batches = 24 // 6
    assert sorted(e.op for e in traffic.events) == ["Tensor.numpy"] * batches + ["aten.lift_fresh"] * batches
    assert [v.payload for v in finished] == [0, 1, 2, 3]
    for video in finished:  # the tokens are the per-video ones, bit for bit, whichever batches they rode in
        np.testing.assert_array_equal(video.tokens, expected[video.payload])


def test_counter_sees_syncs_and_host_tensors_and_honours_exempt():
    device_value, host_step = torch.ones(3), torch.zeros(())
    with HostTraffic(exempt=[host_step]) as traffic:
        device_value.sum().item()
        device_value.tolist()
        bool(device_value[0] > 0)
        device_value[device_value > 0]  # boolean mask: its shape is a device value
        torch.tensor([1.0, 2.0])
        host_step.item()  # exempt
        device_value * 2.0  # a Python scalar is a kernel argument, not a copy
    assert [e.op for e in traffic.syncs] == [
        "aten._local_scalar_dense", "Tensor.tolist", "aten._local_scalar_dense", "aten.index",
    ]  # fmt: skip
    assert [e.op for e in traffic.host_tensors] == ["aten.lift_fresh"]
    assert torch.Tensor.tolist is not None and "counted" not in torch.Tensor.tolist.__qualname__  # restored
