"""The encoder cache: the frozen vision encoder's output, computed once and stored as sharded Parquet.

Why. The vision tower is frozen in every run (docs/design.md section 4), so its output for a given image or video is
the same in every training step, every epoch, every run of the grid and every evaluation. Running it once per
(dataset, split, model family, encoder settings) and reading the result back is the largest saving of the
pipeline: a 576 x 1024 LLaVA-1.5 feature map is a 1.2 MB read instead of a ViT-L/14 forward pass. What is cached
is exactly what `vlm.encode` returns (LLaVA: the selected layer's features before the projector; Qwen2.5-VL:
what enters the merger, with its grid_thw), so a model fed from the cache computes what it computes from pixels.

Layout of a cache directory (data/cache/<dataset>/<split>/<encoder>/):
    shard-00000.parquet ...  one row per distinct media file of the manifest (key = its `media_path`; questions
                             sharing an image or video share its row), at most `shard_size` rows and about
                             `shard_bytes` bytes of features per shard (whichever limit comes first), in sorted
                             key order; one row group per row, so reading one example reads one example.
    meta.json                written last: format, `encoder` (the model wrapper's encoder_signature()), model id and
                             revision, storage dtype, n_examples, shard_size, shards [{file, n, sha256}],
                             keys_sha256,
                             `missing` (media without frames: the extraction stage could not decode them).
    plan.json                present only while a dump is unfinished: the plan the shards are being written for.

Every shard carries the sha256 of its dump's plan (format, encoder signature, storage dtype, shard size, example
keys) in its Parquet metadata (`moir.plan_sha256`). A shard is reused only when that digest is the current plan's,
and the reader checks it against meta.json: a cache rebuilt after its inputs changed (Snakemake deletes meta.json,
its only declared output) cannot keep the old encoder's features under the new metadata.

Shard columns: key str; kind str ("image" | "video"); shape list<int64> ([N, D]); grid_thw list<int64>
(n_items x 3, flattened; null when the family has none); features binary (N x D values of the storage dtype,
little-endian, row-major); scores binary (float32, one importance score per language-model visual token,
`moir.compression`; their definition is part of the encoder signature, so a new definition re-dumps). Features
are stored in half precision by default: float16 keeps bfloat16 encoder output exactly (fewer exponent bits, more
mantissa bits; values beyond +-65504 are refused, not clipped).

Memory stays bounded whatever the dataset size: the dump loads pixels and encodes one `batch_size` at a time and
holds at most one shard of features. An interrupted dump resumes at the first missing shard: shards appear
atomically, and only shards of the same plan are kept. A dump whose plan differs from the shards on disk (another
encoder, storage dtype, shard size or example list) deletes them and starts over: the caller decided the cache is
stale. A *finished* cache (meta.json present) of another plan is refused instead, naming the field.

The reader, `EncoderCache`, refuses a cache whose encoder signature differs from the model it is read for and
names the field. It checks each shard's bytes against the sha256 that meta.json records for it (computed when the
shard was written, or when a resumed dump kept it) the first time the shard is read in a process, and refuses a
mismatch naming the shard: flipped bytes in the features are caught, not trained on. An unreadable meta.json or
a truncated shard is refused naming the file too.

CLI:
    python -m moir.encoder_cache dump --manifest data/manifests/D/S.parquet --model MODEL [--revision REV] \
        --out data/cache/D/S/ENCODER [--frames data/media/D/S/frames.parquet] [--shard-size 256] \
        [--shard-bytes N] [--pixel-budget JSON] [--hub-lock data/models/M.lock.json --hub-name M] \
        [--reuse data/cache/D/S/OTHER --tower-check data/models/M.vision_tower.json] \
        [--batch-size 16] [--dtype float16] [--device cpu]
    --hub-lock: load the model offline from the lock of fetch_models. --reuse with --tower-check: when the
    comparison says the towers are identical, link the other model's finished cache (`link_cache`) instead of
    dumping.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from moir import runtime

from moir.settings import add_settings_argument, json_object, parse
from moir.data.manifest import read_manifest
from moir.media.pixels import MediaLoader
from moir.runtime import cli, setup_logging
from moir.storage import file_sha256, write_json_atomic, write_table_atomic
from moir.models import EncodedMedia, Example, load_vlm
from moir.models.fetch import locked_source
from moir.models.pixel_budget import PixelBudget

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 2: meta.json records each shard's sha256; 3: shards hold the visual tokens' importance scores
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("grid_thw", pa.list_(pa.int64()), nullable=True),
        pa.field("features", pa.binary(), nullable=False),
        pa.field("scores", pa.binary(), nullable=True),
    ]
)
# One row group per row: a random read touches one example's bytes. Features are incompressible noise to a
# general-purpose codec; compressing them only costs time.
SHARD_WRITE_OPTIONS = {
    "row_group_size": 1,
    "compression": {"key": "zstd", "kind": "zstd", "shape": "zstd", "grid_thw": "zstd", "features": "none",
                    "scores": "none"},
    "use_dictionary": False,
    "write_statistics": ["key"],
}


class CacheMismatchError(ValueError):
    """A cache does not match what it is read or resumed for; the message names the field."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def keys_digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


PLAN_METADATA_KEY = b"moir.plan_sha256"
PLAN_FIELDS = ("format", "encoder", "dtype", "shard_size", "shard_bytes", "n_examples", "keys_sha256")


def plan_digest(plan: Mapping) -> str:
    """sha256 of a dump's plan (its PLAN_FIELDS; meta.json holds them too), the identity stamped on its shards."""
    fields = {k: plan.get(k) for k in PLAN_FIELDS}
    if fields["shard_bytes"] is None:  # count-sized shards: the digest of caches written before the option
        del fields["shard_bytes"]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- storage


def to_storage(key: str, media: EncodedMedia | None, dtype: torch.dtype) -> EncodedMedia:
    """Encoder output on the CPU in the storage dtype, refusing values that the dtype cannot hold."""
    if media is None:
        raise ValueError(f"{key}: the encoder returned no features")
    features = media.features.detach().to("cpu")
    stored = features.to(dtype).contiguous()
    if not torch.isfinite(stored).all():
        bad = "non-finite values" if not torch.isfinite(features).all() else f"values beyond the range of {dtype}"
        raise ValueError(f"{key}: encoder output has {bad}; store it with a wider --dtype")
    grid = None if media.grid_thw is None else media.grid_thw.detach().to("cpu", torch.int64)
    scores = None if media.scores is None else media.scores.detach().to("cpu", torch.float32).contiguous()
    if scores is not None and not torch.isfinite(scores).all():
        raise ValueError(f"{key}: the encoder's importance scores have non-finite values")
    return EncodedMedia(stored, grid, media.kind, scores)


def media_to_row(key: str, media: EncodedMedia) -> dict:
    """One shard row of encoder output already in its storage dtype (`to_storage`)."""
    return {
        "key": key,
        "kind": media.kind,
        "shape": list(media.features.shape),
        "grid_thw": None if media.grid_thw is None else media.grid_thw.reshape(-1).tolist(),
        "features": media.features.contiguous().view(torch.uint8).numpy().tobytes(),
        "scores": None if media.scores is None else media.scores.numpy().tobytes(),
    }


def row_to_media(row: Mapping, dtype: torch.dtype, source: str) -> EncodedMedia:
    """Inverse of `media_to_row` (features in the storage dtype); checks the byte count against the stored shape."""
    shape = tuple(row["shape"])
    data = bytearray(row["features"])
    expected = shape[0] * shape[1] * torch.empty(0, dtype=dtype).element_size()
    if len(data) != expected:
        raise CacheMismatchError(
            f"{source}: field 'features' of {row['key']} has {len(data)} bytes, shape {shape} needs {expected}"
        )
    features = torch.frombuffer(data, dtype=dtype).view(shape) if data else torch.empty(shape, dtype=dtype)
    grid = None if row["grid_thw"] is None else torch.tensor(row["grid_thw"], dtype=torch.long).view(-1, 3)
    scores = None
    if row.get("scores") is not None:
        score_data = bytearray(row["scores"])
        if len(score_data) % 4:
            raise CacheMismatchError(f"{source}: field 'scores' of {row['key']} has {len(score_data)} bytes, not a "
                                     "whole number of float32 values")
        scores = torch.frombuffer(score_data, dtype=torch.float32) if score_data else torch.empty(0)
    return EncodedMedia(features=features, grid_thw=grid, kind=row["kind"], scores=scores)


def write_shard(path: Path, keys: Sequence[str], media: Sequence[EncodedMedia], *, plan_sha256: str) -> None:
    """Write one shard of encoder output in its storage dtype, atomically (it exists complete or not at all),
    stamped with the digest of the plan it belongs to."""
    schema = SHARD_SCHEMA.with_metadata({PLAN_METADATA_KEY: plan_sha256.encode()})
    table = pa.Table.from_pylist([media_to_row(k, m) for k, m in zip(keys, media, strict=True)], schema=schema)
    write_table_atomic(table, path, **SHARD_WRITE_OPTIONS)


def shard_plan(path: Path) -> str | None:
    """The plan digest a shard was written for (None: written without one), read from the Parquet footer."""
    try:
        value = (pq.read_schema(path).metadata or {}).get(PLAN_METADATA_KEY)
    except (pa.ArrowInvalid, OSError) as error:
        raise CacheMismatchError(f"{path}: not a readable cache shard (truncated or damaged: {error})") from error
    return None if value is None else value.decode()


def shard_keys(path: Path) -> list[str]:
    """The keys of a shard, in order (a cheap read: one small column)."""
    try:
        return pq.read_table(path, columns=["key"]).column("key").to_pylist()
    except (pa.ArrowInvalid, OSError) as error:
        raise CacheMismatchError(f"{path}: not a readable cache shard (truncated or damaged: {error})") from error


def read_meta(meta_path: Path) -> dict:
    """A cache's meta.json, refused (CacheMismatchError naming the file) when it is not a JSON object."""
    try:
        meta = json.loads(meta_path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheMismatchError(
            f"{meta_path}: not a readable JSON file ({error}); delete {meta_path.parent} to rebuild"
        ) from error
    if not isinstance(meta, dict):
        raise CacheMismatchError(f"{meta_path}: expected a JSON object, got a {type(meta).__name__}")
    return meta


def dump_cache(
    out_dir: str | os.PathLike,
    items: Sequence[tuple[str, str]],
    encode_batch: Callable[[list[tuple[str, str]]], list[EncodedMedia]],
    *,
    encoder: Mapping[str, str | int],
    dtype: str = "float16",
    shard_size: int | None = 256,
    shard_bytes: int | None = None,
    batch_size: int = 16,
    missing: Sequence[str] = (),
    extra_meta: Mapping | None = None,
) -> Path:
    """Encode `items` ((key, kind) pairs, keys unique) into a cache directory, shard by shard; returns meta.json.

    `encode_batch` maps a list of items to their EncodedMedia (in the CLI: load pixels, `vlm.encode`).
    `encoder` is the encoder signature the cache will be checked against. A shard is closed when it holds
    `shard_size` rows or `shard_bytes` bytes of features, whichever comes first (None: no such limit; one must be
    set): with byte-sized shards a dump holds at most shard_bytes plus one row of features in memory, whatever the
    media's resolution. Shards stamped with the same plan are kept (resume: the boundaries are a function of the
    plan and the encoder output, so the resumed dump writes the shards a fresh one would); shards of any other
    plan are deleted and rewritten. A finished cache (meta.json) of another plan is refused, naming the field.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    if shard_size is None and shard_bytes is None:
        raise ValueError("set shard_size, shard_bytes or both")
    if (shard_size is not None and shard_size < 1) or (shard_bytes is not None and shard_bytes < 1) or batch_size < 1:
        raise ValueError("shard_size, shard_bytes and batch_size must be >= 1")
    out_dir = Path(out_dir)
    items = sorted(items)
    keys = [key for key, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{out_dir}: duplicate media keys")
    plan = {
        "format": CACHE_FORMAT,
        "encoder": dict(encoder),
        "dtype": dtype,
        "shard_size": shard_size,
        "shard_bytes": shard_bytes,
        "n_examples": len(keys),
        "keys_sha256": keys_digest(keys),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path, plan_path = out_dir / "meta.json", out_dir / "plan.json"
    if meta_path.exists():
        check_fields(plan, read_meta(meta_path), f"{meta_path} (delete {out_dir} to rebuild)", what="existing cache")
        log.info("%s: cache complete, nothing to do", out_dir)
        return meta_path
    digest = plan_digest(plan)
    stale = [p for p in sorted(out_dir.glob("shard-*.parquet")) if shard_plan(p) != digest]
    if stale:
        log.warning("%s: deleting %d shard(s) of another dump plan", out_dir, len(stale))
        for path in stale:
            path.unlink()
    write_json_atomic(plan, plan_path)

    # Resume: keep the run of complete shards 0, 1, ... that cover a prefix of the sorted items.
    shards: list[dict] = []
    done = 0
    while (path := out_dir / shard_name(len(shards))).exists():
        shard = shard_keys(path)
        if not shard or shard != keys[done : done + len(shard)]:
            break
        log.info("%s: complete, kept", path.name)
        shards.append({"file": path.name, "n": len(shard), "sha256": file_sha256(path)})
        done += len(shard)
    for path in sorted(out_dir.glob("shard-*.parquet")):
        if path.name not in {shard["file"] for shard in shards}:
            path.unlink()  # after a gap: its boundaries cannot be trusted

    torch_dtype = STORAGE_DTYPES[dtype]
    pending_keys: list[str] = []
    pending: list[EncodedMedia] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending_keys, pending, pending_bytes
        path = out_dir / shard_name(len(shards))
        write_shard(path, pending_keys, pending, plan_sha256=digest)
        shards.append({"file": path.name, "n": len(pending_keys), "sha256": file_sha256(path)})
        pending_keys, pending, pending_bytes = [], [], 0

    with runtime.progress(total=len(items), initial=done, desc=f"encoder cache {out_dir.name}", unit="item") as progress:
        start = done
        while start < len(items):
            room = batch_size if shard_size is None else min(batch_size, shard_size - len(pending))
            batch = items[start : start + room]  # a batch never spans two count-sized shards
            start += len(batch)
            encoded = encode_batch(batch)
            if len(encoded) != len(batch):
                raise ValueError(f"encoder returned {len(encoded)} results for {len(batch)} inputs")
            for (key, _), media in zip(batch, encoded):
                stored = to_storage(key, media, torch_dtype)
                pending_keys.append(key)
                pending.append(stored)
                pending_bytes += stored.features.numel() * stored.features.element_size()
                if (shard_size is not None and len(pending) >= shard_size) or (
                    shard_bytes is not None and pending_bytes >= shard_bytes
                ):
                    flush()
            progress.update(len(batch))
    if pending:
        flush()

    meta = {**plan, **(extra_meta or {}), "shards": shards, "missing": sorted(missing)}
    write_json_atomic(meta, meta_path)
    plan_path.unlink()
    log.info("%s: %d examples in %d shards", out_dir, len(items), len(shards))
    return meta_path


def first_difference(expected: Mapping, found: Mapping) -> tuple[str, object, object] | None:
    """(field, expected value, found value) of the first field in which two metadata dicts differ, or None.

    Nested dicts (the encoder signature) are compared field by field, with dotted names ("encoder.feature_layer").
    Only `expected`'s top-level fields are compared; inside nested dicts, a field on either side counts.
    """
    for name, value in expected.items():
        other = found.get(name)
        if isinstance(value, Mapping) and isinstance(other, Mapping):
            for field in sorted(set(value) | set(other)):
                if value.get(field) != other.get(field):
                    return f"{name}.{field}", value.get(field), other.get(field)
        elif value != other:
            return name, value, other
    return None


def check_fields(expected: Mapping, found: Mapping, source: str, *, what: str) -> None:
    """Raise CacheMismatchError naming the first field in which `found` differs from `expected`."""
    difference = first_difference(expected, found)
    if difference is not None:
        field, want, got = difference
        raise CacheMismatchError(f"{source}: field {field!r} of the {what} is {got!r}, expected {want!r}")


# ----------------------------------------------------------------------------------------------- reading


class EncoderCache:
    """Random access to a finished cache: `cache.get(media_path) -> EncodedMedia`.

    `encoder` is the signature of the model the cache is read for (`vlm.encoder_signature()`); a cache
    written by another encoder (family, vision weights, layer, select strategy, resolution, dtype) is refused,
    naming the field that differs.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, encoder: Mapping[str, str | int]) -> None:
        self.dir = Path(cache_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            unfinished = " (plan.json present: the dump did not finish)" if (self.dir / "plan.json").exists() else ""
            raise CacheMismatchError(f"{meta_path}: no encoder cache here{unfinished}")
        self.meta = read_meta(meta_path)
        if self.meta.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(
                f"{meta_path}: field 'format' is {self.meta.get('format')!r}, expected {CACHE_FORMAT} (delete "
                f"{self.dir} to rebuild)"
            )
        missing_fields = [name for name in (*PLAN_FIELDS, "shards", "missing") if name not in self.meta]
        if missing_fields:
            raise CacheMismatchError(f"{meta_path}: missing field(s) {missing_fields}")
        check_fields({"encoder": dict(encoder)}, self.meta, str(meta_path), what="encoder cache")
        if self.meta["dtype"] not in STORAGE_DTYPES:
            raise CacheMismatchError(f"{meta_path}: field 'dtype' is {self.meta['dtype']!r}, expected one of "
                                     f"{sorted(STORAGE_DTYPES)}")
        self.dtype = STORAGE_DTYPES[self.meta["dtype"]]
        self.missing = frozenset(self.meta["missing"])
        self._location: dict[str, tuple[int, int]] = {}
        digest = plan_digest(self.meta)
        for shard_index, shard in enumerate(self.meta["shards"]):
            if not isinstance(shard, dict) or not {"file", "n", "sha256"} <= set(shard):
                raise CacheMismatchError(f"{meta_path}: field 'shards' entry {shard_index} is {shard!r}, expected "
                                         "{'file', 'n', 'sha256'}")
            if Path(shard["file"]).name != shard["file"]:
                raise CacheMismatchError(f"{meta_path}: field 'shards' entry {shard_index} names {shard['file']!r}, "
                                         "not a file of the cache directory")
            if shard_plan(self.dir / shard["file"]) != digest:
                raise CacheMismatchError(
                    f"{self.dir / shard['file']}: metadata field {PLAN_METADATA_KEY.decode()!r} does not match the "
                    "plan in meta.json (a shard of another dump)"
                )
            keys = shard_keys(self.dir / shard["file"])
            if len(keys) != shard["n"]:
                raise CacheMismatchError(f"{self.dir / shard['file']}: {len(keys)} rows, meta.json says {shard['n']}")
            self._location.update((key, (shard_index, row)) for row, key in enumerate(keys))
        if len(self._location) != self.meta["n_examples"]:
            raise CacheMismatchError(
                f"{meta_path}: {len(self._location)} keys in the shards, n_examples {self.meta['n_examples']}"
            )
        self._files: dict[int, pq.ParquetFile] = {}
        self._verified: set[int] = set()  # shards whose checksum was checked (inherited by forked workers)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._location)

    def __contains__(self, key: str) -> bool:
        return key in self._location

    def keys(self) -> list[str]:
        return list(self._location)

    def verify_shard(self, shard_index: int) -> Path:
        """Check a shard's bytes against the sha256 in meta.json, once per process; returns its path."""
        shard = self.meta["shards"][shard_index]
        path = self.dir / shard["file"]
        if shard_index not in self._verified:
            actual = file_sha256(path)
            if actual != shard["sha256"]:
                raise CacheMismatchError(
                    f"{path}: corrupt cache shard: sha256 {actual}, meta.json records {shard['sha256']}; delete "
                    f"{self.dir} to rebuild"
                )
            self._verified.add(shard_index)
        return path

    def _file(self, shard_index: int) -> pq.ParquetFile:
        if self._pid != os.getpid():  # a DataLoader worker: open files of its own
            self._files, self._pid = {}, os.getpid()
        if shard_index not in self._files:
            self.verify_shard(shard_index)
            self._files[shard_index] = pq.ParquetFile(
                self.dir / self.meta["shards"][shard_index]["file"], memory_map=True
            )
        return self._files[shard_index]

    def video_fps(self, key: str) -> float | None:
        """The frame rate of a cached video's sampled frames (recorded from the frames table at dump time)."""
        return self.meta.get("video_fps", {}).get(key)

    def get(self, key: str) -> EncodedMedia:
        """The cached encoder output of one media file, features in the storage dtype (half the memory of float32;
        the model wrappers cast features to the projector's dtype)."""
        if key not in self._location:
            raise KeyError(f"{self.dir}: no cached features for {key!r}")
        shard_index, row = self._location[key]
        table = self._file(shard_index).read_row_group(row)
        record = {name: table.column(name)[0].as_py() for name in ("key", "kind", "shape", "grid_thw", "scores")}
        record["features"] = table.column("features")[0].as_buffer()  # no copy until row_to_media's one
        if record["key"] != key:
            raise CacheMismatchError(
                f"{self.dir}: row {row} of shard {shard_index} holds {record['key']!r}, not {key!r}"
            )
        return row_to_media(record, self.dtype, str(self.dir / self.meta["shards"][shard_index]["file"]))

    def __iter__(self) -> Iterator[tuple[str, EncodedMedia]]:
        """(key, EncodedMedia) for every example, shard by shard (one shard in memory at a time)."""
        for shard_index in range(len(self.meta["shards"])):
            path = self.verify_shard(shard_index)
            for record in pq.read_table(path).to_pylist():
                yield record["key"], row_to_media(record, self.dtype, str(path))


# ----------------------------------------------------------------------------------------------- the stage


def dump_for_vlm(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    vlm,
    *,
    model: str,
    revision: str | None = None,
    frames_path: str | os.PathLike | None = None,
    dtype: str = "float16",
    shard_size: int | None = 256,
    shard_bytes: int | None = None,
    batch_size: int = 16,
) -> Path:
    """Cache `vlm.encode` of every distinct media file of a manifest (videos: their extracted frames)."""
    manifest = read_manifest(manifest_path)
    kinds, paths = manifest.column("media_kind").to_pylist(), manifest.column("media_path").to_pylist()
    items = sorted({(path, kind) for kind, path in zip(kinds, paths) if kind != "none"})
    loader = MediaLoader(manifest, frames_path, vlm)
    missing = [path for path, kind in items if not loader.available(kind, path)]
    if missing:
        log.warning("%d video(s) without frames (see the extraction's errors table) are not cached", len(missing))

    def encode_batch(batch: list[tuple[str, str]]) -> list[EncodedMedia]:
        examples = [
            Example(
                id=path,
                prompt="",
                answer=None,
                media_kind=kind,
                pixels=loader.pixels(kind, path),
                fps=loader.video_fps(path) if kind == "video" else None,
            )
            for path, kind in batch
        ]
        return vlm.encode(examples)

    metadata = manifest.schema.metadata
    return dump_cache(
        out_dir,
        [(path, kind) for path, kind in items if loader.available(kind, path)],
        encode_batch,
        encoder=vlm.encoder_signature(),
        dtype=dtype,
        shard_size=shard_size,
        shard_bytes=shard_bytes,
        batch_size=batch_size,
        missing=missing,
        extra_meta={
            "model": model,
            "revision": revision,
            "manifest": str(manifest_path),
            "dataset": metadata[b"dataset"].decode(),
            "split": metadata[b"split"].decode(),
            "video_fps": {
                path: loader.video_fps(path) for path, kind in items if kind == "video" and loader.available(kind, path)
            },
        },
    )


def link_cache(source: str | os.PathLike, out_dir: str | os.PathLike, *, note: Mapping) -> Path:
    """Make `out_dir` the finished cache `source` (another model's, whose vision tower is byte-identical: `note`
    says how that was decided): every shard hard-linked (copied across file systems), checked against the
    sha256 in the source's meta.json, then meta.json written last, with `reused_from` and `note` added. Files of an
    earlier dump in `out_dir` are removed first. Readers still check the encoder signature against the model
    they load, so a wrong reuse fails there, naming the field."""
    source, out_dir = Path(source), Path(out_dir)
    meta = read_meta(source / "meta.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("shard-*.parquet"), out_dir / "plan.json", out_dir / "meta.json"]:
        stale.unlink(missing_ok=True)
    for shard in meta["shards"]:
        target = out_dir / shard["file"]
        try:
            os.link(source / shard["file"], target)
        except OSError:
            shutil.copy2(source / shard["file"], target)
        if file_sha256(target) != shard["sha256"]:
            raise CacheMismatchError(f"{source / shard['file']}: sha256 differs from its meta.json")
    write_json_atomic({**meta, "reused_from": str(source), "reuse": dict(note)}, out_dir / "meta.json")
    log.info("%s: linked %d shard(s) of %s", out_dir, len(meta["shards"]), source)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moir.encoder_cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stages = parser.add_subparsers(dest="command", required=True)
    dump = stages.add_parser("dump", help="run the frozen vision encoder over a manifest's media into a cache")
    dump.add_argument("--manifest", required=True, help="manifest Parquet (moir.data.manifest)")
    dump.add_argument("--model", required=True, help="model directory or hub id (moir.models.load_vlm)")
    dump.add_argument("--revision", help="hub revision (branch, tag or commit) of --model, also recorded in meta.json")
    dump.add_argument("--out", required=True, help="cache directory (data/cache/<dataset>/<split>/<encoder>)")
    dump.add_argument("--frames", help="frames.parquet of `moir.media extract` (required for video manifests)")
    dump.add_argument("--shard-size", type=int, default=256, help="examples per shard (none: --shard-bytes only)")
    dump.add_argument("--shard-bytes", type=int, help="bytes of features per shard (with or instead of --shard-size)")
    dump.add_argument("--pixel-budget", type=json_object, metavar="JSON",
                      help="Qwen2.5-VL: pixel limits (moir.models.pixel_budget.PixelBudget's fields)")
    dump.add_argument("--hub-lock", help="lock file of fetch_models: load --model offline from the shared cache")
    dump.add_argument("--hub-name", help="--model's name in --hub-lock")
    dump.add_argument("--reuse", help="another model's finished cache directory, linked instead of dumping when "
                                      "--tower-check says the vision towers are identical")
    dump.add_argument("--tower-check", help="moir.models.towers output (with --reuse)")
    dump.add_argument("--batch-size", type=int, default=16, help="examples per encoder call")
    dump.add_argument("--dtype", choices=sorted(STORAGE_DTYPES), default="float16", help="storage dtype")
    dump.add_argument("--device", default="cpu")
    add_settings_argument(dump)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging("INFO")
    if (args.reuse is None) != (args.tower_check is None):
        raise ValueError("--reuse and --tower-check go together")
    if args.reuse is not None:
        check = json.loads(Path(args.tower_check).read_text())
        if "shared" not in check:
            raise ValueError(f"{args.tower_check}: no field 'shared' (not a moir.models.towers output)")
        if check["shared"]:
            link_cache(args.reuse, args.out, note={"tower_check": args.tower_check, **check})
            return 0
        log.info("%s: the vision towers differ (%s): dumping this model's own cache", args.tower_check,
                 ", ".join(check["differing"][:3]) or "tensor sets differ")
    budget = PixelBudget.from_mapping(args.pixel_budget, "--pixel-budget") if args.pixel_budget else None
    source = locked_source(args.model, args.revision, args.hub_lock, args.hub_name)
    vlm = load_vlm(source, device=args.device, revision=None if args.hub_lock else args.revision,
                   pixel_budget=budget)
    dump_for_vlm(
        args.manifest,
        args.out,
        vlm,
        model=args.model,
        revision=args.revision,
        frames_path=args.frames,
        dtype=args.dtype,
        shard_size=args.shard_size,
        shard_bytes=args.shard_bytes,
        batch_size=args.batch_size,
    )
    return 0


if __name__ == "__main__":
    cli(main)
