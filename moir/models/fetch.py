"""Fetch each hub model once into a shared cache, lock it to a commit, and load it offline from the lock.

Compute nodes have no internet, and a model fetched by every GPU job at `revision: main` can change between the
token dump, training and evaluation. So one CPU job runs `fetch_models`: it downloads every model of the suite
(the VLMs, the ASR model, a local judge model) with huggingface_hub.snapshot_download into `cache_dir` (the hub's
cache layout: <cache_dir>/models--<org>--<name>/snapshots/<commit>/), resolves each requested revision to the
commit it downloaded, hashes every file, and writes the lock file:

    {"format": 1, "cache_dir": ..., "models": {name: {"hub_id", "revision" (requested), "commit" (resolved),
     "snapshot" (path relative to cache_dir), "files": {relative path: {"sha256", "size"}}}}}

Every later stage calls `locked_snapshot(lock, name, ...)`: it sets HF_HUB_OFFLINE=1, checks the lock against
what the stage was configured with (hub id, revision) and the files on disk (sizes; sha256 too with
verify="sha256"), and returns the snapshot directory, which load_vlm (or any from_pretrained) reads as a local
path. Any mismatch is refused with the model, field or file named.

`compare_vision_towers` decides from the fetched weights whether two models share a vision encoder (LLaVA-1.5 7B
and 13B: one CLIP feature cache for both only if every vision-tower tensor is byte-identical).

CLI (a CPU job with internet; the workflow's fetch_models rule locks one model per file:
`--lock data/models/NAME.lock.json --settings '{"name": NAME, "hub_id": ORG/REPO, "revision": REV}'`):
    python -m moir.models.fetch --cache-dir data/hub --lock data/hub/models.lock.json \
        --model llava-1.5-7b=llava-hf/llava-1.5-7b-hf@main --model qwen2.5-vl=Qwen/Qwen2.5-VL-7B-Instruct@main \
        [--compare-towers llava-1.5-7b,llava-1.5-13b --compare-out data/hub/vision_towers.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download

from moir.storage import write_json_atomic

log = logging.getLogger(__name__)

LOCK_FORMAT = 1
COMMIT = re.compile(r"^[0-9a-f]{40}$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
VISION_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")


class LockError(ValueError):
    """A lock file does not match the configuration or the files on disk; the message names what differs."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to fetch: `name` is the suite's key (e.g. llava-1.5-7b), `revision` a branch, tag or commit."""

    name: str
    hub_id: str
    revision: str = "main"


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def snapshot_commit(snapshot: Path) -> str:
    """The commit of a hub-cache snapshot directory (.../snapshots/<commit>)."""
    if snapshot.parent.name != "snapshots" or not COMMIT.match(snapshot.name):
        raise LockError(f"{snapshot}: not a hub-cache snapshot directory (.../snapshots/<40-hex commit>)")
    return snapshot.name


def hash_files(snapshot: Path) -> dict[str, dict]:
    """{relative path: {sha256, size}} of every file of a snapshot (symlinks into the blob store followed)."""
    files = {}
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        relative = path.relative_to(snapshot).as_posix()
        files[relative] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def read_lock(lock_path: str | os.PathLike) -> dict:
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        raise LockError(f"{lock_path}: no lock file (run the fetch stage first)")
    lock = json.loads(lock_path.read_text())
    if lock.get("format") != LOCK_FORMAT:
        raise LockError(f"{lock_path}: field 'format' is {lock.get('format')!r}, expected {LOCK_FORMAT}")
    return lock


def _entry_current(entry: Mapping, spec: ModelSpec, cache_dir: Path) -> bool:
    """A locked entry of the same spec whose files are all present with their sizes."""
    if entry.get("hub_id") != spec.hub_id or entry.get("revision") != spec.revision:
        return False
    snapshot = cache_dir / entry["snapshot"]
    return all((snapshot / name).is_file() and (snapshot / name).stat().st_size == info["size"]
               for name, info in entry["files"].items())


def fetch_models(specs: Sequence[ModelSpec], cache_dir: str | os.PathLike, lock_path: str | os.PathLike) -> dict:
    """Download each model once into `cache_dir`, resolve revisions to commits, hash the files, write the lock.

    A model already locked with the same hub id and revision and whose files are all present is not downloaded
    again (a rerun after adding one model fetches that one). Returns the lock dict (written atomically)."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in {names}")
    cache_dir, lock_path = Path(cache_dir), Path(lock_path)
    previous = read_lock(lock_path)["models"] if lock_path.is_file() else {}
    models = {}
    for spec in specs:
        entry = previous.get(spec.name)
        if entry is not None and _entry_current(entry, spec, cache_dir):
            log.info("%s: locked at %s, files present", spec.name, entry["commit"])
            models[spec.name] = entry
            continue
        log.info("%s: fetching %s@%s into %s", spec.name, spec.hub_id, spec.revision, cache_dir)
        snapshot = Path(snapshot_download(spec.hub_id, revision=spec.revision, cache_dir=cache_dir))
        commit = snapshot_commit(snapshot)
        if COMMIT.match(spec.revision) and spec.revision != commit:
            raise LockError(f"{spec.name}: asked for commit {spec.revision}, the hub cache returned {commit}")
        files = hash_files(snapshot)
        if not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
            raise LockError(f"{spec.name}: {snapshot} holds no weight file ({', '.join(WEIGHT_SUFFIXES)})")
        models[spec.name] = {
            "hub_id": spec.hub_id,
            "revision": spec.revision,
            "commit": commit,
            "snapshot": snapshot.relative_to(cache_dir).as_posix(),
            "files": files,
        }
    lock = {"format": LOCK_FORMAT, "cache_dir": str(cache_dir), "models": models}
    write_json_atomic(lock, lock_path)
    return lock


def locked_snapshot(
    lock_path: str | os.PathLike,
    name: str,
    *,
    hub_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    verify: str = "size",
) -> Path:
    """The local snapshot directory of locked model `name`, with the hub switched off (HF_HUB_OFFLINE=1).

    hub_id / revision: what the calling stage was configured with; a lock of anything else is refused (rerun the
    fetch stage). cache_dir: where the cache is mounted on this node (default: the lock's). verify: "size"
    (every locked file present with its size: cheap) or "sha256" (every byte). A missing or altered file is
    refused, naming it."""
    if verify not in ("size", "sha256"):
        raise ValueError(f"verify must be 'size' or 'sha256', got {verify!r}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    lock = read_lock(lock_path)
    if name not in lock["models"]:
        raise LockError(f"{lock_path}: no model {name!r}; locked: {sorted(lock['models'])}")
    entry = lock["models"][name]
    for field, wanted in (("hub_id", hub_id), ("revision", revision)):
        if wanted is not None and entry[field] != wanted:
            raise LockError(f"{lock_path}: field {field!r} of model {name!r} is {entry[field]!r}, the stage is "
                            f"configured with {wanted!r} (rerun the fetch stage)")
    snapshot = Path(cache_dir if cache_dir is not None else lock["cache_dir"]) / entry["snapshot"]
    if snapshot_commit(snapshot) != entry["commit"]:
        raise LockError(f"{lock_path}: model {name!r} snapshot {snapshot} is not commit {entry['commit']}")
    for relative, info in entry["files"].items():
        path = snapshot / relative
        if not path.is_file():
            raise LockError(f"{path}: locked file of model {name!r} is missing")
        if path.stat().st_size != info["size"]:
            raise LockError(f"{path}: {path.stat().st_size} bytes, the lock says {info['size']}")
        if verify == "sha256" and sha256_file(path) != info["sha256"]:
            raise LockError(f"{path}: sha256 differs from the lock's {info['sha256']}")
    return snapshot


# ----------------------------------------------------------------------------------------------- vision towers


def vision_tower_digests(snapshot: str | os.PathLike,
                         prefixes: Iterable[str] = VISION_TOWER_PREFIXES) -> dict[str, str]:
    """{tensor name without the prefix: sha256 of dtype, shape and bytes} of a snapshot's vision-tower tensors."""
    import torch
    from safetensors import safe_open

    prefixes = tuple(prefixes)
    digests = {}
    files = sorted(Path(snapshot).glob("*.safetensors"))
    if not files:
        raise LockError(f"{snapshot}: no .safetensors weights to compare")
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is None:
                    continue
                tensor = handle.get_tensor(key).contiguous()
                digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
                digests[key[len(prefix):]] = digest.hexdigest()
    if not digests:
        raise LockError(f"{snapshot}: no tensor starts with {prefixes}")
    return digests


def compare_vision_towers(lock_path: str | os.PathLike, first: str, second: str, *,
                          cache_dir: str | os.PathLike | None = None,
                          second_lock: str | os.PathLike | None = None) -> dict:
    """Whether two locked models have byte-identical vision towers (then one encoder cache serves both):
    {"shared": bool, "n_tensors", "differing": [...], "only_in_first": [...], "only_in_second": [...]}.
    second_lock: the lock file of `second` when it is not `lock_path` (the workflow locks each model apart)."""
    a = vision_tower_digests(locked_snapshot(lock_path, first, cache_dir=cache_dir))
    b = vision_tower_digests(locked_snapshot(second_lock or lock_path, second, cache_dir=cache_dir))
    differing = sorted(name for name in set(a) & set(b) if a[name] != b[name])
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return {"first": first, "second": second, "shared": not (differing or only_a or only_b), "n_tensors": len(a),
            "differing": differing, "only_in_first": only_a, "only_in_second": only_b}


def locked_source(model: str, revision: str | None, lock: str | os.PathLike | None,
                  name: str | None) -> str:
    """What a stage loads: `model` itself without a lock; with one, the locked snapshot directory of `name`
    (checked against `model` and `revision`, the hub switched off). The stages' --hub-lock / --hub-name."""
    if lock is None:
        if name is not None:
            raise ValueError("--hub-name needs --hub-lock")
        return model
    if name is None:
        raise ValueError("--hub-lock needs --hub-name (the model's name in the lock)")
    return str(locked_snapshot(lock, name, hub_id=model, revision=revision))


# ----------------------------------------------------------------------------------------------- CLI


def parse_spec(text: str) -> ModelSpec:
    """NAME=ORG/REPO[@REVISION] -> ModelSpec."""
    match = re.fullmatch(r"([^=]+)=([^@]+)(?:@(.+))?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=ORG/REPO[@REVISION]")
    return ModelSpec(match[1], match[2], match[3] or "main")


def build_parser() -> argparse.ArgumentParser:
    from moir.settings import add_settings_argument

    parser = argparse.ArgumentParser(prog="python -m moir.models.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", required=True, help="shared hub cache (visible to every node)")
    parser.add_argument("--lock", required=True, help="lock file to write")
    parser.add_argument("--model", action="append", type=parse_spec, default=[],
                        help="NAME=ORG/REPO[@REVISION], repeated")
    one = parser.add_argument_group("one model (what the workflow's fetch_models rule passes, in --settings)")
    one.add_argument("--name", help="the model's name in the lock")
    one.add_argument("--hub-id", help="ORG/REPO")
    one.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.add_argument("--compare-towers", action="append", default=[],
                        help="FIRST,SECOND: whether two locked models share their vision tower (repeatable)")
    parser.add_argument("--compare-out", help="JSON file of the comparisons (required with --compare-towers)")
    add_settings_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from moir.settings import parse

    parser = build_parser()
    args = parse(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    specs = list(args.model)
    if args.name or args.hub_id:
        if not (args.name and args.hub_id):
            parser.error("--name and --hub-id go together")
        specs.append(ModelSpec(args.name, args.hub_id, args.revision or "main"))
    if not specs:
        parser.error("name a model: --model NAME=ORG/REPO[@REVISION], or --name and --hub-id")
    fetch_models(specs, args.cache_dir, args.lock)
    if args.compare_towers:
        if not args.compare_out:
            parser.error("--compare-towers needs --compare-out")
        results = [compare_vision_towers(args.lock, *pair.split(",", 1)) for pair in args.compare_towers]
        for result in results:
            log.info("%s vs %s: vision tower %s", result["first"], result["second"],
                     "shared" if result["shared"] else "differs")
        write_json_atomic({"comparisons": results}, args.compare_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
