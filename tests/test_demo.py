"""The demo's promise on a small version of the benchmark: STEP reads frame order, the invariant probes cannot."""

import json
import sys

import pytest

from step_cache.demo import DemoSettings, run_demo

SMALL = DemoSettings(per_class=16, probes=("linear", "attentive", "step"))  # ~40 s on 2 cores


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    return run_demo(directory, SMALL, progress=False)


def metrics(demo, probe):
    """The test split's figures, mean over the seeds (the table's headline)."""
    run = json.loads((demo.directory / "runs" / probe / "metrics.json").read_text())
    assert run["headline_split"] == "test" and run["seeds"] == [0, 1, 2] and len(run["per_seed"]) == 3
    return {**run["splits"]["test"], "parameters_without_head": run["parameters_without_head"]}


def test_step_separates_mirrored_pairs_and_invariant_probes_do_not(demo):
    """On test videos, mean of 3 seeds, with train-probe's default schedule. The small benchmark (10 training
    videos per class) leaves STEP's seeds far apart (measured 65.6 ± 15.4 % pair accuracy), so the test asserts
    what holds for every seed: STEP reads frame order (reversing the frames flips its answers), the invariant
    probes cannot."""
    step, linear, attentive = (metrics(demo, p) for p in ("step", "linear", "attentive"))
    assert step["pair_accuracy"] - step["reversed_pair_accuracy"] >= 0.2, demo.table
    for blind in (linear, attentive):
        assert step["pair_accuracy"] > blind["pair_accuracy"], demo.table
        # Blind to order: reversed or shuffled frames give the very same answers.
        assert blind["reversed_top1"] == pytest.approx(blind["top1"], abs=1e-9)
        assert blind["shuffled_top1"] == pytest.approx(blind["top1"], abs=1e-9)
    assert step["parameters_without_head"] < 0.4 * attentive["parameters_without_head"]


def test_table_and_report(demo):
    lines = demo.table.splitlines()
    assert lines[0].split()[:5] == ["run", "probe", "split", "seeds", "top-1"] and len(lines) == 2 + len(SMALL.probes)
    assert all(line.split()[2:5] == ["test", "3", "(init)"] and "±" in line for line in lines[2:])  # std: init only
    assert demo.report.is_file() and (demo.directory / "report" / "report.html").is_file()
    assert "figures/comparison.png" in demo.report.read_text()


def test_rerun_reuses_every_finished_stage(demo):
    again = run_demo(demo.directory, SMALL, progress=False)
    assert again.seconds["videos"] < 1 and again.seconds["train"] < 10
    assert again.table == demo.table


def test_without_matplotlib_the_demo_skips_its_report_and_still_prints_the_table(demo, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    again = run_demo(demo.directory, SMALL, progress=False)
    assert again.report is None and again.table == demo.table
    assert again.summary().startswith(demo.table) and "pip install 'step-cache[report]'" in again.summary()
    assert "no report: the report (its figures) needs matplotlib" in caplog.text
