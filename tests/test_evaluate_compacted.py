"""``evaluate`` on a pooled ``compact`` of a run's cache, and a run trained on a pooled compact given its source
(issue 32): a run reading CLS tokens only scores either (pooling leaves them as stored); any other run is refused
in one line that says exactly what to pass, and following it gives the figures of the compact."""

from __future__ import annotations

import numpy as np
import pytest

from step_cache.cache.compact import compact
from step_cache.cache.manifest import ManifestError
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.evaluation import evaluate
from step_cache.training.trainer import train_probe


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("compacted")
    write_token_cache(root / "src", videos_per_class=6, grid=(4, 4), dim=8, val_every=3)
    compact(root / "src", root / "pooled", pool_patches=2, progress=False)
    for cache in ("src", "pooled"):
        for probe in ("linear", "step"):
            train_probe(root / cache, probe, root / f"{probe}-on-{cache}", epochs=2, batch_size=4, progress=False)
    return root


def _same_figures(a, b):
    assert a["top1"] == b["top1"] and a["clips"] == b["clips"]
    np.testing.assert_array_equal(a["confusion_matrix"], b["confusion_matrix"])


@pytest.mark.parametrize("trained,other", [("src", "pooled"), ("pooled", "src")])
def test_a_cls_only_run_scores_the_pooled_compact_and_its_source_alike(caches, trained, other):
    run = caches / f"linear-on-{trained}"
    _same_figures(evaluate(run, caches / other, split="val"), evaluate(run, caches / trained, split="val"))


def test_a_run_on_patches_refuses_a_pooled_compact_naming_its_own_cache(caches):
    with pytest.raises(ManifestError) as error:
        evaluate(caches / "step-on-src", caches / "pooled")
    pooled, src = caches / "pooled", (caches / "src").resolve()
    assert str(error.value) == (
        f"{pooled}: its patches are pooled 2x2 (step-cache compact of {src}), the run trained on patches pooled "
        f"1x1: evaluate the run on the cache it was trained on ({src}) or another with its patches, or train a run "
        f"on {pooled}"
    )


def test_a_run_on_a_pooled_compact_says_how_to_compact_its_source_and_that_works(caches, tmp_path):
    src = caches / "src"
    with pytest.raises(ManifestError) as error:
        evaluate(caches / "step-on-pooled", src)
    assert str(error.value) == (
        f"{src}: the run was trained on patches pooled 2x2 after storage (a compact of its cache), this cache's are "
        f"1x1: compact it the same way first (step_cache.cache.compact.compact('{src}', OUT, pool_patches=2)), "
        "then evaluate on OUT"
    )
    compact(src, tmp_path / "out", pool_patches=2, progress=False)
    run = caches / "step-on-pooled"
    _same_figures(evaluate(run, tmp_path / "out", split="val"), evaluate(run, caches / "pooled", split="val"))


def test_the_cli_names_the_compact_command(caches):
    from test_bad_input_round3 import invoke, one_error_line

    src = caches / "src"
    line = one_error_line(invoke("evaluate", "--run", caches / "step-on-pooled", src))
    assert f"compact it the same way first (step-cache compact {src} OUT --pool-patches 2), then evaluate" in line
