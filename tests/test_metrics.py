"""Metrics against hand-computed examples."""

import math

import numpy as np
import pytest
import torch

from step_cache.training.metrics import (
    average_by_video,
    classification_metrics,
    confusion_matrix,
    format_percent,
    mean_class_accuracy,
    pair_accuracy,
    pair_indices,
    per_class_accuracy,
    topk_accuracy,
)

# 5 clips, 4 classes. Rankings (best first): r0 = 1,0,2,3  r1 = 1,2,0,3  r2 = 2,3,0,1  r3 = 0,1,2,3  r4 = 3,1,0,2
LOGITS = np.array(
    [
        [2.0, 3.0, 1.0, 0.0],
        [0.5, 4.0, 1.0, 0.0],
        [1.0, 0.0, 5.0, 2.0],
        [9.0, 1.0, 0.5, 0.0],
        [1.0, 2.0, 0.0, 3.0],
    ]
)
LABELS = np.array([0, 1, 3, 0, 2])


def test_topk_by_hand():
    # top-1 hits: clips 1 and 3 -> 2/5. top-2 adds clip 0 (0 is 2nd) and clip 2 (3 is 2nd) -> 4/5.
    assert topk_accuracy(LOGITS, LABELS, 1) == pytest.approx(2 / 5)
    assert topk_accuracy(LOGITS, LABELS, 2) == pytest.approx(4 / 5)
    # clip 4's label 2 is ranked last, so top-3 is still 4/5; top-5 is capped at C=4 -> 1.
    assert topk_accuracy(LOGITS, LABELS, 3) == pytest.approx(4 / 5)
    assert topk_accuracy(LOGITS, LABELS, 5) == 1.0
    assert topk_accuracy(torch.tensor(LOGITS), torch.tensor(LABELS), 1) == pytest.approx(2 / 5)
    assert math.isnan(topk_accuracy(np.zeros((0, 4)), np.zeros(0, dtype=int)))


def test_ties_go_to_lower_index():
    assert topk_accuracy(np.zeros((2, 3)), np.array([0, 1]), 1) == 0.5


def test_confusion_and_per_class():
    matrix = confusion_matrix(LOGITS, LABELS)
    expected = np.zeros((4, 4), dtype=int)
    for true, pred in [(0, 1), (1, 1), (3, 2), (0, 0), (2, 3)]:
        expected[true, pred] += 1
    np.testing.assert_array_equal(matrix, expected)
    # class 0: 1 of 2, class 1: 1 of 1, class 2: 0 of 1, class 3: 0 of 1.
    np.testing.assert_allclose(per_class_accuracy(matrix), [0.5, 1.0, 0.0, 0.0])
    assert mean_class_accuracy(matrix) == pytest.approx(1.5 / 4)


def test_absent_class_is_nan_and_skipped_in_the_mean():
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    matrix = confusion_matrix(logits, np.array([0, 0]))
    assert np.isnan(per_class_accuracy(matrix)[1]) and np.isnan(per_class_accuracy(matrix)[2])
    assert mean_class_accuracy(matrix) == 0.5


def test_pair_accuracy_decides_between_the_two_classes_only():
    classes = ["open", "close", "push", "pull", "wave"]
    pairs = pair_indices([("open", "close"), ("push", "pull"), ("jump", "fall")], classes)
    assert pairs == [(0, 1), (2, 3)]  # the pair of unknown classes is skipped
    logits = np.array(
        [
            [1.0, 0.0, 0.0, 0.0, 9.0],  # open, wrong overall (wave wins) but open > close: correct in the pair
            [2.0, 1.0, 0.0, 0.0, 0.0],  # close, open > close: wrong
            [0.0, 0.0, 3.0, 3.0, 0.0],  # push, tie with pull: wrong
            [0.0, 0.0, 0.0, 1.0, 0.0],  # pull: correct
            [0.0, 0.0, 0.0, 0.0, 0.0],  # wave: not in a pair, not counted
        ]
    )
    accuracy, count = pair_accuracy(logits, np.array([0, 1, 2, 3, 4]), pairs)
    assert count == 4 and accuracy == pytest.approx(2 / 4)
    accuracy, count = pair_accuracy(logits[4:], np.array([4]), pairs)
    assert count == 0 and math.isnan(accuracy)


def test_average_by_video():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 6.0]])
    video_logits, keys, first = average_by_video(logits, ["b.mp4", "a.mp4", "b.mp4", "a.mp4"])
    assert keys.tolist() == ["b.mp4", "a.mp4"]  # order of first appearance
    assert first.tolist() == [0, 1]
    np.testing.assert_allclose(video_logits, [[0.5, 2.0], [4.0, 4.0]])


def test_classification_metrics_summary():
    summary = classification_metrics(LOGITS, LABELS, ["a", "b", "c", "d"], pairs=[(0, 1)])
    assert summary["count"] == 5 and summary["top1"] == pytest.approx(0.4) and summary["top5"] == 1.0
    assert summary["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.0}
    assert summary["confusion_matrix"][0] == [1, 1, 0, 0]
    # Paired clips: 0 (a: 2 vs 3 wrong), 1 (b: 4 vs 0.5 right), 3 (a: 9 vs 1 right) -> 2/3.
    assert summary["pair_count"] == 3 and summary["pair_accuracy"] == pytest.approx(2 / 3)


def test_shape_errors():
    with pytest.raises(ValueError, match="expected logits"):
        topk_accuracy(np.zeros((3, 2)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="labels must lie in"):
        topk_accuracy(np.zeros((1, 2)), np.array([2]))


def test_format_percent_shows_shares_as_percent_and_missing_values_as_such():
    assert format_percent(0.975) == "97.5%" and format_percent(1) == "100.0%" and format_percent(0.0) == "0.0%"
    assert format_percent(np.float64(0.5)) == "50.0%"
    assert format_percent(None) == "n/a" and format_percent(float("nan")) == "n/a"
    assert format_percent(None, missing="–") == "–"
