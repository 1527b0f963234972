"""The anchors' published frozen evaluations as presets (``train-probe --protocol NAME`` / ``sweep --protocol NAME``):
each ``TrainConfig`` field of the protocol that applies to a cache, its grid (one stacked sweep), what it needs of
the cache's extraction, and what a cache cannot follow.

Every value names the anchor's file, line and own setting (``Source``), read from the anchors' repositories at the
commits in ``ANCHORS``; docs/protocols.md is generated from these (``protocol_use.protocol_table``, tested equal).
How a value is converted, where it is not copied as is: the global batch is the per-GPU ``batch_size`` times
``nodes`` × ``tasks_per_node``; DINOv2 scales each lr by (batch × GPUs) / 256 (``scale_lr``), one process here.
Applying a preset and checking a cache: ``protocol_use.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANCHORS = {
    "dinov2": "facebookresearch/dinov2@05c66df0cfa837710197d4769158c87e36afad2c",
    "jepa": "facebookresearch/jepa@0f772c5a1ace97e4899220bc8c99dbf212d557ca",
    "vjepa2": "facebookresearch/vjepa2@073e524aa7104c03f404202d9e8cd73007f4fe1b",
}
_LINEAR = "dinov2/eval/linear.py"
_JEPA_CONFIG = "configs/evals/vitl16_k400_16x8x3.yaml"
_JEPA_EVAL = "evals/video_classification_frozen/eval.py"
# The stored V-JEPA 2 ViT-L configs are the area-attention variants, "Based on ssv2.yaml" (their line 2): the eval
# settings below are the same keys, and the encoder settings they change are no part of a cache's probe.
_VJEPA2_CONFIG = "configs/eval/vitl/ssv2-area-attn.yaml"
_VJEPA2_EVAL = "evals/video_classification_frozen/eval.py"

DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
DINOV2_BATCH = 128
VJEPA2_LRS = (0.005, 0.003, 0.001, 0.0003, 0.0001)
VJEPA2_WDS = (0.01, 0.1, 0.4, 0.8)


@dataclass(frozen=True)
class Source:
    """A preset's value, the anchor's own setting it comes from, and where that is (file:line or file, function)."""

    value: Any
    anchor: str
    where: str


@dataclass(frozen=True)
class Protocol:
    """One anchor's frozen evaluation as it applies to a cache.

    ``fields``: ``TrainConfig`` fields (``probe_options.X`` for a probe option) set for every run; ``grid``: the
    values a sweep trains as one stack (sweep-space names; train-probe takes one of them from the user);
    ``requirements``: what the cache's extraction must hold (checked, ``protocol_use.cache_differences``);
    ``differences``: what a cache cannot follow, printed when the preset runs."""

    name: str
    anchor: str
    fields: dict[str, Source]
    grid: dict[str, Source] = field(default_factory=dict)
    requirements: dict[str, Source] = field(default_factory=dict)
    differences: tuple[str, ...] = ()


def _video_needs(
    config: str,
    *,
    frames: tuple[int, int],
    step: tuple[int, int],
    views: tuple[tuple[int, int], str],
    crop: tuple[int, int],
) -> dict[str, Source]:
    """A V-JEPA config's data requirements: each (value, line in ``config``)."""
    (segments, crops), lines = views
    return {
        "frames": Source(frames[0], f"frames_per_clip: {frames[0]}", f"{config}:{frames[1]}"),
        "frame_step": Source(step[0], f"frame_step: {step[0]}", f"{config}:{step[1]}"),
        "test_views": Source(
            (segments, crops), f"num_segments: {segments}, num_views_per_segment: {crops}", f"{config}:{lines}"
        ),
        "resolution": Source(crop[0], f"resolution: {crop[0]}", f"{config}:{crop[1]}"),
    }  # fmt: skip


def _softmax_average(eval_file: str, code: str) -> dict[str, Source]:
    """``view_average``: V-JEPA's eval averages the softmax of a video's views (``run_one_epoch``)."""
    return {"view_average": Source("softmax", code, f"{eval_file}, run_one_epoch")}


_NO_ANCHOR_VAL = (
    "no checkpoint selection: the anchor trains a fixed schedule and scores its val set (the benchmark's evaluation "
    "set) every epoch; here the last epoch's weights are scored on the cache's test split"
)
_AUGMENTATION = (
    "training augmentation: the anchor re-runs the backbone every epoch on random resized crops (scale 0.08-1, "
    "aspect 0.75-4/3), RandAugment (auto_augment) and random erasing (reprob 0.25), no flip ({where}, "
    "make_dataloader); a cache holds fixed views: the clean one and, with extract --views N, N augmented ones"
)

DINOV2_LINEAR = Protocol(
    name="dinov2-linear",
    anchor=ANCHORS["dinov2"],
    fields={
        "probe": Source("linear", "LinearClassifier: nn.Linear on the CLS tokens", f"{_LINEAR}:195-210"),
        "probe_options.layer_norm": Source(False, "no norm before the linear layer", f"{_LINEAR}:180-192"),
        "optimizer": Source("sgd", "torch.optim.SGD(..., momentum=0.9, weight_decay=0)", f"{_LINEAR}, run_eval_linear"),
        "weight_decay": Source(0.0, "weight_decay=0", f"{_LINEAR}, run_eval_linear"),
        "warmup_epochs": Source(
            0.0, "CosineAnnealingLR(optimizer, max_iter, eta_min=0)", f"{_LINEAR}, run_eval_linear"
        ),
        "clip_grad": Source(0.0, "no gradient clipping", f"{_LINEAR}, eval_linear"),
        "label_smoothing": Source(0.0, "nn.CrossEntropyLoss()", f"{_LINEAR}, eval_linear"),
        "epochs": Source(10, "epochs=10 (of epoch_length=1250 iterations)", f"{_LINEAR}:148,151"),
        "batch_size": Source(DINOV2_BATCH, "batch_size=128 (per GPU)", f"{_LINEAR}:149"),
        "select_metric": Source("top1", "val_metric_type=MetricType.MEAN_ACCURACY (micro: top-1)", f"{_LINEAR}:155"),
        "early_stop": Source(False, "max_iter = epochs * epoch_length, no stop", f"{_LINEAR}, run_eval_linear"),
        "amp": Source(
            True, "torch.cuda.amp.autocast(enabled=True, dtype=autocast_dtype)", f"{_LINEAR}, run_eval_linear"
        ),
    },
    grid={
        "lr": Source(
            tuple(lr * DINOV2_BATCH / 256 for lr in DINOV2_LRS),
            "learning_rates=[1e-5, ..., 0.1] x scale_lr (batch x GPUs / 256)",
            f"{_LINEAR}:154,240-241",
        ),
        "avgpool": Source((False, True), "for avgpool in [False, True]", f"{_LINEAR}:248"),
        "layers": Source(
            ("last", "concat:last4"),
            "n_last_blocks_list = [1, 4]; create_linear_input concatenates their CLS tokens",
            f"{_LINEAR}:180-182, run_eval_linear",
        ),
    },
    requirements={
        "resolution": Source(224, "make_classification_eval_transform(crop_size=224)", "dinov2/data/transforms.py"),
        "layers": Source("last4", "n_last_blocks_list = [1, 4]", f"{_LINEAR}, run_eval_linear"),
    },
    differences=(
        "schedule: an anchor epoch is 1250 iterations of an infinite sampler (12 500 steps of 128 images); here "
        "an epoch is one pass over the cached training clips (the preset's 10: 10 passes)",
        "learning rates: the anchor scales them by its global batch (128 x GPUs) / 256; here by 128 / 256 (one "
        "process)",
        "training augmentation: the anchor trains on random resized crops and flips "
        "(make_classification_train_transform); a cache holds fixed views (extract --views N at best)",
        "selection: the anchor keeps every head's last weights and picks the head on its val set (also its test set "
        "unless --test-datasets); here each member keeps its best epoch on the val split and the sweep picks on val",
        "video: the anchor evaluates images; here the linear probe averages the per-frame CLS tokens of a clip",
    ),
)

VJEPA_ATTENTIVE = Protocol(
    name="vjepa-attentive",
    anchor=ANCHORS["jepa"],
    fields={
        "probe": Source("attentive", "AttentiveClassifier(...)", f"{_JEPA_EVAL}, main"),
        "probe_options.depth": Source(1, "depth=1", f"{_JEPA_EVAL}, main"),
        "probe_options.num_heads": Source(
            None, "num_heads=encoder.num_heads (D // 64: ViT-S/B/L)", f"{_JEPA_EVAL}, main"
        ),
        "probe_options.output_projection": Source(
            False, "CrossAttention builds proj but never applies it", "src/models/utils/modules.py, CrossAttention"
        ),
        "optimizer": Source("adamw", "torch.optim.AdamW(param_groups)", f"{_JEPA_EVAL}, init_opt"),
        "lr": Source(0.001, "lr: 0.001", f"{_JEPA_CONFIG}:21"),
        "weight_decay": Source(0.01, "weight_decay: 0.01", f"{_JEPA_CONFIG}:20"),
        "warmup_epochs": Source(0.0, "warmup: 0. (start_lr: 0.001 = lr)", f"{_JEPA_CONFIG}:22,24"),
        "epochs": Source(20, "num_epochs: 20", f"{_JEPA_CONFIG}:17"),
        "batch_size": Source(256, "batch_size: 4 per GPU x tasks_per_node: 8 x nodes: 8", f"{_JEPA_CONFIG}:1,2,19"),
        "clip_grad": Source(1.0, "clip_grad_norm_(classifier.parameters(), 1.0)", f"{_JEPA_EVAL}, run_one_epoch"),
        "label_smoothing": Source(0.0, "torch.nn.CrossEntropyLoss()", f"{_JEPA_EVAL}, run_one_epoch"),
        "amp": Source(True, "use_bfloat16: true", f"{_JEPA_CONFIG}:25"),
        "early_stop": Source(False, "for epoch in range(start_epoch, num_epochs), no stop", f"{_JEPA_EVAL}, main"),
        "val": Source("none", "final_lr: 0.0; every epoch scored on dataset_val", f"{_JEPA_CONFIG}:8,23"),
        **_softmax_average(_JEPA_EVAL, "sum(F.softmax(o, dim=1) ...) / len(outputs)"),
    },
    requirements=_video_needs(_JEPA_CONFIG, frames=(16, 11), step=(4, 14), views=((8, 3), "12-13"), crop=(224, 18)),
    differences=(
        _NO_ANCHOR_VAL,
        _AUGMENTATION.format(where=_JEPA_EVAL),
        "segments: the anchor attends across the 8 segments of a video in training (attend_across_segments: true, "
        f"{_JEPA_CONFIG}:16); a cache row is one segment, and a video's segments are combined by the mean of "
        "their softmax (view_average softmax)",
        "weight decay: the anchor decays it on a cosine from 0.01 towards 1e-6 (init_opt's final_wd default) and "
        "decays the query token; here a constant 0.01 on weight matrices only",
    ),
)

VJEPA2_ATTENTIVE = Protocol(
    name="vjepa2-attentive",
    anchor=ANCHORS["vjepa2"],
    fields={
        "probe": Source("attentive", "classifier (AttentiveClassifier)", f"{_VJEPA2_CONFIG}:21"),
        "probe_options.depth": Source(4, "num_probe_blocks: 4", f"{_VJEPA2_CONFIG}:23"),
        "probe_options.num_heads": Source(16, "num_heads: 16", f"{_VJEPA2_CONFIG}:22"),
        "probe_options.output_projection": Source(
            False, "CrossAttention has no output projection", "src/models/utils/modules.py, CrossAttention"
        ),
        "optimizer": Source("adamw", "torch.optim.AdamW(param_groups)", f"{_VJEPA2_EVAL}, init_opt"),
        "warmup_epochs": Source(0.0, "warmup: 0.0 (start_lr = lr), final_lr: 0.0", f"{_VJEPA2_CONFIG}:37,40-41"),
        "epochs": Source(20, "num_epochs: 20", f"{_VJEPA2_CONFIG}:157"),
        "batch_size": Source(256, "batch_size: 4 per GPU x tasks_per_node: 8 x nodes: 8", f"{_VJEPA2_CONFIG}:15,19,35"),
        "clip_grad": Source(0.0, "no gradient clipping", f"{_VJEPA2_EVAL}, run_one_epoch"),
        "label_smoothing": Source(0.0, "torch.nn.CrossEntropyLoss()", f"{_VJEPA2_EVAL}, run_one_epoch"),
        "amp": Source(True, "use_bfloat16: true", f"{_VJEPA2_CONFIG}:158"),
        "early_stop": Source(False, "for epoch in range(start_epoch, num_epochs), no stop", f"{_VJEPA2_EVAL}, main"),
        **_softmax_average(_VJEPA2_EVAL, "sum([F.softmax(o, dim=1) ...]) / len(coutputs)"),
    },
    grid={
        "lr": Source(VJEPA2_LRS, "multihead_kwargs lr: 0.005, 0.003, 0.001, 0.0003, 0.0001", f"{_VJEPA2_CONFIG}:39-63"),
        "weight_decay": Source(
            VJEPA2_WDS, "multihead_kwargs weight_decay: 0.01, 0.1, 0.4, 0.8", f"{_VJEPA2_CONFIG}:42,72,102,132"
        ),
    },
    requirements=_video_needs(_VJEPA2_CONFIG, frames=(16, 29), step=(4, 28), views=((2, 3), "31-32"), crop=(256, 33)),
    differences=(
        _AUGMENTATION.format(where=_VJEPA2_EVAL),
        "selection: the anchor reports the best of its 20 heads on its val set, the benchmark's evaluation set "
        "(run_one_epoch returns _agg_top1.max()); here the sweep picks the member on the val split and reports test",
        "weight decay: the anchor decays every parameter (one parameter group, init_opt); here weight matrices only",
    ),
)

PROTOCOLS = {p.name: p for p in (DINOV2_LINEAR, VJEPA_ATTENTIVE, VJEPA2_ATTENTIVE)}
