"""CUDA branches exercised on the CPU (issue 34): ``inference.autocast``'s choice of bf16 autocast, the TF32 switch
(``train_probe(tf32=...)``, recorded in config.json, restored after the run) and streaming with
``pin_memory=True`` (pinned batches where an accelerator exists; elsewhere the same batches, unpinned)."""

from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import pytest
import torch

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.inference import autocast, tf32_matmuls
from step_cache.training.streaming import StreamingTokens
from step_cache.training.token_data import batch_plan, select_tokens
from step_cache.training.trainer import train_probe

CUDA = torch.device("cuda")  # a device object needs no GPU; only running kernels on it does


def test_autocast_is_bf16_on_cuda_when_amp_and_float32_otherwise():
    with warnings.catch_warnings():  # torch disables a CUDA autocast it cannot run here, and says so
        warnings.simplefilter("ignore", UserWarning)
        chosen = autocast(CUDA, True)
    assert isinstance(chosen, torch.autocast)
    assert chosen.device == "cuda" and chosen.fast_dtype == torch.bfloat16
    for device, amp in ((CUDA, False), (torch.device("cpu"), True), (torch.device("cpu"), False)):
        assert isinstance(autocast(device, amp), contextlib.nullcontext), (device, amp)


@pytest.mark.parametrize("tf32", [True, False])
def test_the_tf32_switch_sets_cuda_matmuls_and_restores_them(tf32):
    backends = torch.backends
    before = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    with tf32_matmuls(CUDA, tf32):
        assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) == (tf32, tf32)
    assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) == before
    with pytest.raises(RuntimeError), tf32_matmuls(CUDA, not before[0]):
        raise RuntimeError("a run that fails inside")
    assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) == before
    with tf32_matmuls(torch.device("cpu"), not before[0]):  # other devices: nothing changes
        assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) == before


def test_tf32_is_recorded_and_changes_nothing_on_the_cpu(tmp_path):
    write_token_cache(tmp_path / "c", videos_per_class=4, val_every=2)
    runs = {
        tf32: train_probe(tmp_path / "c", "linear", tmp_path / f"tf32-{tf32}", epochs=2, batch_size=4, tf32=tf32,
                          progress=False)
        for tf32 in (False, True)
    }  # fmt: skip
    for tf32, result in runs.items():
        assert json.loads((result.run_dir / "config.json").read_text())["config"]["tf32"] is tf32
    assert [r["train_loss"] for r in runs[True].history] == [r["train_loss"] for r in runs[False].history]
    assert runs[True].metrics["top1"] == runs[False].metrics["top1"]


@pytest.mark.parametrize("workers", [0, 1])
def test_streaming_with_pin_memory_gives_the_same_batches_pinned_where_possible(tmp_path, workers):
    write_token_cache(tmp_path / "c", videos_per_class=4, clips_per_shard=3)
    shards = open_shards(tmp_path / "c")
    selection = select_tokens(shards.layout, "all")
    plan = batch_plan(np.arange(len(shards)), 3, shuffle=False)
    read = {}
    for pin in (False, True):
        with warnings.catch_warnings():  # without an accelerator the loader says it cannot pin, and does not
            warnings.simplefilter("ignore", UserWarning)
            source = StreamingTokens(shards, selection, shards.labels, workers=workers, pin_memory=pin)
            read[pin] = list(source.batches(plan))
        source.close()
    assert len(read[True]) == len(plan)
    for (tokens, labels, rows), (pinned, pinned_labels, pinned_rows) in zip(read[False], read[True], strict=True):
        torch.testing.assert_close(pinned, tokens, rtol=0, atol=0)
        assert torch.equal(pinned_labels, labels) and np.array_equal(pinned_rows, rows)
        assert pinned.is_pinned() == torch.cuda.is_available()  # pinned exactly where a GPU can use it
        assert not tokens.is_pinned()
