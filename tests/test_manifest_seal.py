"""Issue 23 case 6: a manifest edited by hand is caught before use.

Every manifest carries ``manifest_sha256`` over its own content (``step_cache.cache.sealing``): two class names
swapped, a shard entry removed or a label renamed stop ``train-probe``, ``evaluate`` and ``predict`` with one line
naming the manifest, and ``verify`` reports it. A manifest of an older step-cache (no seal) keeps working with one
warning."""

import json
import subprocess
import sys

import pytest

from step_cache.cache.manifest import ManifestError, read_manifest
from step_cache.cache.sealing import SEAL_KEY, content_sha256
from step_cache.cache.verify import verify_cache
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.trainer import train_probe


@pytest.fixture(scope="module")
def sealed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seal")
    write_token_cache(root / "c", num_classes=4, videos_per_class=6, clips_per_shard=8, val_every=3)
    train_probe(root / "c", "linear", root / "run", epochs=1, batch_size=8, progress=False)
    return root


def cli(*args):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _copy_cache(root, tmp_path):
    import shutil

    shutil.copytree(root / "c", tmp_path / "c")
    path = tmp_path / "c" / "manifest.json"
    return path, json.loads(path.read_text())


def _swap_classes(data):
    data["classes"][0], data["classes"][1] = data["classes"][1], data["classes"][0]


def _drop_shard(data):
    data["shards"].pop()
    data["num_clips"] = sum(s["clips"] for s in data["shards"])
    data["num_videos"] = sum(s["videos"] for s in data["shards"])


def _rename_label(data):
    data["classes"][2] = "something_else"


EDITS = {"swapped classes": _swap_classes, "removed shard entry": _drop_shard, "edited label": _rename_label}


def test_a_written_manifest_is_sealed(sealed_run):
    data = json.loads((sealed_run / "c" / "manifest.json").read_text())
    assert data[SEAL_KEY] == content_sha256(data) and len(data[SEAL_KEY]) == 64
    assert list(data)[-1] == SEAL_KEY  # the rest of the file reads as before


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_manifest_is_refused_and_verify_names_it(sealed_run, tmp_path, edit):
    path, data = _copy_cache(sealed_run, tmp_path)
    EDITS[edit](data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    with pytest.raises(ManifestError, match="edited after step-cache wrote it"):
        read_manifest(tmp_path / "c")
    with pytest.raises(ManifestError, match="edited after step-cache wrote it"):
        train_probe(tmp_path / "c", "linear", tmp_path / "r", epochs=1, progress=False)
    report = verify_cache(tmp_path / "c")
    assert not report.ok and any(p.startswith(f"{path}: edited after step-cache wrote it") for p in report.problems)


def test_swapped_classes_stop_the_commands_in_one_line(sealed_run, tmp_path):
    path, data = _copy_cache(sealed_run, tmp_path)
    _swap_classes(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    run = sealed_run / "run"
    verify = cli("verify", tmp_path / "c", "--quiet")
    assert verify.returncode == 1 and f"problem: {path}: edited after step-cache wrote it" in verify.stdout
    for command in (
        ("evaluate", "--run", run, "--features", tmp_path / "c"),
        ("predict", "--run", run, "--features", tmp_path / "c", "--out", tmp_path / "p.csv"),
        ("train-probe", "--features", tmp_path / "c", "--probe", "linear", "--out", tmp_path / "r", "--quiet"),
    ):
        result = cli(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"error: {path}: edited after step-cache wrote it (its manifest_sha256 does not match its content: "
            "class list, shard entries, labels or settings changed), so the cache is not used; restore the "
            "manifest or re-extract"
        ], command
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r" / "best.pt").exists()


def test_reindenting_a_manifest_is_not_an_edit(sealed_run, tmp_path):
    path, data = _copy_cache(sealed_run, tmp_path)
    path.write_text(json.dumps(data))  # one line, other key spacing: the same content
    assert read_manifest(tmp_path / "c").classes == data["classes"] and verify_cache(tmp_path / "c").ok


def test_an_older_manifest_without_a_seal_warns_once_and_works(sealed_run, tmp_path, caplog):
    path, data = _copy_cache(sealed_run, tmp_path)
    del data[SEAL_KEY]
    path.write_text(json.dumps(data, indent=2) + "\n")
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert read_manifest(tmp_path / "c").classes == data["classes"]
    warned = [r.getMessage() for r in caplog.records if "without manifest_sha256" in r.getMessage()]
    assert warned == [f"{path}: written by an older step-cache without manifest_sha256, so edits to it cannot be "
                      "detected; it is used as is"]  # fmt: skip
    report = verify_cache(tmp_path / "c")
    assert report.ok and any("no manifest_sha256" in w for w in report.warnings)
    result = cli("evaluate", "--run", sealed_run / "run", "--features", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("without manifest_sha256") == 1
