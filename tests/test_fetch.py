"""Fetch once, lock, load offline from the lock, and the vision-tower comparison, against a local fake hub.

The one stand-in: `snapshot_download` is replaced (monkeypatch, in `fake_hub`) by a function that copies a local
model directory into the hub-cache layout (<cache>/models--org--name/snapshots/<commit>/) and counts its calls.
Everything else (commit resolution, hashing, the lock, the checks, loading with load_vlm) is the real code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import moir.models.fetch as fetch
from moir.models import build_tiny_model, load_vlm
from moir.models.fetch import LockError, ModelSpec, compare_vision_towers, fetch_models, locked_snapshot


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {
        "org/llava-a": build_tiny_model("tiny-llava", root / "a", seed=0),
        "org/llava-b": build_tiny_model("tiny-llava", root / "b", seed=1),  # other weights, vision tower included
    }


@pytest.fixture
def fake_hub(monkeypatch, hub_repos):
    calls = []

    def copy_snapshot(repo_id, *, revision, cache_dir):  # the stand-in for huggingface_hub.snapshot_download
        calls.append((repo_id, revision))
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        snapshot = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
        shutil.copytree(hub_repos[repo_id], snapshot, dirs_exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(fetch, "snapshot_download", copy_snapshot)
    return calls


SPECS = [ModelSpec("a", "org/llava-a", "main"), ModelSpec("b", "org/llava-b", "v1")]


def test_fetch_locks_commits_and_hashes(tmp_path, fake_hub, hub_repos):
    lock = fetch_models(SPECS, tmp_path / "cache", tmp_path / "models.lock.json")
    assert json.loads((tmp_path / "models.lock.json").read_text()) == lock
    entry = lock["models"]["a"]
    assert entry["commit"] == hashlib.sha1(b"org/llava-a@main").hexdigest() and entry["revision"] == "main"
    weights = hub_repos["org/llava-a"] / "model.safetensors"
    assert entry["files"]["model.safetensors"] == {
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "size": weights.stat().st_size}
    assert fake_hub == [("org/llava-a", "main"), ("org/llava-b", "v1")]
    # downloaded once: a rerun with one more model fetches only that one
    fetch_models([*SPECS, ModelSpec("c", "org/llava-a", "v2")], tmp_path / "cache", tmp_path / "models.lock.json")
    assert fake_hub[2:] == [("org/llava-a", "v2")]


def test_load_offline_from_the_lock(tmp_path, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lock_path = tmp_path / "models.lock.json"
    fetch_models(SPECS, tmp_path / "cache", lock_path)
    snapshot = locked_snapshot(lock_path, "a", hub_id="org/llava-a", revision="main", verify="sha256")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert snapshot.name == hashlib.sha1(b"org/llava-a@main").hexdigest()
    assert load_vlm(snapshot).family == "llava"


def test_lock_mismatches_are_refused(tmp_path, fake_hub):
    lock_path = tmp_path / "models.lock.json"
    with pytest.raises(LockError, match="no lock file"):
        locked_snapshot(lock_path, "a")
    fetch_models(SPECS, tmp_path / "cache", lock_path)
    with pytest.raises(LockError, match="no model 'z'"):
        locked_snapshot(lock_path, "z")
    with pytest.raises(LockError, match="field 'revision' of model 'a' is 'main'.*'v9'"):
        locked_snapshot(lock_path, "a", revision="v9")
    with pytest.raises(LockError, match="field 'hub_id'"):
        locked_snapshot(lock_path, "a", hub_id="org/other")
    snapshot = locked_snapshot(lock_path, "a")
    config = snapshot / "config.json"
    config.write_text(config.read_text().replace("{", "{ ", 1))  # one byte more
    with pytest.raises(LockError, match="config.json: .* bytes, the lock says"):
        locked_snapshot(lock_path, "a")
    weights = snapshot / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, other bytes: only a full check sees it
    weights.write_bytes(bytes(data))
    config.write_text(config.read_text().replace("{ ", "{", 1))
    assert locked_snapshot(lock_path, "a") == snapshot
    with pytest.raises(LockError, match="model.safetensors: sha256 differs"):
        locked_snapshot(lock_path, "a", verify="sha256")
    (snapshot / "tokenizer.json").unlink()
    with pytest.raises(LockError, match="tokenizer.json: locked file of model 'a' is missing"):
        locked_snapshot(lock_path, "a")


def test_vision_tower_sharing_is_decided_from_the_weights(tmp_path, fake_hub):
    lock_path = tmp_path / "models.lock.json"
    fetch_models([*SPECS, ModelSpec("a2", "org/llava-a", "v2")], tmp_path / "cache", lock_path)
    same = compare_vision_towers(lock_path, "a", "a2")
    assert same["shared"] and same["n_tensors"] > 10
    other = compare_vision_towers(lock_path, "a", "b")
    assert not other["shared"] and other["differing"]


def test_cli_fetches_and_compares(tmp_path, fake_hub):
    out = tmp_path / "towers.json"
    assert fetch.main(["--cache-dir", str(tmp_path / "cache"), "--lock", str(tmp_path / "lock.json"),
                       "--model", "a=org/llava-a", "--model", "b=org/llava-b@v1",
                       "--compare-towers", "a,b", "--compare-out", str(out)]) == 0
    assert fake_hub == [("org/llava-a", "main"), ("org/llava-b", "v1")]
    assert json.loads(out.read_text())["comparisons"][0]["shared"] is False


def test_the_workflow_s_one_model_command_and_the_tower_check(tmp_path, fake_hub):
    """fetch_models locks one model per job (settings: name, hub_id, revision); vision_tower_check compares two
    models across their own lock files."""
    from moir.models import towers

    for name, hub_id in (("a", "org/llava-a"), ("b", "org/llava-b")):
        settings = json.dumps({"name": name, "hub_id": hub_id, "revision": "main"})
        assert fetch.main(["--cache-dir", str(tmp_path / "cache"), "--lock", str(tmp_path / f"{name}.lock.json"),
                           "--settings", settings]) == 0
    assert set(json.loads((tmp_path / "a.lock.json").read_text())["models"]) == {"a"}
    out = tmp_path / "b.vision_tower.json"
    assert towers.main(["--lock", str(tmp_path / "b.lock.json"), "--reference-lock", str(tmp_path / "a.lock.json"),
                        "--out", str(out), "--settings", json.dumps({"name": "b", "reference": "a"})]) == 0
    result = json.loads(out.read_text())
    assert result["first"] == "a" and result["second"] == "b" and result["shared"] is False
