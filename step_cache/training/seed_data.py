"""``train_probe(..., seeds=N, vary="data")``: N seeds whose batch order and held-out validation videos vary with the
seed too, not only their initial weights (``vary="init"``, ``stacking/seeds.py``: one stack sharing batches and
splits). A stack's members see one batch stream, so here each seed is a run of its own — exactly the one-seed run
``train_probe(..., seed=S)`` makes (its batches and val hold-out come from S) — in ``OUT/seeds/seed-S/``, and the
run pools them as a ``--seeds`` run does:

    config.json                 the first seed's record with config.seeds N, config.vary "data", data.seeds
    metrics.json                mean ± std over the seeds (``vary: "data"``), pooled matrices and chance
    metrics.jsonl, best.pt      the first seed's (so evaluate, predict and report read it like a one-seed run)
    seeds/seed-<s>/             each seed's complete run directory (config.json, metrics.json, best.pt, ...)

``--resume`` continues a killed run: finished seeds are read back, the interrupted one resumes from its last commit
(each seed's run commits as a one-seed run does), the others start.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from step_cache.cache.shards import CacheInput, as_shards
from step_cache.checkpoints import load_state_dict_file
from step_cache.training import runs
from step_cache.training.config import TrainConfig
from step_cache.training.metrics_file import metrics_document, seed_metrics
from step_cache.training.protocol_use import announced
from step_cache.training.run_checkpoints import record as record_checksum
from step_cache.training.run_checkpoints import save_checkpoint
from step_cache.training.runs import SEEDS_DIR, seed_dir

log = logging.getLogger(__name__)


def train_data_seeds(
    cache: CacheInput,
    config: TrainConfig,
    out: Path,
    resume: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    started: float | None,
    train_probe: Callable[..., Any],
    holdout: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``config.seeds`` seeds, each as its own run made by ``train_probe`` (``trainer.train_probe``, which
    calls this for ``seeds > 1`` with ``vary="data"``, after refusing an existing run), into ``out`` (see the
    module doc); returns (metrics, first seed's epoch records). ``on_epoch`` sees the first seed's epochs;
    ``holdout``: every seed's val hold-out rule (None: a resumed seed's own, else today's)."""
    shards = as_shards(cache)
    seeds = [config.seed + i for i in range(config.seeds)]
    if not resume:  # a new run: nothing of an old one may look like part of it
        runs.clear_run(out)
        shutil.rmtree(out / SEEDS_DIR, ignore_errors=True)
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "probe"}
    log.info("%s: training %d seeds (%s), each with its own batches and val hold-out", config.probe, len(seeds),
             ", ".join(map(str, seeds)))  # fmt: skip
    results = []
    with announced():  # a preset's differences were printed once, by this run: not again per seed
        for index, seed in enumerate(seeds):
            directory = seed_dir(out, seed)
            again = resume and (directory / runs.CONFIG).is_file()
            first_only = on_epoch if index == 0 else None
            result = train_probe(shards, config.probe, directory, resume=again, overwrite=not again,
                                 on_epoch=first_only, holdout=holdout,
                                 **{**options, "seeds": 1, "seed": seed})  # fmt: skip
            results.append(result)
    record = runs.read_config(seed_dir(out, seeds[0]))
    record["config"].update(seeds=config.seeds, seed=config.seed, vary="data")
    record["data"]["seeds"] = seeds
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / runs.CONFIG, record)  # before the checksums: they are recorded under this run's identity
    for seed in seeds:
        best = seed_dir(out, seed) / runs.BEST
        record_checksum(out, best, best.read_bytes())
    save_checkpoint(out, out / runs.BEST, load_state_dict_file(seed_dir(out, seeds[0]) / runs.BEST))
    runs.write_epoch_log(out, results[0].history)
    wall = time.perf_counter() - started if started is not None else None
    metrics = metrics_document(seeds, [seed_metrics(r.metrics) for r in results], wall, vary="data")
    runs.write_json(out / runs.FINAL_METRICS, metrics)  # the commit point of the pooled run
    return metrics, results[0].history
