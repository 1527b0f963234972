"""Chance, stated: the one-sided binomial test of top-1 against the majority-class rate, in metrics.json and lines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.chance import binomial_tail, chance_note, chance_of, chance_test, pooled_chance
from step_cache.training.metrics_file import upgrade
from step_cache.training.records import run_chance
from step_cache.training.trainer import train_probe

_register_commands()

FAST = {"epochs": 12, "batch_size": 8, "lr": 3e-3, "progress": False}


def _tail_by_comb(correct: int, trials: int, level: float) -> float:
    return sum(math.comb(trials, i) * level**i * (1 - level) ** (trials - i) for i in range(correct, trials + 1))


@pytest.mark.parametrize(("correct", "trials", "level"), [(8, 10, 0.5), (3, 20, 0.25), (0, 5, 0.5), (40, 60, 0.5)])
def test_binomial_tail_matches_the_exact_sum(correct, trials, level):
    # log-space sum of ~60 terms: agrees with the direct sum to a few ulps per term
    assert binomial_tail(correct, trials, level) == pytest.approx(_tail_by_comb(correct, trials, level), rel=1e-12)


def test_binomial_tail_known_values_and_edges():
    assert binomial_tail(8, 10, 0.5) == pytest.approx(56 / 1024, rel=1e-12)  # C(10,8)+C(10,9)+C(10,10) = 56
    assert binomial_tail(10, 10, 0.5) == pytest.approx(2**-10, rel=1e-12)
    assert binomial_tail(0, 10, 0.3) == 1.0 and binomial_tail(11, 10, 0.3) == 0.0
    assert binomial_tail(5, 10, 1.0) == 1.0  # a split of one class: nothing beats always naming it
    # Thousands of trials stay finite (no overflow of comb * p^k) and tiny.
    assert 0.0 <= binomial_tail(3000, 5000, 0.5) < 1e-40


def test_chance_record_from_a_confusion_matrix():
    # 3 classes, 10 videos, majority class has 5: level 0.5; 8 correct.
    figures = {"confusion_matrix": [[4, 1, 0], [0, 2, 1], [0, 0, 2]]}
    chance = chance_of(figures)
    assert chance["level"] == 0.5 and chance["correct"] == 8 and chance["trials"] == 10 and chance["majority"] == 5
    assert chance["p_value"] == pytest.approx(56 / 1024, rel=1e-12) and chance["above"] is False  # 0.055 >= 0.05
    assert chance["alpha"] == 0.05
    assert chance_note(chance) == " | not above chance (p = 0.055)"
    assert chance_note(chance_test(10, 10, 5)) == ""  # p = 1/1024: above, nothing said
    assert chance_of({}) is None and chance_test(0, 0, 0) is None


def test_seeds_pool_correct_and_trials():
    seed_a = {"confusion_matrix": [[4, 1], [1, 4]]}  # 8 of 10
    seed_b = {"confusion_matrix": [[5, 0], [0, 5]]}  # 10 of 10
    pooled = pooled_chance([seed_a, seed_b])
    assert (pooled["correct"], pooled["trials"], pooled["majority"], pooled["seeds"]) == (18, 20, 10, 2)
    assert pooled["p_value"] == pytest.approx(_tail_by_comb(18, 20, 0.5), rel=1e-12) and pooled["above"]


def test_old_metrics_json_gets_chance_from_its_confusion_matrix():
    old = {"split": "val", "headline": "test", "confusion_matrix": [[1, 0], [0, 1]],
           "test": {"confusion_matrix": [[0, 2], [2, 0]]}}  # fmt: skip
    assert run_chance(upgrade(old))["correct"] == 0 and run_chance(upgrade(old))["trials"] == 4  # test's


@pytest.fixture(scope="module")
def no_signal_run(tmp_path_factory):
    # signal 0: the tokens say nothing about the label, as with shuffled labels.
    root = tmp_path_factory.mktemp("no-signal")
    write_token_cache(root / "cache", num_classes=4, videos_per_class=15, test_every=3, signal=0.0, dim=16)
    return train_probe(root / "cache", "step", root / "run", **FAST)


def test_labels_without_signal_are_not_above_chance(no_signal_run):
    chance = json.loads((no_signal_run.run_dir / "metrics.json").read_text())["chance"]
    assert chance["above"] is False and chance["trials"] == 20 and chance["level"] == 0.25
    assert chance["p_value"] >= 0.05
    assert f"not above chance (p = {chance['p_value']:.2g})" in no_signal_run.summary()


def test_report_names_a_run_not_above_chance(no_signal_run, tmp_path):
    result = CliRunner().invoke(app, ["report", str(no_signal_run.run_dir), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    p_value = no_signal_run.metrics["chance"]["p_value"]
    line = f"note: run ({no_signal_run.run_dir}): test top-1 not above chance (p = {p_value:.2g})"
    assert line in result.stdout.splitlines()
    assert line in (tmp_path / "rep" / "report.md").read_text()


def test_step_on_mirrored_pairs_is_above_chance_and_seeds_pool(tmp_path):
    write_token_cache(tmp_path / "cache", num_classes=4, videos_per_class=15, test_every=3, dim=16)
    result = train_probe(tmp_path / "cache", "step", tmp_path / "run", seeds=2, **{**FAST, "epochs": 30, "lr": 1e-2})
    chance = result.metrics["chance"]
    assert chance["above"] is True and chance["p_value"] < 0.05
    assert chance["trials"] == 2 * 20 and chance["seeds"] == 2  # both seeds' 20 test videos pooled
    test_top1 = [seed["test"]["top1"] for seed in result.metrics["per_seed"]]
    assert chance["correct"] == round(20 * sum(test_top1))
    assert "not above chance" not in result.summary()


def test_comparison_figure_labels_chance_and_draws_error_bars_only_with_seeds():
    from step_cache.report.figures import draw_comparison

    metrics = {"top-1": [0.8, 0.6], "pair acc": [0.9, 0.7]}
    errors = {"top-1": [0.05, None], "pair acc": [0.02, None]}  # run a: 3 seeds; run b: one seed
    _, axis = draw_comparison(["a", "b"], metrics, errors, "test", chance=[0.25, 0.5])
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "pair chance (50%)" in labels and "top-1 chance (majority class)" in labels
    bars = [c for c in axis.containers if type(c).__name__ == "BarContainer"]
    # One error bar, on the run with seeds (±0.05 around 0.8); the one-seed run's segment is not drawn.
    for bar, (low, high) in zip(bars, [(0.75, 0.85), (0.88, 0.92)], strict=True):
        drawn, missing = bar.errorbar.lines[2][0].get_segments()
        assert drawn[:, 1] == pytest.approx([low, high]) and missing.size == 0
    _, one_seed = draw_comparison(["b"], {"top-1": [0.6]}, {"top-1": [None]}, "test", chance=[0.5])
    assert all(c.errorbar is None for c in one_seed.containers)  # no bars of zero length with caps


def test_predict_clamps_top_k_once_and_says_the_run_is_not_above_chance(no_signal_run, tmp_path):
    cache = no_signal_run.run_dir.parent / "cache"
    out = tmp_path / "p.csv"
    args = ["predict", "--run", str(no_signal_run.run_dir), "--features", str(cache), "--out", str(out), "--top-k", "9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("--top-k 9 is more than the run's 4 classes: giving all 4") == 1
    assert "test top-1 not above chance (p = " in result.stderr
    assert "wrote top-4 predictions for 60 videos" in result.stdout
    assert out.read_text().splitlines()[0].count("class_") == 4


def test_min_confidence_is_measured_from_chance_so_it_filters_two_classes():
    from step_cache.recognition.segments import above_chance, merge_segments

    coin = np.array([[0.503, 0.497]] * 4)  # the confident-looking timeline of a run at chance
    starts = np.arange(4.0)
    assert above_chance(coin) == pytest.approx([0.006] * 4)  # (0.503 - 1/2) / (1 - 1/2)
    assert merge_segments(starts, starts + 2, coin, ["forward", "backward"], min_confidence=0.5) == []
    sure = np.array([[0.8, 0.2]] * 4)  # 0.6 above chance
    assert len(merge_segments(starts, starts + 2, sure, ["forward", "backward"], min_confidence=0.5)) == 1
    ten = np.full((1, 10), 0.05)
    ten[0, 3] = 0.55  # (0.55 - 0.1) / 0.9 = 0.5
    assert above_chance(ten) == pytest.approx([0.5])


def test_timeline_summary_warns_about_a_run_not_above_chance(no_signal_run, tmp_path):
    from step_cache.recognition.timeline import Timeline
    from step_cache.recognition.windows import WindowPlan
    from step_cache.training.run_notes import not_above_chance

    note = not_above_chance(no_signal_run.run_dir)
    p_value = no_signal_run.metrics["chance"]["p_value"]
    assert note == (
        f"{no_signal_run.run_dir}: test top-1 not above chance (p = {p_value:.2g}): its answers are no better than "
        "always naming the most frequent class"
    )
    timeline = Timeline(tmp_path / "v.mp4", 25.0, WindowPlan(16, 4, 4, 1), ["a", "b"], [], notes=[note])
    assert timeline.summary().endswith(f"\nwarning: {note}")
    write_token_cache(tmp_path / "cache", num_classes=4, videos_per_class=15, test_every=3, dim=16)
    good = train_probe(tmp_path / "cache", "step", tmp_path / "run", **{**FAST, "epochs": 30, "lr": 1e-2})
    assert good.metrics["chance"]["above"] and not_above_chance(good.run_dir) is None
