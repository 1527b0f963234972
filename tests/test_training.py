"""train_probe / evaluate / predict on small synthetic token caches: outputs, determinism, data paths, resume,
order metrics, class mapping, errors."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from tqdm import tqdm

from step_cache.cache import files
from step_cache.cache.manifest import ManifestError
from step_cache.cache.shards import ClipRecord, ShardWriter, open_shards, shard_name
from step_cache.checkpoints import load_state_dict_file
from step_cache.probes import ProbeConfigError
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import runs
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.evaluation import evaluate, predict
from step_cache.training.inference import collect_logits, evaluate_clips
from step_cache.training.metrics import average_by_video
from step_cache.training.optimization import WarmupCosine, decays
from step_cache.training.runs import RunError, read_epoch_log
from step_cache.training.splits import DataError
from step_cache.training.stacking import train_stacked
from step_cache.training.token_data import select_tokens
from step_cache.training.trainer import train_probe

FAST = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "progress": False}
TIMING = {"train_s", "data_wait_s", "clips_per_s", "eval_s"}
FINAL_TIMING = {"train_time_s", "train_clips_per_s", "data_wait_share", "wall_time_s", "data_mode"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """16 videos x 2 clips of the order task (rise_0 / fall_0), over several shards; no val split."""
    directory = tmp_path_factory.mktemp("tokens")
    write_token_cache(directory, videos_per_class=8, clips_per_video=2, clips_per_shard=10, dim=16)
    return directory


def without(record: dict, keys: set) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def same_run(a, b) -> None:
    assert [without(r, TIMING) for r in a.history] == [without(r, TIMING) for r in b.history]
    assert without(a.metrics, FINAL_TIMING) == without(b.metrics, FINAL_TIMING)
    best_a, best_b = (load_state_dict_file(r.run_dir / "best.pt") for r in (a, b))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_run_directory_is_complete_and_well_formed(cache, tmp_path):
    result = train_probe(cache, "step", tmp_path / "run", **FAST, probe_options={"dropout": 0.1})
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["lr"] == 3e-3 and config["config"]["probe_options"]["dropout"] == 0.1
    assert config["config"]["probe_options"]["frame_pos"] is True  # defaults are recorded too
    assert config["data"]["manifest_hash"] == open_shards(cache).manifest.content_hash()
    assert config["data"]["classes"] == ["rise_0", "fall_0"] and config["data"]["pairs"] == [["rise_0", "fall_0"]]
    assert config["data"]["splits"] == {"train": 26, "val": 6, "test": 0, "val_source": "val-fraction"}
    assert set(config["versions"]) >= {"step_cache", "torch"}
    lines = read_epoch_log(run)
    assert [line["epoch"] for line in lines] == [1, 2] and lines == result.history
    assert {"train_loss", "train_top1", "val_top1", "val_top5", "val_loss", "lr", "val_pair_accuracy"} <= set(lines[0])
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("top1", "top5", "mean_class_accuracy", "pair_accuracy", "reversed_top1", "shuffled_top1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["videos"] == 3 and metrics["clips"] == 6  # 2 clips per video, averaged per video
    assert np.sum(metrics["confusion_matrix"]) == 3 and set(metrics["per_class_accuracy"]) == {"rise_0", "fall_0"}
    assert 0 < metrics["parameters_without_head"] < metrics["parameters"]
    assert metrics["train_clips_per_s"] > 0 and metrics["best_epoch"] in (1, 2)
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values()) and "head.weight" in state
    assert "val top-1" in result.summary() and "params" in result.summary()


def test_same_seed_same_run_other_seed_other_run(cache, tmp_path):
    options = {**FAST, "probe_options": {"dropout": 0.2}}
    a = train_probe(cache, "step", tmp_path / "a", seed=1, **options)
    b = train_probe(cache, "step", tmp_path / "b", seed=1, **options)
    same_run(a, b)
    c = train_probe(cache, "step", tmp_path / "c", seed=2, **options)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_streaming_and_in_memory_train_identically(cache, tmp_path, monkeypatch):
    import step_cache.training.trainer as trainer

    options = {**FAST, "probe_options": {"dropout": 0.1}}
    eval_batches = []
    monkeypatch.setattr(trainer, "evaluate_clips", lambda *a, **kw: eval_batches.append(kw["batch_size"]) or
                        evaluate_clips(*a, **kw))  # fmt: skip
    memory = train_probe(cache, "attentive", tmp_path / "m", data="memory", **options)
    in_memory, eval_batches[:] = set(eval_batches), []
    streaming = train_probe(cache, "attentive", tmp_path / "s", data="streaming", workers=1, **options)
    assert memory.metrics["data_mode"] == "memory" and streaming.metrics["data_mode"] == "streaming"
    same_run(memory, streaming)
    # evaluated in batches of 4 x the training batch in memory, of the training batch itself when streamed (each
    # reader holds PREFETCH batches read ahead, sized for the training batch): the same results
    assert in_memory == {4 * FAST["batch_size"]} and set(eval_batches) == {FAST["batch_size"]}


class Killed(Exception):
    pass


@pytest.mark.parametrize("progress", [False, True])
def test_progress_postfix_reads_the_device_only_every_10_batches_and_never_without_a_bar(
    cache, tmp_path, monkeypatch, progress
):
    """The postfix reads the loss and top-1 sums back (a device sync): never with the bar off, else at batches
    10, 20, ... and the last; the same for a stacked sweep."""
    calls = []
    monkeypatch.setattr(tqdm, "set_postfix", lambda self, *args, **kwargs: calls.append(self.desc))
    options = {**FAST, "batch_size": 2, "progress": progress}  # 26 train clips: 13 batches per epoch
    train_probe(cache, "linear", tmp_path / "run", **options)
    assert len(calls) == (2 * 2 if progress else 0)  # batches 10 and 13 of each epoch
    calls.clear()
    train_stacked(cache, [make_config("linear", {**options, "lr": lr}) for lr in (1e-3, 1e-2)])
    assert len(calls) == (2 * 2 if progress else 0)


def test_weights_and_state_files_are_renamed_into_place_then_the_directory_is_synced(tmp_path, monkeypatch):
    """Without the directory fsync after the rename, a crash can forget that best.pt / last_state.pt exist."""
    synced = []
    # run files are written by cache.files.atomic_write_bytes, which syncs the directory after the rename
    monkeypatch.setattr(files, "fsync_dir", lambda directory: synced.append((directory, sorted(os.listdir(directory)))))
    runs.save_weights(nn.Linear(2, 2), tmp_path / runs.BEST)
    runs.save_state({"epoch": 1}, tmp_path / runs.STATE)
    assert synced == [(tmp_path, [runs.BEST]), (tmp_path, [runs.BEST, runs.STATE])]  # renamed, no temporary left
    assert runs.load_state(tmp_path / runs.STATE) == {"epoch": 1}


def test_resume_continues_exactly(cache, tmp_path):
    options = {**FAST, "epochs": 4, "probe_options": {"dropout": 0.2}, "warmup_epochs": 2.0}
    straight = train_probe(cache, "step", tmp_path / "straight", **options)

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_probe(cache, "step", tmp_path / "resumed", on_epoch=kill_after_two, **options)
    assert len(read_epoch_log(tmp_path / "resumed")) == 2 and not (tmp_path / "resumed" / "metrics.json").exists()
    with pytest.raises(RunError, match="already holds a run"):
        train_probe(cache, "step", tmp_path / "resumed", **options)
    with pytest.raises(RunError, match=r"lr: 0.003 in the run, 0.001 now"):
        train_probe(cache, "step", tmp_path / "resumed", resume=True, **{**options, "lr": 1e-3})
    # A kill after the state commit but before the derived files: last.pt missing, metrics.jsonl one line short.
    (tmp_path / "resumed" / "last.pt").unlink()
    log = tmp_path / "resumed" / "metrics.jsonl"
    log.write_text(log.read_text().splitlines()[0] + "\n")
    seen = []
    resumed = train_probe(cache, "step", tmp_path / "resumed", resume=True, on_epoch=seen.append, **options)
    assert [r["epoch"] for r in seen] == [3, 4]  # only the missing epochs ran
    same_run(straight, resumed)
    again = train_probe(cache, "step", tmp_path / "resumed", resume=True, **options)  # complete: nothing to do
    assert again.metrics == resumed.metrics


class FirstVersusLast(nn.Module):
    """An order-sensitive stand-in probe: 'rise' when channel 0 grows from the first to the last frame."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1, 1)

    def forward(self, tokens):
        delta = (tokens[:, -1, :, 0] - tokens[:, 0, :, 0]).mean(dim=1)
        return torch.stack([delta, -delta], dim=1)


def test_order_metrics_of_an_order_sensitive_rule(tmp_path):
    write_token_cache(tmp_path, videos_per_class=6, noise=0.05, frames=6)
    shards = open_shards(tmp_path)
    from step_cache.training.token_data import InMemoryTokens

    indices = np.arange(len(shards))
    source = InMemoryTokens(shards, indices, select_tokens(shards.layout), shards.labels)
    metrics = evaluate_clips(FirstVersusLast(), source, indices, shards.labels, shards.videos, shards.classes, [(0, 1)])
    assert metrics["top1"] == 1.0 and metrics["pair_accuracy"] == 1.0
    assert metrics["reversed_top1"] == 0.0 and metrics["reversed_pair_accuracy"] == 0.0
    logits = collect_logits(FirstVersusLast(), source, indices, order="reversed")
    # Reversing swaps first and last frame: a - b becomes b - a, the exact negation in IEEE arithmetic (and so are
    # the mean over the same tokens in the same order, and the stacked [delta, -delta]).
    np.testing.assert_array_equal(logits, -collect_logits(FirstVersusLast(), source, indices))


def test_invariant_probe_scores_the_same_in_any_frame_order(cache, tmp_path):
    result = train_probe(cache, "linear", tmp_path / "lin", **FAST)
    metrics = result.metrics
    assert metrics["reversed_top1"] == metrics["top1"] == metrics["shuffled_top1"]
    assert metrics["reversed_pair_accuracy"] == metrics["pair_accuracy"]


def test_step_learns_order_that_invariant_probes_cannot(tmp_path):
    # 16 val videos. STEP goes from chance to 100 % around epoch 15 here (its frame embedding starts near zero).
    write_token_cache(tmp_path, videos_per_class=32, noise=0.2, signal=2.0, dim=8, val_every=4)
    options = {"epochs": 20, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "progress": False}
    step = train_probe(tmp_path, "step", tmp_path / "step", **options).metrics
    linear = train_probe(tmp_path, "linear", tmp_path / "linear", **options).metrics
    assert step["top1"] >= 0.95 and step["pair_accuracy"] >= 0.95 and step["reversed_pair_accuracy"] <= 0.05
    assert linear["top1"] <= 0.8  # chance is 0.5: the frame multiset is the same for both classes
    assert linear["reversed_top1"] == linear["top1"]


def test_evaluate_maps_classes_by_name(cache, tmp_path):
    run = tmp_path / "run"
    train_probe(cache, "step", run, **FAST)
    reference = evaluate(run, cache, split="val")
    assert reference["top1"] == json.loads((run / "metrics.json").read_text())["top1"]
    # The same val clips in a cache whose class list is reordered and has an extra class the probe never saw.
    shards = open_shards(cache)
    val = np.sort(np.array([i for i in range(len(shards)) if shards.videos[i] in set(_val_videos(run, cache))]))
    other = tmp_path / "other"
    other.mkdir()
    manifest = shards.manifest.__class__(
        extraction=shards.manifest.extraction, classes=["fall_0", "rise_0", "wave"], pairs=[]
    )
    writer = ShardWriter(other, shard_name(0), shards.layout, shards.manifest.frames)
    for i in val:
        name = shards.classes[shards.labels[i]]
        writer.append(_record(shards, i, ["fall_0", "rise_0", "wave"].index(name)))
    for i in val[:3]:
        writer.append(_record(shards, i, 2, video=f"wave/{i}.mp4"))
    manifest.shards.append(writer.finish())
    from step_cache.cache.manifest import write_manifest

    write_manifest(other, manifest)
    mapped = evaluate(run, other)
    assert mapped["excluded_classes"] == {"wave": 3} and mapped["excluded_clips"] == 3
    for key in ("top1", "top5", "confusion_matrix", "per_class_accuracy", "pair_accuracy", "reversed_top1"):
        assert mapped[key] == reference[key], key


def _val_videos(run, cache):
    from step_cache.training.splits import select_splits

    config = json.loads((run / "config.json").read_text())["config"]
    shards = open_shards(cache)
    chosen = select_splits(shards.labels, shards.splits, shards.videos, config["val_fraction"], config["seed"])
    return shards.videos[chosen.val]


def _record(shards, index, label, video=None):
    return ClipRecord(
        shards.read_tokens([index])[0], label, video or str(shards.videos[index]), int(shards.clip_index[index]),
        "", shards.frame_indices[index], int(shards.num_frames[index]), False,
    )  # fmt: skip


def test_predict_writes_per_video_top_k(cache, tmp_path):
    run = tmp_path / "run"
    train_probe(cache, "self-attentive", run, **FAST)
    path = predict(run, cache, tmp_path / "preds.csv", top_k=5)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    shards = open_shards(cache)
    columns = ["video", "clips", "label", "short", "class_1", "prob_1", "class_2", "prob_2"]
    assert len(rows) == 16 and list(rows[0]) == columns and {r["short"] for r in rows} == {"False"}
    assert all(r["clips"] == "2" and r["label"] == r["video"].split("/")[0] for r in rows)
    from step_cache.training.evaluation import load_probe
    from step_cache.training.token_data import InMemoryTokens

    _, probe = load_probe(run)
    indices = np.arange(len(shards))
    source = InMemoryTokens(shards, indices, select_tokens(shards.layout), shards.labels)
    video_logits, keys, _ = average_by_video(collect_logits(probe, source, indices), shards.videos)
    probabilities = torch.softmax(torch.from_numpy(video_logits), 1).numpy()
    for row, key, p in zip(rows, keys, probabilities, strict=True):
        assert row["video"] == key
        best = int(np.argmax(p))
        # The CSV has 6 decimals: each probability is off by at most 5e-7 from the same softmax computed here.
        assert row["class_1"] == shards.classes[best] and float(row["prob_1"]) == pytest.approx(p[best], abs=1e-6)
        assert float(row["prob_1"]) >= float(row["prob_2"]) and float(row["prob_1"]) + float(row["prob_2"]) == (
            pytest.approx(1.0, abs=1e-5)
        )


def test_clear_errors(cache, tmp_path):
    with pytest.raises(ProbeConfigError, match="unknown probe 'mamba'"):
        train_probe(cache, "mamba", tmp_path / "x", **FAST)
    with pytest.raises(ProbeConfigError, match="has no option frame_pos"):
        train_probe(cache, "linear", tmp_path / "x", probe_options={"frame_pos": False}, **FAST)
    with pytest.raises(TrainConfigError, match="unknown training option"):
        train_probe(cache, "step", tmp_path / "x", learning_rate=1.0)
    with pytest.raises(DataError, match="no validation clips"):
        train_probe(cache, "step", tmp_path / "x", val_fraction=0.0, **FAST)
    with pytest.raises(ManifestError, match="no manifest"):
        train_probe(tmp_path / "missing", "step", tmp_path / "x", **FAST)
    unlabelled = tmp_path / "unlabelled"
    write_token_cache(unlabelled, videos_per_class=2)
    _set_labels(unlabelled, -1)
    with pytest.raises(DataError, match="no training clips"):
        train_probe(unlabelled, "step", tmp_path / "x", **FAST)
    other = tmp_path / "other_classes"
    write_token_cache(other, videos_per_class=2, num_classes=4)
    with pytest.raises(ManifestError, match="classes"):
        train_probe([cache, other], "step", tmp_path / "x", **FAST)
    with pytest.raises(RunError, match=r"config\.json: missing"):
        evaluate(tmp_path, cache)
    longer = tmp_path / "eight_frames"
    write_token_cache(longer, videos_per_class=2, frames=8)
    run = tmp_path / "run"
    train_probe(cache, "linear", run, **{**FAST, "epochs": 1})
    with pytest.raises(ManifestError, match=r"sampling\.frames: 4 != 8"):
        evaluate(run, longer)


def _set_labels(directory, value):
    import h5py

    from step_cache.cache.files import file_sha256
    from step_cache.cache.manifest import read_manifest, write_manifest

    for path in sorted(directory.glob("shard-*.h5")):
        with h5py.File(path, "a") as handle:
            handle["labels"][...] = value
    # record the new bytes, as a cache written this way would: readers refuse shards changed behind the manifest
    manifest = read_manifest(directory)
    for record in manifest.shards:
        record.bytes = (directory / record.file).stat().st_size
        record.sha256 = file_sha256(directory / record.file)
    write_manifest(directory, manifest)


def test_weight_decay_groups_and_schedule():
    assert decays("blocks.0.attn.qkv.weight", torch.zeros(3, 3))
    for name, shape in [("head.bias", (3,)), ("norm.weight", (3,)), ("frame_pos", (1, 4, 1, 3)), ("query", (1, 1, 3))]:
        assert not decays(name, torch.zeros(shape)), name
    schedule = WarmupCosine(total_steps=10, warmup_steps=4)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0 and schedule(7) == pytest.approx(0.5) and 0 < schedule(9) < 0.1


def test_linear_probe_reads_only_cls_tokens_by_default(cache, tmp_path):
    auto = train_probe(cache, "linear", tmp_path / "auto", **FAST)
    every = train_probe(cache, "linear", tmp_path / "all", tokens="all", **FAST)
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["config"]["tokens"] == "auto" and config["data"]["tokens"]["subset"] == "cls"
    assert config["data"]["tokens"]["tokens_per_frame"] == 1
    assert [without(r, TIMING) for r in auto.history] == [without(r, TIMING) for r in every.history]
    # The same computation on the same CLS tokens (only where they are stored differs): equal, as the history is.
    assert auto.metrics["top1"] == every.metrics["top1"] and auto.metrics["loss"] == every.metrics["loss"]
    # evaluate rebuilds the probe with the run's token subset
    assert evaluate(tmp_path / "auto", cache, split="val")["top1"] == auto.metrics["top1"]
