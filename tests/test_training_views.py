"""Training on cached augmented views (extract --views): clean-only splits and evaluation, one view per clip and
epoch drawn by (seed, epoch), resume, stacked members, --seeds, streaming, the CLI and the sweep parameter."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sweeps import assert_same_as_lone_run
from test_training import TIMING, same_run, without

from step_cache.cache.shards import open_shards
from step_cache.checkpoints import load_state_dict_file
from step_cache.sweeps.space import SweepSpaceError, build_space
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import trainer
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.evaluation import evaluate, predict
from step_cache.training.runs import read_epoch_log
from step_cache.training.splits import select_splits, shard_splits
from step_cache.training.stacking import group_by_shape, train_stacked
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.trainer import train_probe
from step_cache.training.view_table import clean_rows, epoch_plan, view_table

FAST = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}
# 2 classes (a mirrored pair) x 8 videos x 2 clips, every 4th video a test video, val held out by val_fraction;
# views=2: every training clip also has two noisy views. Several shards, so views straddle shard reads.
SPEC = {"videos_per_class": 8, "clips_per_video": 2, "test_every": 4, "clips_per_shard": 10, "dim": 16}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """(with views, the same cache without views): the clean tokens are the same in both."""
    root = tmp_path_factory.mktemp("views")
    write_token_cache(root / "views", views=2, **SPEC)
    write_token_cache(root / "clean", **SPEC)
    return root / "views", root / "clean"


def clip_keys(shards, rows) -> list[tuple[str, int]]:
    return [(str(shards.videos[r]), int(shards.clip_index[r])) for r in rows]


def test_splits_count_clean_views_only_and_match_the_cache_without_views(caches):
    views, clean = (open_shards(c) for c in caches)
    assert len(views) == len(clean) + 2 * (len(shard_splits(clean).train) + len(shard_splits(clean).val))
    for seed in (0, 3):
        with_views, without_views = shard_splits(views, 0.25, seed), shard_splits(clean, 0.25, seed)
        assert with_views.counts() == without_views.counts()
        for split in ("train", "val", "test"):
            rows = getattr(with_views, split)
            assert set(views.views[rows].tolist()) == {0}
            assert clip_keys(views, rows) == clip_keys(clean, getattr(without_views, split))  # same clips, same order
            assert np.array_equal(views.read_tokens(rows[:4]), clean.read_tokens(getattr(without_views, split)[:4]))
        # The held-out val videos' views are never trained on: every view drawn belongs to a training video.
        table = view_table(views, with_views.train, "on")
        train_videos = set(views.videos[with_views.train].tolist())
        held_out = set(views.videos[with_views.val].tolist())
        assert held_out and not held_out & train_videos
        assert set(views.videos[table.augmented_rows].tolist()) == train_videos
    # Without views= a caller sees every row as a clip: the views would be taken for clips (what views= prevents).
    assert len(select_splits(views.labels, views.splits, views.videos).train) > len(with_views.train)


def test_each_epoch_draws_one_view_per_clip_uniformly_and_deterministically(caches):
    shards = open_shards(caches[0])
    train = shard_splits(shards).train
    table = view_table(shards, train, "on")
    assert table.available == 2 and table.counts.tolist() == [3] * len(train)
    used = np.zeros((len(train), 3), dtype=int)
    for epoch in range(40):
        drawn = table.draw(seed=0, epoch=epoch)
        assert clip_keys(shards, drawn) == clip_keys(shards, train)  # one of each clip's own views, in clip order
        assert np.array_equal(drawn, table.draw(seed=0, epoch=epoch))  # keyed by (seed, epoch) alone
        used[np.arange(len(train)), shards.views[drawn]] += 1
        plan = np.concatenate(epoch_plan(table, 8, seed=0, epoch=epoch))
        assert sorted(plan.tolist()) == sorted(drawn.tolist())  # every clip once per epoch, as one of its views
    assert (used > 0).all()  # every view of every clip, the clean one included, is trained on
    share = used.sum(axis=0) / used.sum()
    assert np.all(np.abs(share - 1 / 3) < 0.05), share  # uniform over 1 + N (800 draws per view: sd 0.017)
    assert not np.array_equal(table.draw(0, 0), table.draw(1, 0))
    assert not np.array_equal(table.draw(0, 0), table.draw(0, 1))
    off = view_table(shards, train, "off")
    assert not off.enabled and len(off.augmented_rows) == 0 and np.array_equal(off.draw(0, 5), train)
    # The plan without views is exactly the clean batch plan: a view only takes its clip's place.
    on, plain = epoch_plan(table, 8, 0, 2), epoch_plan(off, 8, 0, 2)
    assert [clip_keys(shards, b) for b in on] == [clip_keys(shards, b) for b in plain]


def test_views_off_trains_and_evaluates_exactly_like_the_cache_without_views(caches, tmp_path):
    views, clean = caches
    off = train_probe(views, "step", tmp_path / "off", views="off", **FAST)
    plain = train_probe(clean, "step", tmp_path / "plain", **FAST)
    assert [without(r, TIMING) for r in off.history] == [without(r, TIMING) for r in plain.history]
    assert without(off.metrics, {"train_time_s", "train_clips_per_s", "data_wait_share", "wall_time_s"}) == without(
        plain.metrics, {"train_time_s", "train_clips_per_s", "data_wait_share", "wall_time_s"}
    )
    record = json.loads((tmp_path / "off" / "config.json").read_text())
    assert record["config"]["views"] == "off"
    assert record["data"]["views_per_clip"] == 2 and record["data"]["views_used"] is False
    assert record["data"]["splits"] == json.loads((tmp_path / "plain" / "config.json").read_text())["data"]["splits"]
    plain_record = json.loads((tmp_path / "plain" / "config.json").read_text())["data"]
    assert plain_record["views_per_clip"] == 0 and plain_record["views_used"] is False  # "on" is a no-op there
    # With views the training differs; the evaluated clips do not.
    on = train_probe(views, "step", tmp_path / "on", **FAST)
    assert on.history[0]["train_loss"] != off.history[0]["train_loss"]
    (on_seed,), (off_seed,) = on.metrics["per_seed"], off.metrics["per_seed"]
    assert on_seed["val"]["clips"] == off_seed["val"]["clips"] and on_seed["test"]["clips"] == off_seed["test"]["clips"]
    data = json.loads((tmp_path / "on" / "config.json").read_text())["data"]
    assert data["views_used"] is True and data["training_views"] == 2 * data["splits"]["train"]
    assert data["schedule"]["optimizer_steps"] == plain_record["schedule"]["optimizer_steps"]  # epochs of clips


def test_the_trainer_trains_on_the_views_drawn_for_each_epoch(caches, tmp_path, monkeypatch):
    seen = []
    real = trainer.epoch_plan

    def spy(table, batch_size, seed, epoch, *order):
        plan = real(table, batch_size, seed, epoch, *order)
        seen.append((table, seed, epoch, plan))
        return plan

    monkeypatch.setattr(trainer, "epoch_plan", spy)
    train_probe(caches[0], "attentive", tmp_path / "run", seed=5, **FAST)
    shards = open_shards(caches[0])
    assert [(seed, epoch) for _, seed, epoch, _ in seen] == [(5, 0), (5, 1), (5, 2)]
    for table, _, epoch, plan in seen:
        rows = np.concatenate(plan)
        assert np.array_equal(np.sort(rows), np.sort(table.draw(5, epoch)))
        assert set(shards.views[rows].tolist()) == {0, 1, 2}


def test_resume_with_views_continues_exactly(caches, tmp_path):
    options = {**FAST, "epochs": 4, "token_drop": 0.25}  # token-space augmentation on top of the views
    straight = train_probe(caches[0], "step", tmp_path / "straight", **options)

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_probe(caches[0], "step", tmp_path / "resumed", on_epoch=kill_after_two, **options)
    assert len(read_epoch_log(tmp_path / "resumed")) == 2
    resumed = train_probe(caches[0], "step", tmp_path / "resumed", resume=True, **options)
    same_run(straight, resumed)
    with pytest.raises(ValueError, match="views"):  # a different views setting is another run
        train_probe(caches[0], "step", tmp_path / "resumed", resume=True, **{**options, "views": "off"})


def test_streaming_and_in_memory_train_identically_with_views(caches, tmp_path):
    options = {**FAST, "probe_options": {"dropout": 0.1}}
    memory = train_probe(caches[0], "attentive", tmp_path / "m", data="memory", **options)
    streaming = train_probe(caches[0], "attentive", tmp_path / "s", data="streaming", workers=1, **options)
    assert memory.metrics["data_mode"] == "memory" and streaming.metrics["data_mode"] == "streaming"
    same_run(memory, streaming)


def test_a_stack_member_with_views_matches_the_same_config_trained_alone(caches, tmp_path):
    members = [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 3e-3, "weight_decay": 0.0, "label_smoothing": 0.1}]
    common = {**without(FAST, {"lr"}), "epochs": 4, "reverse_pairs": 0.25}
    configs = [make_config("step", {**common, **m}) for m in members]
    results = train_stacked(caches[0], configs, keep_weights=True)
    assert [r.metrics["stacked_members"] for r in results] == [2, 2]
    for index, member in enumerate(members):
        lone = train_probe(caches[0], "step", tmp_path / str(index), **common, **member)
        assert_same_as_lone_run(results[index], lone)
    # views on and off never share a stack (their batches differ)
    assert group_by_shape([configs[0], make_config("step", {**common, "views": "off"})]) == [[0], [1]]


def test_seeds_with_views_share_the_first_seeds_views_and_match_it_alone(caches, tmp_path):
    alone = train_probe(caches[0], "step", tmp_path / "alone", seed=2, **FAST)
    stacked = train_probe(caches[0], "step", tmp_path / "stack", seed=2, seeds=2, **FAST)
    steps = json.loads((tmp_path / "alone" / "config.json").read_text())["data"]["schedule"]["optimizer_steps"]
    a, b = (load_state_dict_file(tmp_path / name / "best.pt") for name in ("alone", "stack"))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=2 * FAST["lr"] * steps) for k in a)
    assert stacked.metrics["per_seed"][0][alone.metrics["headline_split"]]["top1"] == alone.metrics["top1"]
    data = json.loads((tmp_path / "stack" / "config.json").read_text())["data"]
    assert data["views_used"] is True and data["views_per_clip"] == 2 and data["seeds"] == [2, 3]
    off = train_probe(caches[0], "step", tmp_path / "off", seed=2, seeds=2, views="off", **FAST)
    assert off.history[0]["train_loss"] != stacked.history[0]["train_loss"]


def test_shared_data_loads_views_only_for_runs_that_use_them(caches):
    shards = open_shards(caches[0])
    data = DataCache(shards)
    try:
        on = data.get(make_config("step", {**FAST, "data": "memory"}))
        off = data.get(make_config("step", {**FAST, "data": "memory", "views": "off"}))
        assert off.source is on.source  # the source that holds the views holds the clean clips too
        assert on.views.enabled and not off.views.enabled
        assert len(on.source.tokens) == int((shards.labels >= 0).sum())
    finally:
        data.close()
    data = DataCache(shards)
    try:
        alone = data.get(make_config("step", {**FAST, "data": "memory", "views": "off"}))
        assert len(alone.source.tokens) == int(clean_rows(shards).sum())  # no memory spent on unused views
    finally:
        data.close()


def test_evaluate_and_predict_score_clean_views_only(caches, tmp_path):
    views, clean = caches
    train_probe(views, "attentive", tmp_path / "run", **FAST)
    for split in ("all", "train", "val", "test"):
        on_views = evaluate(tmp_path / "run", views, split=split)
        on_clean = evaluate(tmp_path / "run", clean, split=split)  # the tokens differ only by the views
        assert without(on_views, {"features"}) == without(on_clean, {"features"}), split
    assert on_views["clips"] == 2 * on_views["videos"]  # 2 clips per video, no views among them
    rows = {}
    for name, cache in (("views", views), ("clean", clean)):
        predict(tmp_path / "run", cache, tmp_path / f"{name}.csv")
        with (tmp_path / f"{name}.csv").open() as handle:
            rows[name] = list(csv.DictReader(handle))
    assert rows["views"] == rows["clean"] and {row["clips"] for row in rows["views"]} == {"2"}


def test_views_option_checks_and_sweep_parameter():
    assert make_config("step", {}).views == "on" and make_config("step", {"views": False}).views == "off"
    with pytest.raises(TrainConfigError, match="views must be one of on, off"):
        make_config("step", {"views": "maybe"})
    space = build_space("step", ["views=on,off", "lr=1e-3"])
    assert space.distributions["views"].choices == ("on", "off")
    with pytest.raises(SweepSpaceError, match="views takes on or off"):
        build_space("step", ["views=sometimes"])


def test_cli_views_off_is_recorded_and_evaluate_counts_clean_clips(caches, tmp_path):
    from typer.testing import CliRunner

    from cli.main import _register_commands, app

    _register_commands()
    runner = CliRunner()
    args = ["train-probe", str(caches[0]), "--probe", "linear", "--epochs", "2", "--batch-size", "8", "--quiet"]
    result = runner.invoke(app, [*args, "--views", "off", "--out", str(tmp_path / "off")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "off" / "config.json").read_text())
    assert record["config"]["views"] == "off" and record["data"]["views_per_clip"] == 2
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "on")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "on" / "config.json").read_text())["config"]["views"] == "on"
    bad = runner.invoke(app, [*args, "--views", "maybe", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "views must be one of on, off" in bad.stderr
    evaluate = ["evaluate", "--run", str(tmp_path / "on"), "--features", str(caches[0]), "--split", "all", "--json"]
    shown = runner.invoke(app, evaluate)
    assert shown.exit_code == 0, shown.output
    metrics = json.loads(shown.stdout)
    clean = open_shards(caches[1])
    assert metrics["clips"] == len(clean) and metrics["videos"] == len(set(clean.videos.tolist()))
    written = runner.invoke(
        app, ["predict", "--run", str(tmp_path / "on"), "--features", str(caches[0]), "--out", str(tmp_path / "p.csv")]
    )
    assert written.exit_code == 0 and f"for {len(set(clean.videos.tolist()))} videos" in written.stdout
    assert "--views" in runner.invoke(app, ["train-probe", "--help"]).stdout


def test_bench_views_trains_on_and_off_and_prints_a_table(caches, tmp_path):
    bench = Path(__file__).resolve().parent.parent / "bench" / "views.py"
    out = tmp_path / "views.jsonl"
    command = [sys.executable, str(bench), str(caches[0]), "--out", str(out), "--probes", "linear", "step"]
    done = subprocess.run([*command, "--seeds", "2", "--epochs", "2"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["probe"] for row in rows] == ["linear", "step"]
    assert rows[0]["views_per_clip"] == 2 and rows[0]["train_clips"] == len(shard_splits(open_shards(caches[0])).train)
    assert list(rows[0]["groups"]) == ["views off", "views on", "views + reverse-pairs 0.5"]  # linear: no token drop
    assert list(rows[1]["groups"]) == ["views off", "views on", "views + token-drop 0.5", "views + reverse-pairs 0.5"]
    assert all(len(group["test"]["top1"]) == 2 for row in rows for group in row["groups"].values())  # 2 seeds each
    again = subprocess.run(command, capture_output=True, text=True, check=True)  # done already: nothing to train
    assert len(out.read_text().splitlines()) == 2 and "test top-1" not in again.stdout
    printed = subprocess.run([sys.executable, str(bench), "--table", str(out)], capture_output=True, text=True)
    lines = printed.stdout.strip().splitlines()
    assert lines[0].startswith("| cache | views |") and "views off: test top-1" in lines[0] and len(lines) == 4
    assert "| linear |" in lines[2] and "| – | – |" in lines[2]  # no token-drop figures for the linear probe
    pooled = subprocess.run([*command[:2], "--table", str(out), "--pooled"], capture_output=True, text=True)
    lines = pooled.stdout.strip().splitlines()
    assert lines[0].startswith("| probe | metric | caches | views off | views on |") and len(lines) == 2 + 2 * 2
    step_top1 = next(line for line in lines if line.startswith("| step | top-1 |"))
    on = rows[1]["groups"]["views on"]["test"]["top1"]
    gain = np.mean(on) - np.mean(rows[1]["groups"]["views off"]["test"]["top1"])
    assert f"({100 * gain:+.1f})" in step_top1  # the paired gain over views off, same seeds


def test_a_run_trained_on_views_rebuilds_its_backbone_for_videos():
    """predict --videos rebuilds the run's extraction from config.json: the views recorded there are training
    material, not a setting that changes a video's clean tokens."""
    from conftest import TINY

    from step_cache.extraction.backbones import load_backbone
    from step_cache.extraction.engine import ExtractOptions, extraction_settings
    from step_cache.recognition.settings import load_run_backbone

    options = ExtractOptions(**{k: v for k, v in TINY.items() if k != "progress"}, progress=False)
    backbone = load_backbone(options.backbone, options.weights, options.image_size, 1, options.seed, options.dtype)
    settings = extraction_settings(backbone, options)
    record = {"data": {"extraction": {**settings, "views": {"count": 2}}, "features": []}}
    rebuilt, rebuilt_options = load_run_backbone(record)
    assert rebuilt_options.frames == TINY["frames"] and type(rebuilt) is type(backbone)
