"""Token-space augmentations (training/augment.py): token drop and reverse-and-swap on batches, their
determinism, their errors, and runs that use them (single, stacked seeds, resume, the CLI)."""

import json

import pytest
import torch
from test_training import Killed, same_run

from step_cache.cache.manifest import TokenLayout
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.augment import TokenAugmentation, build_augmentation
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.splits import DataError
from step_cache.training.token_data import select_tokens
from step_cache.training.trainer import train_probe

FAST = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}
PAIRS = [(0, 1)]  # classes 0 and 1 mirror each other; class 2 has no partner


def layout(cls_tokens: int = 1) -> TokenLayout:
    return TokenLayout(cls_tokens=cls_tokens, grid=(2, 3), dim=4)  # 6 patches


def batch(clips: int = 5, frames: int = 3, tokens: int = 7, dim: int = 4) -> torch.Tensor:
    """Every value distinct, so a gathered token can be traced back to its source position."""
    return torch.arange(clips * frames * tokens * dim, dtype=torch.float32).reshape(clips, frames, tokens, dim)


def test_token_drop_keeps_cls_and_a_random_subset_of_each_frames_patches():
    augment = build_augmentation(0.5, 0.0, PAIRS, 3, select_tokens(layout(), "all"))
    tokens, labels = batch(), torch.tensor([0, 1, 2, 0, 1])
    out, out_labels = augment.apply(tokens, labels, torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 1 + 3, 4) and torch.equal(out_labels, labels)
    assert torch.equal(out[:, :, 0], tokens[:, :, 0])  # CLS stays, in front
    chosen = set()
    for clip in range(5):
        for frame in range(3):
            patches = tokens[clip, frame, 1:]
            rows = [int((patches == token).all(dim=1).nonzero()) for token in out[clip, frame, 1:]]
            assert rows == sorted(set(rows))  # distinct source patches, in their original order
            chosen.add(tuple(rows))
    assert len(chosen) > 1  # frames keep different subsets


def test_token_drop_without_cls_and_its_token_count():
    augment = build_augmentation(0.25, 0.0, (), 3, select_tokens(layout(), "patches"))
    out, _ = augment.apply(batch(tokens=6), torch.zeros(5, dtype=torch.long), torch.Generator().manual_seed(1))
    assert out.shape[2] == round(0.75 * 6) == 4  # no CLS selected: every kept token is a patch
    tiny = TokenAugmentation(token_drop=0.9, patch_tokens=2)
    assert tiny.keep == 1  # never drops every patch


def test_reverse_pairs_reverses_and_relabels_paired_clips_only():
    augment = build_augmentation(0.0, 1.0, PAIRS, 3, select_tokens(layout(), "all"))
    tokens, labels = batch(), torch.tensor([0, 1, 2, 0, 2])
    out, out_labels = augment.apply(tokens, labels, torch.Generator().manual_seed(0))
    assert out_labels.tolist() == [1, 0, 2, 1, 2]
    for clip, paired in enumerate([True, True, False, True, False]):
        expected = tokens[clip].flip(0) if paired else tokens[clip]
        assert torch.equal(out[clip], expected)
    assert torch.equal(tokens, batch())  # the input is left as it was


def test_reverse_probability_is_honoured():
    augment = build_augmentation(0.0, 0.3, PAIRS, 3, select_tokens(layout(), "all"))
    labels = torch.zeros(4000, dtype=torch.long)
    _, out = augment.apply(torch.zeros(4000, 2, 1, 1), labels, torch.Generator().manual_seed(0))
    share = (out == 1).double().mean().item()
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5  # within 4 binomial standard deviations


def test_draws_are_keyed_by_seed_and_epoch():
    augment = build_augmentation(0.5, 0.5, PAIRS, 3, select_tokens(layout(), "all"))
    tokens, labels = batch(), torch.tensor([0, 1, 0, 1, 0])

    def run(seed, epoch):
        return augment.for_epoch(seed, epoch)(tokens, labels)

    assert all(torch.equal(a, b) for a, b in zip(run(0, 1), run(0, 1), strict=True))
    assert not torch.equal(run(0, 1)[0], run(0, 2)[0]) and not torch.equal(run(0, 1)[0], run(1, 1)[0])


def test_clear_errors():
    with pytest.raises(DataError, match="linear probe and tokens='cls' read the CLS token only"):
        build_augmentation(0.5, 0.0, PAIRS, 3, select_tokens(layout(), "cls"))
    with pytest.raises(DataError, match="needs mirrored class pairs"):
        build_augmentation(0.0, 0.5, (), 3, select_tokens(layout(), "all"))
    assert build_augmentation(0.0, 0.0, (), 3, select_tokens(layout(), "cls")) is None
    with pytest.raises(TrainConfigError, match=r"token_drop must be in \[0, 1\)"):
        make_config("step", {"token_drop": 1.0})
    with pytest.raises(TrainConfigError, match=r"reverse_pairs must be in \[0, 1\]"):
        make_config("step", {"reverse_pairs": -0.1})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokens")
    write_token_cache(directory, videos_per_class=8, clips_per_video=2, clips_per_shard=10, dim=16)
    return directory


def test_augmented_run_records_settings_differs_and_resumes_exactly(cache, tmp_path):
    options = {**FAST, "token_drop": 0.5, "reverse_pairs": 0.5}
    plain = train_probe(cache, "step", tmp_path / "plain", **FAST)
    straight = train_probe(cache, "step", tmp_path / "straight", **options)
    config = json.loads((tmp_path / "straight" / "config.json").read_text())["config"]
    assert config["token_drop"] == 0.5 and config["reverse_pairs"] == 0.5
    assert plain.history[0]["train_loss"] != straight.history[0]["train_loss"]

    def kill_after_one(record):
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_probe(cache, "step", tmp_path / "resumed", on_epoch=kill_after_one, **options)
    resumed = train_probe(cache, "step", tmp_path / "resumed", resume=True, **options)
    same_run(straight, resumed)


def test_stacked_seeds_share_the_augmentation_of_a_lone_run(cache, tmp_path):
    """Seed 0 of a --seeds 2 stack trains on the same augmented batches as seed 0 alone: same first-epoch loss."""
    options = {**FAST, "epochs": 1, "token_drop": 0.5, "reverse_pairs": 0.5}
    alone = train_probe(cache, "self-attentive", tmp_path / "alone", **options)
    train_probe(cache, "self-attentive", tmp_path / "stack", seeds=2, **options)
    stacked = json.loads((tmp_path / "stack" / "metrics.jsonl").read_text().splitlines()[0])  # seed 0's
    loss, reference = stacked["train_loss"], alone.history[0]["train_loss"]
    # Same batches, weights and order of operations per member; the stacked kernels sum in another order.
    assert loss == pytest.approx(reference, rel=1e-4)


def test_augmentations_are_sweep_parameters_that_split_stacks():
    from step_cache.sweeps.space import build_space
    from step_cache.training.stacking.grouping import group_by_shape

    space = build_space("step", ["token_drop=0,0.5", "reverse_pairs=0.25"])
    assert space.distributions["token_drop"].choices == (0.0, 0.5) and space.fixed == {"reverse_pairs": 0.25}
    configs = [make_config("step", {"token_drop": drop, "lr": lr}) for drop in (0.0, 0.5) for lr in (1e-3, 3e-3)]
    assert group_by_shape(configs) == [[0, 1], [2, 3]]  # augmentations are shared by a stack, lr is per member
