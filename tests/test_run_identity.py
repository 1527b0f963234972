"""checkpoints.json records its run's identity (settings sha256 and creation time): a best.pt copied in together
with its checkpoints.json from another run is refused; the run's own pair, a resumed run and a sweep's best-run
(whose config.json gains its sweep afterwards) still load."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import runs
from step_cache.training.evaluation import evaluate
from step_cache.training.run_checkpoints import CheckpointMismatchError, run_identity
from step_cache.training.trainer import train_probe

FAST = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("identity") / "shards"
    write_token_cache(directory, videos_per_class=8, dim=16)
    return directory


def test_a_checkpoint_copied_with_its_record_from_another_run_is_refused(cache, tmp_path):
    mine = train_probe(cache, "linear", tmp_path / "mine", **FAST).run_dir
    time.sleep(1.1)  # the same settings, created a second later: another run
    other = train_probe(cache, "linear", tmp_path / "other", **FAST).run_dir
    recorded = json.loads((mine / runs.CHECKPOINT_SUMS).read_text())["run"]
    assert recorded == run_identity(mine) and recorded != run_identity(other)
    figures = evaluate(mine, cache)
    for name in (runs.BEST, runs.CHECKPOINT_SUMS):
        shutil.copy2(other / name, mine / name)
    with pytest.raises(CheckpointMismatchError, match=re.escape("checkpoints.json belongs to another run (created ")):
        evaluate(mine, cache)
    # --resume of the finished run rewrites its own record and checkpoints from its committed state.
    (mine / runs.BEST).unlink()
    (mine / runs.CHECKPOINT_SUMS).unlink()
    train_probe(cache, "linear", mine, **FAST, resume=True)
    assert evaluate(mine, cache)["top1"] == figures["top1"]


def test_a_record_without_an_identity_still_loads(cache, tmp_path):
    run = train_probe(cache, "linear", tmp_path / "run", **FAST).run_dir
    content = json.loads((run / runs.CHECKPOINT_SUMS).read_text())
    del content["run"]  # written before identities were recorded
    (run / runs.CHECKPOINT_SUMS).write_text(json.dumps(content))
    assert evaluate(run, cache)["top1"] >= 0
