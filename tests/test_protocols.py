"""Protocol presets (``--protocol``): each preset's values follow from its anchor's published settings (transcribed
below from the anchors' files, independently of the code), docs/protocols.md's table equals the code, explicit
options override a preset, the cache's extraction is checked, and the CLI runs a preset (train-probe, sweep grid)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import make_config, settings
from step_cache.training.optimization import SGD_MOMENTUM
from step_cache.training.protocol_use import (
    ProtocolError,
    cache_differences,
    check_single_run,
    grid_flags,
    protocol_table,
)
from step_cache.training.protocols import PROTOCOLS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"

# dinov2/eval/linear.py @05c66df: parser.set_defaults (epochs, batch_size, learning_rates, val_metric_type),
# scale_lr, run_eval_linear (SGD momentum 0.9, weight_decay 0, CosineAnnealingLR eta_min 0, n_last_blocks [1, 4]).
DINOV2 = {
    "epochs": 10,
    "batch_size": 128,
    "learning_rates": [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1],
    "momentum": 0.9,
    "weight_decay": 0,
    "avgpool": [False, True],
}
# jepa configs/evals/vitl16_k400_16x8x3.yaml @0f772c5, and eval.py (depth=1, clip_grad_norm_ 1.0).
JEPA_K400 = {
    "nodes": 8, "tasks_per_node": 8, "batch_size": 4, "num_epochs": 20, "lr": 0.001, "start_lr": 0.001,
    "final_lr": 0.0, "warmup": 0.0, "weight_decay": 0.01, "use_bfloat16": True, "frames_per_clip": 16,
    "num_segments": 8, "num_views_per_segment": 3, "frame_step": 4, "resolution": 224,
}  # fmt: skip
# vjepa2 configs/eval/vitl/ssv2-area-attn.yaml @073e524 (the eval keys of ssv2.yaml): the 20 multihead_kwargs.
VJEPA2_SSV2 = {
    "nodes": 8, "tasks_per_node": 8, "batch_size": 4, "num_epochs": 20, "use_bfloat16": True, "num_heads": 16,
    "num_probe_blocks": 4, "frames_per_clip": 16, "frame_step": 4, "num_segments": 2, "num_views_per_segment": 3,
    "resolution": 256,
    "heads": [(lr, wd) for wd in (0.01, 0.1, 0.4, 0.8) for lr in (0.005, 0.003, 0.001, 0.0003, 0.0001)],
    "warmup": 0.0, "final_lr": 0.0,
}  # fmt: skip


def _grid(name: str) -> dict[str, tuple]:
    return {key: source.value for key, source in PROTOCOLS[name].grid.items()}


def test_dinov2_linear_follows_dinov2_linear_eval():
    config = make_config(None, {"protocol": "dinov2-linear", "lr": 0.001})
    assert config.probe == "linear" and config.optimizer == "sgd" and DINOV2["momentum"] == SGD_MOMENTUM
    assert config.weight_decay == DINOV2["weight_decay"] and config.warmup_epochs == 0 and config.clip_grad == 0
    assert config.epochs == DINOV2["epochs"] and config.batch_size == DINOV2["batch_size"]
    assert config.select_metric == "top1" and config.early_stop is False and config.amp is True
    assert config.probe_options["layer_norm"] is False  # DINOv2's head is nn.Linear alone
    grid = _grid("dinov2-linear")
    # scale_lr: lr * (batch_size * world_size) / 256, one process
    assert grid["lr"] == pytest.approx([lr * DINOV2["batch_size"] / 256 for lr in DINOV2["learning_rates"]], rel=0)
    assert list(grid["avgpool"]) == DINOV2["avgpool"]


def test_vjepa_attentive_follows_the_k400_config():
    config = make_config(None, {"protocol": "vjepa-attentive"})
    k400 = JEPA_K400
    assert config.probe == "attentive" and config.probe_options["depth"] == 1
    assert config.probe_options["output_projection"] is False and config.probe_options["num_heads"] is None
    assert config.optimizer == "adamw" and config.lr == k400["lr"] == k400["start_lr"]
    assert config.weight_decay == k400["weight_decay"] and config.warmup_epochs == k400["warmup"]
    assert config.epochs == k400["num_epochs"] and config.amp is k400["use_bfloat16"]
    assert config.batch_size == k400["batch_size"] * k400["tasks_per_node"] * k400["nodes"]
    assert config.clip_grad == 1.0 and config.early_stop is False and config.val == "none"
    needs = {key: source.value for key, source in PROTOCOLS["vjepa-attentive"].requirements.items()}
    assert needs == {
        "frames": k400["frames_per_clip"], "frame_step": k400["frame_step"], "resolution": k400["resolution"],
        "test_views": (k400["num_segments"], k400["num_views_per_segment"]),
    }  # fmt: skip


def test_vjepa2_attentive_follows_the_ssv2_config():
    ssv2 = VJEPA2_SSV2
    config = make_config(None, {"protocol": "vjepa2-attentive", "lr": 0.001, "weight_decay": 0.1})
    assert config.probe == "attentive" and config.probe_options["depth"] == ssv2["num_probe_blocks"]
    assert config.probe_options["num_heads"] == ssv2["num_heads"] and config.optimizer == "adamw"
    assert config.epochs == ssv2["num_epochs"] and config.warmup_epochs == ssv2["warmup"] and config.amp is True
    assert config.batch_size == ssv2["batch_size"] * ssv2["tasks_per_node"] * ssv2["nodes"]
    grid = _grid("vjepa2-attentive")
    assert sorted(itertools.product(grid["lr"], grid["weight_decay"])) == sorted(ssv2["heads"])
    needs = {key: source.value for key, source in PROTOCOLS["vjepa2-attentive"].requirements.items()}
    assert needs["test_views"] == (ssv2["num_segments"], ssv2["num_views_per_segment"])
    assert (needs["frames"], needs["frame_step"], needs["resolution"]) == (16, 4, 256)
    assert grid_flags("vjepa2-attentive") == ["lr=0.005,0.003,0.001,0.0003,0.0001", "weight_decay=0.01,0.1,0.4,0.8"]


def test_the_docs_table_equals_the_code():
    text = DOCS.read_text()
    start = text.index("<!-- protocol-table: generated by step_cache.training.protocol_use.protocol_table -->\n")
    block = text[text.index("\n", start) + 1 : text.index("\n<!-- end protocol-table -->")]
    assert block == protocol_table()
    rows = [line for line in block.splitlines()[2:]]
    assert len(rows) == sum(len(p.fields) + len(p.grid) + len(p.requirements) for p in PROTOCOLS.values())
    assert "| vjepa2-attentive | grid | `weight_decay` | 0.01, 0.1, 0.4, 0.8 |" in block
    for protocol in PROTOCOLS.values():  # every difference a run prints is in the doc
        assert all(difference in text for difference in protocol.differences)


def test_explicit_options_override_a_preset_and_contradictions_are_refused():
    config = make_config(None, {"protocol": "vjepa-attentive", "epochs": 3, "probe_options": {"depth": 2}})
    assert config.epochs == 3 and config.probe_options["depth"] == 2 and config.lr == JEPA_K400["lr"]
    wrong_probe = r"^protocol='dinov2-linear' trains the linear probe, not step: drop probe=$"
    with pytest.raises(ProtocolError, match=wrong_probe):
        make_config("step", {"protocol": "dinov2-linear"})
    with pytest.raises(ProtocolError, match=r"unknown protocol 'dino'; choose one of: dinov2-linear, vjepa-attentive"):
        make_config(None, {"protocol": "dino"})
    with pytest.raises(ProtocolError, match=r"searches lr, weight_decay over a grid: give lr= \(one of 0.005, "):
        check_single_run("vjepa2-attentive", {"protocol": "vjepa2-attentive"}, settings())
    check_single_run("vjepa-attentive", {}, settings())  # no grid: nothing needed
    with pytest.raises(ProtocolError, match=r"searches layers over a grid: give layers= \(one of last, concat:.*as one "
                       r"stack with run_sweep protocol='dinov2-linear'$"):  # fmt: skip
        check_single_run("dinov2-linear", {"lr": 0.01}, settings())
    check_single_run("dinov2-linear", {"lr": 0.01, "layers": "last"}, settings())  # avgpool, a probe option: default


def test_the_cache_is_checked_against_the_protocol():
    follows = {
        "sampling": {"frames": 16, "clips": 1, "strategy": "frame-step", "frame_step": 4},
        "preprocessing": {"crop": 256},
        "test_views": {"segments": 2, "crops": 3},
        "tokens": {"cls_tokens": 1, "grid": [16, 16], "dim": 1024, "dtype": "float16"},
    }
    assert cache_differences("vjepa2-attentive", follows) == []
    other = {**follows, "sampling": {"frames": 8, "clips": 1}, "test_views": None}
    differences = cache_differences("vjepa2-attentive", other)
    assert differences[0].startswith("frames: the cache has 8, the anchor 16 (frames_per_clip: 16, configs/eval/")
    assert differences[1].startswith("frame_step: the cache has segment centres, the anchor 4")
    assert differences[2].startswith("test_views: the cache has one centre view, the anchor 2x3")
    last4 = {**follows, "tokens": {**follows["tokens"], "layers": [8, 9, 10, 11]}, "preprocessing": {"crop": 224}}
    assert cache_differences("dinov2-linear", last4) == []
    assert "the cache has the last block only" in cache_differences("dinov2-linear", follows)[-1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("protocol-tokens") / "shards"
    write_token_cache(directory, task="static", num_classes=3, videos_per_class=8, dim=16, val_every=4, test_every=3)
    return directory


def _cli(args: list[str]):
    from cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def test_train_probe_protocol_runs_the_preset_with_explicit_overrides(cache, tmp_path):
    out = tmp_path / "run"
    result = _cli(["train-probe", str(cache), "--protocol", "vjepa-attentive", "--epochs", "2", "--out", str(out),
                   "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "config.json").read_text())
    config = record["config"]
    assert config["protocol"] == "vjepa-attentive" and config["probe"] == "attentive" and config["epochs"] == 2
    assert (config["batch_size"], config["lr"], config["weight_decay"], config["clip_grad"]) == (256, 0.001, 0.01, 1.0)
    assert config["val"] == "none" and config["probe_options"]["output_projection"] is False
    assert record["data"]["protocol"]["name"] == "vjepa-attentive"
    assert any(d.startswith("frames: the cache has 4") for d in record["data"]["protocol"]["cache_differences"])
    assert "no val: fixed schedule, last epoch's weights" in result.output


def test_sweep_protocol_trains_the_whole_grid_as_one_batch(cache, tmp_path):
    out = tmp_path / "sweep"
    result = _cli(["sweep", str(cache), "--protocol", "dinov2-linear", "--epochs", "2", "--out", str(out), "--quiet",
                   "--no-plots", "--no-retrain"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "26 trials: 26 complete, 0 pruned" in result.output
    trials = json.loads((out / "trials.json").read_text())
    rows = trials["trials"] if isinstance(trials, dict) else trials
    params = sorted((row["params"]["lr"], row["params"]["avgpool"]) for row in rows)
    assert params == sorted(itertools.product(_grid("dinov2-linear")["lr"], (False, True)))


def test_sweep_refuses_a_protocol_without_grid_or_validation(cache, tmp_path):
    result = _cli(["sweep", str(cache), "--protocol", "vjepa-attentive", "--out", str(tmp_path / "s"), "--quiet"])
    assert result.exit_code == 1
    assert "--protocol vjepa-attentive has no grid; use train-probe --protocol vjepa-attentive" in result.output


def test_dinov2_linear_on_a_last4_cache_trains_the_4_block_lr_grid_as_one_stack(_video_tree, tmp_path):
    """A cache of extract --layers last4 follows the preset's layers requirement; --layers concat:last4 trains DINOv2's
    n_last_blocks=4 heads, its 13 lrs as one stack (avgpool off here: one stack, one head width). Without the two
    options, the whole grid (13 lrs x {1, 4} blocks x avgpool) runs in one sweep as one stack: masked heads of the
    widest width (training/stacking/nested.py)."""
    from conftest import TINY

    from step_cache import extract

    cache = tmp_path / "last4"
    extract(_video_tree, cache, layers="last4", **{**TINY, "clips": 1})
    extraction = json.loads((cache / "manifest.json").read_text())["extraction"]
    assert not any(d.startswith("layers") for d in cache_differences("dinov2-linear", extraction))
    out = tmp_path / "sweep"
    result = _cli(["sweep", str(cache), "--protocol", "dinov2-linear", "--layers", "concat:last4", "--param",
                   "avgpool=false", "--epochs", "1", "--batch-size", "4", "--out", str(out), "--quiet", "--no-plots",
                   "--no-retrain"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "13 trials: 13 complete" in result.output and "1 stack(s)" in result.output
    best = json.loads((out / "best.json").read_text())["config"]
    assert (best["layers"], best["optimizer"], best["protocol"]) == ("concat:last4", "sgd", "dinov2-linear")

    whole = tmp_path / "whole"
    result = _cli(["sweep", str(cache), "--protocol", "dinov2-linear", "--epochs", "1", "--batch-size", "4", "--out",
                   str(whole), "--quiet", "--no-plots", "--no-retrain"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "52 trials: 52 complete" in result.output and "1 stack(s)" in result.output, result.output
    trials = json.loads((whole / "trials.json").read_text())
    grid = {(t["params"]["layers"], t["params"]["avgpool"], t["params"]["lr"]) for t in trials["trials"]}
    assert len(grid) == 52


def test_the_presets_differences_print_once_for_seeds_that_vary_data(cache, tmp_path):
    """train-probe --protocol ... --seeds 3 --vary data trains each seed as a run of its own: the preset's "what
    differs" lines are printed once, by the run, and every seed's config.json still records the cache's."""
    out = tmp_path / "seeds"
    result = _cli(["train-probe", str(cache), "--protocol", "dinov2-linear", "--layers", "last", "--lr", "0.01",
                   "--seeds", "3", "--vary", "data", "--epochs", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("what differs from the anchor here") == 1, result.output
    differences = PROTOCOLS["dinov2-linear"].differences
    for line in [*differences, "cache layers: the cache has the last block only"]:
        assert result.output.count(line[:40]) == 1, line
    for seed in (0, 1, 2):
        record = json.loads((out / "seeds" / f"seed-{seed}" / "config.json").read_text())
        assert any(d.startswith("layers:") for d in record["data"]["protocol"]["cache_differences"])
