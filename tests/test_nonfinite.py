"""A run that diverges (NaN / inf loss or gradient norm): a single run stops with a one-line NonFiniteLossError
before the epoch is recorded, a stacked member is only reported, no JSON file ever holds NaN or Infinity, and
the report leaves out runs whose metrics are not finite."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import runs
from step_cache.training.config import make_config
from step_cache.training.epoch_loop import POSTFIX_EVERY, NonFiniteLossError, train_epoch
from step_cache.training.stacking.adamw import StackedAdamW
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import StackedRun
from step_cache.training.trainer import train_probe

_register_commands()

DIVERGED = re.compile(
    r"^training diverged: the loss became non-finite \((nan|inf|-inf)\) at epoch 1/2, batch \d+; "
    r"the learning rate \(\S+ at that step\) is likely too high — try a lower (--lr|lr=)$"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nonfinite") / "shards"
    write_token_cache(directory, videos_per_class=8, dim=16)
    return directory


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity (which Python's json accepts by default)."""

    def refuse(constant: str):
        raise AssertionError(f"non-finite constant {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def assert_strict_json_files(run_dir: Path) -> list[str]:
    """Every *.json / *.jsonl in ``run_dir`` parses as strict JSON; returns their names."""
    names = []
    for path in sorted(run_dir.iterdir()):
        if path.suffix == ".json":
            strict_load(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                strict_load(line)
        else:
            continue
        assert not re.search(r"\bNaN\b|Infinity", path.read_text(encoding="utf-8")), path
        names.append(path.name)
    return names


# --- a single run --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["linear", "step"])
def test_a_diverging_run_stops_with_a_clear_error_and_no_nan_in_any_file(cache, tmp_path, probe):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as caught:
        train_probe(cache, probe, run, epochs=2, batch_size=4, lr=1e30, progress=False)
    message = str(caught.value)
    assert DIVERGED.match(message) and message.endswith(" lr=") and "\n" not in message, message  # Python's name
    assert isinstance(caught.value, RuntimeError) and caught.value.batch >= 2 and caught.value.lr > 0
    # Stopped before the epoch was recorded: no epoch log, no checkpoint, no final metrics; marked failed, with why.
    assert assert_strict_json_files(run) == ["config.json", "failed.json"]
    assert json.loads((run / runs.FAILED).read_text())["reason"] == message
    assert not any((run / name).exists() for name in (runs.EPOCH_LOG, runs.FINAL_METRICS, runs.STATE, runs.BEST))


def test_the_cli_exits_with_one_error_line(cache, tmp_path):
    result = CliRunner().invoke(
        app,
        ["train-probe", str(cache), "--probe", "linear", "--out", str(tmp_path / "run"), "--lr", "1e30",
         "--epochs", "2", "--batch-size", "4", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()  # the run's one info line, then the error: no traceback
    assert "Traceback" not in result.output and [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert DIVERGED.match(lines[-1].removeprefix("error: ")) and lines[-1].endswith("--lr"), result.output
    assert assert_strict_json_files(tmp_path / "run") == ["config.json", "failed.json"]


class ListSource:
    """A TokenSource of tiny constant batches (the scripted steps below ignore them)."""

    mode = "memory"

    def batches(self, plan):
        for indices in plan:
            tokens = torch.as_tensor(indices, dtype=torch.float32)[:, None, None, None].expand(-1, 2, 1, 4)
            yield tokens.clone(), torch.zeros(len(indices), dtype=torch.long)

    def close(self):
        pass


def scripted_step(losses: list[list[float]], norms: list[list[float]] | None = None, calls: list | None = None):
    """A TrainStep returning the given loss (and gradient norm) per call; records the calls."""
    calls = [] if calls is None else calls

    def step(tokens, labels):
        index = len(calls)
        calls.append(index)
        loss = torch.tensor(losses[index]).squeeze()
        logits = torch.zeros((*loss.shape, len(labels), 3))
        lr = [1e-3 * (index + 1)] * loss.numel() if loss.ndim else 1e-3 * (index + 1)
        if norms is None:
            return loss, logits, lr
        return loss, logits, lr, torch.tensor(norms[index]).squeeze()

    return step


def plan(batches: int) -> list[np.ndarray]:
    return [np.arange(2 * b, 2 * b + 2) for b in range(batches)]


@pytest.mark.parametrize(("bad", "progress", "stops_after"), [(3, False, 25), (3, True, POSTFIX_EVERY), (12, True, 20)])
def test_the_loop_names_the_first_bad_batch_and_stops_at_the_next_read_back(bad, progress, stops_after):
    """Without a progress bar the sums are read back once, at the end of the epoch; with it, every POSTFIX_EVERY
    batches: the error comes at the first of these after the bad batch, and names the bad batch and its lr."""
    losses = [[1.0]] * 25
    losses = [*losses[: bad - 1], [math.nan], *losses[bad:]]
    calls: list[int] = []
    with pytest.raises(
        NonFiniteLossError, match=rf"\(nan\) at epoch 2/9, batch {bad}; the learning rate \({bad / 1000:g} at "
    ):
        train_epoch(ListSource(), plan(25), torch.device("cpu"), scripted_step(losses, calls=calls),
                    description="epoch 2/9", progress=progress)  # fmt: skip
    assert len(calls) == stops_after


def test_a_non_finite_gradient_norm_is_divergence_too():
    losses, norms = [[1.0]] * 4, [[2.0], [math.inf], [3.0], [4.0]]
    with pytest.raises(NonFiniteLossError, match=r"the gradient norm became non-finite \(inf\) at batch 2"):
        train_epoch(ListSource(), plan(4), torch.device("cpu"), scripted_step(losses, norms), progress=False)
    summary = train_epoch(ListSource(), plan(4), torch.device("cpu"), scripted_step(losses, [[1.0]] * 4))
    assert summary["finite"] is True and summary["train_loss"] == 1.0 and summary["lr"] == 4e-3


def test_stacked_members_are_reported_not_raised():
    """One member's loss and another's gradient norm go non-finite: the epoch completes, each member says whether
    it stayed finite, and the others' sums are untouched."""
    losses = [[1.0, 1.0, 2.0]] * 6
    losses[2] = [1.0, math.inf, 2.0]
    norms = [[1.0, 1.0, 1.0]] * 6
    norms[4] = [1.0, 1.0, math.nan]
    for progress in (False, True):
        summary = train_epoch(ListSource(), plan(6), torch.device("cpu"), scripted_step(losses, norms),
                              members=(3,), progress=progress)  # fmt: skip
        assert summary["finite"] == [True, False, False]
        assert summary["train_loss"][0] == 1.0 and summary["train_loss"][2] == 2.0
        assert math.isinf(summary["train_loss"][1]) and summary["clips"] == 12


def test_a_diverging_member_of_a_stack_does_not_stop_the_others(cache):
    configs = [make_config("step", {"epochs": 2, "batch_size": 4, "progress": False, "lr": lr}) for lr in (1e-3, 1e30)]
    data = DataCache(open_shards(cache))
    try:
        summary = StackedRun(data.get(configs[0]), configs).train_epoch(0)
    finally:
        data.close()
    assert summary["finite"] == [True, False]
    assert math.isfinite(summary["train_loss"][0]) and not math.isfinite(summary["train_loss"][1])


def test_stacked_adamw_returns_each_members_gradient_norm():
    params = {"w": torch.zeros(3, 4, 2, requires_grad=True), "b": torch.zeros(3, 2, requires_grad=True)}
    optimizer = StackedAdamW(params, lr=[1e-3] * 3, weight_decay=[0.0] * 3, warmup_steps=[0] * 3,
                             clip_grad=[1.0, 0.0, 1.0], total_steps=2)  # fmt: skip
    params["w"].grad = torch.ones(3, 4, 2)
    params["b"].grad = torch.ones(3, 2)
    params["w"].grad[2, 0, 0] = math.inf
    norms = optimizer.clip_gradients(params)
    # sqrt(sqrt(8)² + sqrt(2)²) in float32: four roundings of at most ε/2 = 6e-8 (relative) each.
    assert norms[:2].tolist() == pytest.approx([math.sqrt(10)] * 2, rel=4 * 6e-8, abs=0)
    assert math.isinf(norms[2])  # member 1 does not clip, but its norm is computed and reported too
    no_clipping = StackedAdamW(params, lr=[1e-3] * 3, weight_decay=[0.0] * 3, warmup_steps=[0] * 3,
                               clip_grad=[0.0] * 3, total_steps=2)  # fmt: skip
    assert no_clipping.clip_gradients(params) is None


# --- strict JSON -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_write_json_refuses_non_finite_numbers_naming_file_and_key(tmp_path, bad):
    path = tmp_path / "metrics.json"
    runs.write_json(path, {"top1": 0.5})
    before = path.read_bytes()
    data = {"top1": 0.5, "test": {"loss": bad}, "trials": [{"value": 1.0}, {"value": bad}]}
    with pytest.raises(ValueError, match=rf"metrics.json: not written: .*test.loss = {bad}, trials\[1\].value = {bad}"):
        runs.write_json(path, data)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # atomic
    runs.write_json(path, {"top1": 1.0, "missing": None})
    assert strict_load(path.read_text()) == {"top1": 1.0, "missing": None}


def test_the_epoch_log_refuses_a_non_finite_line_before_writing(tmp_path):
    runs.write_epoch_log(tmp_path, [{"epoch": 1, "train_loss": 0.7}])
    before = (tmp_path / runs.EPOCH_LOG).read_bytes()
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2: not written: .*train_loss = nan"):
        runs.write_epoch_log(tmp_path, [{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": math.nan}])
    assert (tmp_path / runs.EPOCH_LOG).read_bytes() == before
