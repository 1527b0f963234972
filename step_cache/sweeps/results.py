"""The files a sweep leaves in its output directory, rebuilt from the study (so they cover the trials of every
worker of a shared study):

- ``trials.json``: the metric, its direction, the search space and every trial (best first): number, state,
  objective value, parameters, summary metrics (order metrics included), epochs run, worker, duration.
- ``trials.csv``: the same, one row per trial, one column per parameter and metric.
- ``best.json``: the best completed trial: its parameters, its full training config and metrics, and the summary
  of ``best-run/`` — that config retrained alone by ``train_probe`` (a normal train-probe run directory).

Each file is replaced atomically and never with fewer finished trials than it held: outcomes in a study are
permanent, and a run whose study is not the one the files came from is refused before it trains
(``check_resume``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from step_cache.cache.files import atomic_write_text
from step_cache.cache.shards import ShardSet
from step_cache.interface import option
from step_cache.sweeps.search import SweepError
from step_cache.sweeps.space import SearchSpace
from step_cache.sweeps.storage import JOURNAL, SweepStorage, has_outcome, is_skipped
from step_cache.training import runs
from step_cache.training.config import LOCAL_FIELDS, TrainConfig
from step_cache.training.metrics import format_percent
from step_cache.training.run_record import with_config_defaults
from step_cache.training.trainer import TrainResult, train_probe

TRIALS_JSON, TRIALS_CSV, BEST_JSON, BEST_RUN = "trials.json", "trials.csv", "best.json", "best-run"
SUMMARY_KEYS = (
    "top1", "top5", "mean_class_accuracy", "loss", "pair_accuracy", "reversed_top1", "shuffled_top1",
    "reversed_pair_accuracy", "shuffled_pair_accuracy", "best_epoch", "parameters", "train_time_s",
    "stacked_members",
)  # fmt: skip
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1}
log = logging.getLogger(__name__)


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best objective (the lowest number among equals)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None
    sign = -1 if _maximize(study) else 1
    return min(completed, key=lambda t: (sign * t.value, t.number))


def _last_reported(trial: FrozenTrial) -> float | None:
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial with an outcome or running, completed first by objective, then pruned by their last reported
    value. Left out: surplus and duplicate trials, queued ones, and those failed because their worker died or was
    interrupted
    (their re-queued copy is listed instead)."""
    sign = -1 if _maximize(study) else 1
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if not (has_outcome(trial) or (trial.state == TrialState.RUNNING and not is_skipped(trial))):
            continue
        metrics = dict(trial.user_attrs.get("metrics", {}))
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "last_reported": _last_reported(trial),
            "epochs_run": metrics.pop("epochs_run", None),
            "params": dict(trial.params),
            "metrics": metrics,
            "worker": trial.user_attrs.get("worker"),
            "failure": trial.user_attrs.get("failure"),
            "retry_of": trial.system_attrs.get("failed_trial"),
            "duration_s": trial.duration.total_seconds() if trial.duration is not None else None,
        })  # fmt: skip

    def order(row: dict[str, Any]) -> tuple:
        score = row["value"] if row["state"] == "COMPLETE" else row["last_reported"]
        missing = score is None or (isinstance(score, float) and math.isnan(score))
        return (_STATE_ORDER.get(row["state"], 2), missing, 0.0 if missing else sign * score, row["number"])

    rows.sort(key=order)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _csv_rows(rows: list[dict[str, Any]], space: SearchSpace) -> tuple[list[str], list[dict[str, Any]]]:
    params = list(space.distributions) + sorted({k for r in rows for k in r["params"]} - set(space.distributions))
    columns = ["rank", "number", "state", "value", *params, "epochs_run", *SUMMARY_KEYS, "worker", "duration_s"]
    flat = []
    for row in rows:
        cells = {k: row.get(k) for k in ("rank", "number", "state", "value", "epochs_run", "worker", "duration_s")}
        cells.update({name: row["params"].get(name) for name in params})
        cells.update({key: row["metrics"].get(key) for key in SUMMARY_KEYS})
        flat.append(cells)
    return columns, flat


def best_record(study: optuna.Study, metric: str, space: SearchSpace) -> dict[str, Any] | None:
    trial = best_trial(study)
    if trial is None:
        return None
    return {
        "number": trial.number,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "value": trial.value,
        "params": dict(trial.params),
        "fixed": dict(space.fixed),
        "config": trial.user_attrs.get("config"),
        "metrics": trial.user_attrs.get("metrics"),
    }


def read_trials(path: Path, tables: bool = False) -> dict[str, Any]:
    """A sweep's ``trials.json``, after checking its shape: an object with a list of ``trials``, each an object
    with ``number`` and ``state`` (older sweeps wrote no more); ``tables``: also ``metric``, ``space`` and every
    trial's ``params`` (what reports and plots read). An old or hand-made file of another shape is one SweepError
    naming it, never a traceback later on."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise SweepError(f"{path}: not valid JSON; move it away to start the sweep afresh") from None
    trials = content.get("trials") if isinstance(content, dict) else None
    fields = {"number", "state", *(("params",) if tables else ())}
    problem = (
        f"a JSON {type(content).__name__}, not an object" if not isinstance(content, dict)
        else "no list of 'trials'" if not isinstance(trials, list)
        else "no 'space' object or 'metric'" if tables and (not isinstance(content.get("space"), dict)
                                                            or "metric" not in content)
        else f"a trial without {', '.join(sorted(fields))}" if not all(
            isinstance(t, dict) and fields <= set(t) and isinstance(t.get("params", {}), dict) for t in trials)
        else None
    )  # fmt: skip
    if problem:
        raise SweepError(
            f"{path}: not a sweep's trials.json ({problem}); move it away or choose another {option('out')}"
        )
    return content


def _finished(content: dict[str, Any]) -> int:
    if "finished" in content:
        return int(content["finished"])
    return sum(r["state"] in ("COMPLETE", "PRUNED") or bool(r.get("failure")) for r in content.get("trials", []))


def check_out_first(out: Path, shared: bool) -> None:
    """Before the study is opened (which creates ``OUT/study.journal``): refuse an ``OUT`` whose ``trials.json``
    has another shape, or holds finished trials but no journal (a sweep from before sweeps resumed), so that a
    refused sweep leaves nothing new behind. An ``OUT`` holding a training run is refused too (report would then
    read the directory as a sweep only)."""
    path = out / TRIALS_JSON
    if (out / runs.CONFIG).is_file() and not path.exists():
        raise SweepError(
            f"{out}: holds a training run ({runs.CONFIG}); a sweep writes its own files: choose another {option('out')}"
        )
    if not path.exists():
        return
    previous = read_trials(path)
    if not shared and not (out / JOURNAL).exists() and (before := _finished(previous)):
        raise SweepError(
            f"{path}: holds {before} finished trials of another study ({previous.get('study')!r}, "
            f"{previous.get('storage', 'not resumable: no study.journal')}); choose another {option('out')}"
        )


def check_resume(out: Path, store: SweepStorage, study: optuna.Study, trials: int) -> int:
    """The number of trials with an outcome in ``study``, after checking that ``out``'s files (if any) came from
    this study: a sweep started afresh over them would replace their trials with fewer. Logs where the sweep
    stands."""
    done = sum(has_outcome(t) for t in study.get_trials(deepcopy=False))
    path = out / TRIALS_JSON
    if path.exists():
        previous = read_trials(path)
        before = _finished(previous)
        other = previous.get("storage", store.label) != store.label or (
            before and previous.get("study") != study.study_name
        )
        if other or before > done:
            raise SweepError(
                f"{path}: holds {before} finished trials of another study ({previous.get('study')!r}, "
                f"{previous.get('storage', 'not resumable: no study.journal')}); choose another {option('out')}"
            )  # fmt: skip
    where = f"study {study.study_name!r} in {store.label}" if store.shared else str(out)
    if done >= trials:
        log.info("%s: the sweep is finished (%d of %d trials done); nothing to train", where, done, trials)
    elif done:
        log.info("%s %s: %d of %d trials done, %d left", "joining" if store.shared else "resuming", where, done,
                 trials, trials - done)  # fmt: skip
    return done


def retrained(out: Path, best: dict[str, Any]) -> dict[str, Any] | None:
    """best.json's record of ``best-run/`` when it was retrained from this same best trial and finished."""
    try:
        record = json.loads((out / BEST_JSON).read_text()).get("best_run")
    except (OSError, ValueError):
        return None
    if record and record.get("number") == best["number"] and (out / BEST_RUN / "metrics.json").is_file():
        return record
    return None


def write_results(
    out: Path, study: optuna.Study, metric: str, space: SearchSpace, storage: str = "journal",
    best_run: TrainResult | dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:  # fmt: skip
    """Write trials.json, trials.csv and best.json (when a trial completed); returns (rows, best). ``storage``
    names where the study lives (checked when the sweep resumes)."""
    rows = trial_rows(study)
    finished = sum(has_outcome(t) for t in study.get_trials(deepcopy=False))
    before = 0
    with contextlib.suppress(OSError, ValueError):  # no file yet (or unreadable: replaced)
        before = _finished(read_trials(out / TRIALS_JSON))
    if before > finished:  # the guarantee, whatever happens around it: never fewer
        raise SweepError(f"{out / TRIALS_JSON}: holds {before} finished trials, the study {finished}; not replaced")
    runs.write_json(out / TRIALS_JSON, {
        "metric": metric,
        "direction": study.direction.name.lower(),
        "study": study.study_name,
        "storage": storage,
        "finished": finished,
        "space": space.describe(),
        "trials": rows,
    })  # fmt: skip
    columns, flat = _csv_rows(rows, space)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(out / TRIALS_CSV, table.getvalue())
    best = best_record(study, metric, space)
    if best is not None:
        if isinstance(best_run, TrainResult):
            best["best_run"] = {
                "number": best["number"],
                "dir": str(best_run.run_dir),
                # the objective on val, as the trial measured it; then the retrained run's headline figures
                f"val_{metric}": best_run.metrics["splits"]["val"].get(metric),
                "headline_split": best_run.metrics["headline_split"],
                **{key: best_run.metrics.get(key) for key in ("top1", "pair_accuracy", "reversed_top1")},
            }
        elif best_run is not None:
            best["best_run"] = best_run
        elif (kept := retrained(out, best)) is not None:  # best-run/ still holds this best trial's retrain
            best["best_run"] = kept
        runs.write_json(out / BEST_JSON, best)
    return rows, best


def retrain_best(
    out: Path, shards: ShardSet, best: dict[str, Any], current: TrainConfig, holdout: str | None = None
) -> TrainResult:
    """The best trial's configuration trained alone by ``train_probe`` into ``out/best-run`` (replacing an older
    one), on ``holdout``, the study's val hold-out rule (None: today's). Without dropout it reproduces the trial's
    metrics (on CPU up to float rounding).

    The trial may have run on another worker of a shared study (another machine, GPU, data path): its
    machine-local settings (``LOCAL_FIELDS``: device, data mode, workers, progress, pairs file...) are replaced by
    those of ``current``, this process's sweep config, so the retrain runs here."""
    options = with_config_defaults(best["config"])  # a trial stored before early stopping existed ran in full
    probe = options.pop("probe")
    options.update({name: getattr(current, name) for name in LOCAL_FIELDS})
    result = train_probe(shards, probe, out / BEST_RUN, overwrite=True, holdout=holdout, **options)
    # The run carries its sweep's name, so that a copied or reported best-run still says where it came from.
    record = runs.read_config(result.run_dir)
    record["sweep"] = {"name": out.name, "out": str(out), "trial": best.get("number"), "params": best.get("params")}
    runs.write_json(result.run_dir / runs.CONFIG, record)
    return result


METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "mean_class_accuracy": "mean class", "pair_accuracy": "pair"}


def objective_text(metric: str, value: float) -> str:
    """The objective with the split every trial is measured on: "val top-1 62.5%", "val loss 0.4123"."""
    if metric == "loss":
        return f"val loss {value:.4f}"
    return f"val {METRIC_LABELS.get(metric, metric)} {format_percent(value)}"


def trial_line(row: dict[str, Any], metric: str) -> str:
    """One completed trial for the console, the objective named once with its split: "#12   val top-1 62.5% |
    pair 75.0% | lr=0.001" (a loss objective: "val loss 0.4123 | top-1 ...")."""
    figures = row["metrics"]
    shown = [objective_text(metric, row["value"])]
    others = ("top1",) if metric == "loss" else ("top1", "pair_accuracy")
    shown += [f"{METRIC_LABELS[key]} {format_percent(figures.get(key))}" for key in others if key != metric]
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
    return f"  #{row['number']:<4} {' | '.join(shown)} | {params}"
