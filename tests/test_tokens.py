"""The encoder cache's storage: round trip, half precision, streaming, resume and the metadata check.

The storage takes any function from media keys to EncodedMedia, so these tests feed it plain tensors; the path
through a real model wrapper (pixels -> vlm.encode -> cache -> same logits) is tested in test_examples.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from moir.models import EncodedMedia
from moir.encoder_cache.cache import CacheMismatchError, EncoderCache, dump_cache

ENCODER = {"family": "qwen2_5_vl", "vision_config": "abc123", "feature_layer": -1, "dtype": "bfloat16"}
DIM = 8


def fake_media(key: str, kind: str) -> EncodedMedia:
    """Deterministic features per key; videos get Qwen-like varying token counts and a grid."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    generator = torch.Generator().manual_seed(seed)
    if kind == "video":
        t, h, w = 2, 2 + seed % 3, 4
        return EncodedMedia(torch.randn(t * h * w, DIM, generator=generator), torch.tensor([[t, h, w]]), "video")
    return EncodedMedia(torch.randn(16, DIM, generator=generator) * 100, None, "image")


ITEMS = [(f"img/{i:02d}.png", "image") for i in range(7)] + [(f"vid/{i:02d}.mp4", "video") for i in range(4)]


class RecordingEncoder:
    """Encodes with `fake_media`, records every batch, and can fail on a given call (an interrupted job)."""

    def __init__(self, out_dir=None, fail_on_call: int | None = None):
        self.batches: list[list[str]] = []
        self.shards_on_disk: list[int] = []
        self.out_dir = out_dir
        self.fail_on_call = fail_on_call

    def __call__(self, batch):
        if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
            raise KeyboardInterrupt("job killed")
        self.batches.append([key for key, _ in batch])
        if self.out_dir is not None:
            self.shards_on_disk.append(len(list(self.out_dir.glob("shard-*.parquet"))))
        return [fake_media(key, kind) for key, kind in batch]


def test_round_trip_in_half_precision(tmp_path):
    out = tmp_path / "cache"
    encoder = RecordingEncoder(out)
    meta_path = dump_cache(out, ITEMS, encoder, encoder=ENCODER, shard_size=4, batch_size=3, extra_meta={"model": "m"})
    meta = json.loads(meta_path.read_text())
    assert [s["n"] for s in meta["shards"]] == [4, 4, 3]
    assert meta["n_examples"] == 11 and meta["dtype"] == "float16" and meta["model"] == "m"
    assert meta["encoder"] == ENCODER and not (out / "plan.json").exists()
    # Streamed: at most batch_size per encoder call, and shard i is on disk before shard i+1 is encoded.
    assert max(len(batch) for batch in encoder.batches) == 3
    assert encoder.shards_on_disk == [0, 0, 1, 1, 2]  # shards of 4, 4, 3 in batches of 3+1, 3+1, 3

    cache = EncoderCache(out, encoder=ENCODER)
    assert len(cache) == 11 and "vid/03.mp4" in cache
    for key, kind in ITEMS:
        original, cached = fake_media(key, kind), cache.get(key)
        assert cached.kind == kind and cached.features.dtype == torch.float16
        assert torch.equal(cached.features, original.features.half())
        assert (cached.grid_thw is None) == (kind == "image")
        if kind == "video":
            assert torch.equal(cached.grid_thw, original.grid_thw)
            assert cached.features.shape[0] == int(original.grid_thw.prod())  # shapes vary per example
    assert [key for key, _ in cache] == sorted(key for key, _ in ITEMS)
    with pytest.raises(KeyError, match="img/99.png"):
        cache.get("img/99.png")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_other_storage_dtypes(tmp_path, dtype):
    dump_cache(tmp_path, ITEMS[:2], RecordingEncoder(), encoder=ENCODER, dtype=dtype)
    cache = EncoderCache(tmp_path, encoder=ENCODER)
    original = fake_media(*ITEMS[0]).features
    assert torch.equal(cache.get(ITEMS[0][0]).features, original.to(getattr(torch, dtype)))


def test_values_half_precision_cannot_hold_are_refused(tmp_path):
    def huge(batch):
        return [EncodedMedia(torch.full((2, DIM), 1e6), None, "image") for _ in batch]

    with pytest.raises(ValueError, match=r"img/00\.png.*beyond the range"):
        dump_cache(tmp_path, ITEMS[:1], huge, encoder=ENCODER)
    assert not list(tmp_path.glob("shard-*")) and not (tmp_path / "meta.json").exists()


def test_interrupted_dump_resumes_at_the_first_missing_shard(tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):  # killed while encoding the second batch of the second shard
        dump_cache(out, ITEMS, RecordingEncoder(fail_on_call=3), encoder=ENCODER, shard_size=4, batch_size=2)
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "shard-00000.parquet"]  # no partial shard
    with pytest.raises(CacheMismatchError, match="did not finish"):
        EncoderCache(out, encoder=ENCODER)

    resumed = RecordingEncoder()
    dump_cache(out, ITEMS, resumed, encoder=ENCODER, shard_size=4, batch_size=2)
    assert [key for batch in resumed.batches for key in batch] == sorted(key for key, _ in ITEMS)[4:]

    straight = tmp_path / "straight"
    dump_cache(straight, ITEMS, RecordingEncoder(), encoder=ENCODER, shard_size=4, batch_size=2)
    for name in ("shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet", "meta.json"):
        assert (out / name).read_bytes() == (straight / name).read_bytes()  # deterministic, resume or not

    again = RecordingEncoder()
    dump_cache(out, ITEMS, again, encoder=ENCODER, shard_size=4, batch_size=2)
    assert again.batches == []  # complete: nothing to do


def test_an_interrupted_dump_of_another_plan_starts_over(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        dump_cache(tmp_path, ITEMS, RecordingEncoder(fail_on_call=3), encoder=ENCODER, shard_size=4, batch_size=2)
    again = RecordingEncoder()  # another storage dtype: the float16 shard must not be mixed in
    dump_cache(tmp_path, ITEMS, again, encoder=ENCODER, shard_size=4, batch_size=2, dtype="float32")
    assert [key for batch in again.batches for key in batch] == sorted(key for key, _ in ITEMS)
    cache = EncoderCache(tmp_path, encoder=ENCODER)
    assert all(media.features.dtype == torch.float32 for _, media in cache)


@pytest.mark.parametrize("change", ["weights", "dtype", "shard_size"])
def test_a_rebuilt_cache_holds_the_new_features(tmp_path, change):
    """Snakemake rebuilds a finished cache by deleting meta.json, its only output; old shards must not survive."""
    dump_cache(tmp_path, ITEMS, RecordingEncoder(), encoder=ENCODER, shard_size=4)
    (tmp_path / "meta.json").unlink()

    def retrained(batch):  # the encoder was trained again: same keys, other features
        return [EncodedMedia(m.features + 1, m.grid_thw, m.kind) for m in (fake_media(*item) for item in batch)]

    new_encoder = {**ENCODER, "vision_weights": "retrained"} if change == "weights" else ENCODER
    options = {"dtype": "float32"} if change == "dtype" else {"shard_size": 6} if change == "shard_size" else {}
    dump_cache(tmp_path, ITEMS, retrained, encoder=new_encoder, **{"shard_size": 4, **options})

    cache = EncoderCache(tmp_path, encoder=new_encoder)
    assert len(cache) == len(ITEMS)
    dtype = getattr(torch, options.get("dtype", "float16"))
    for key, kind in ITEMS:
        assert torch.equal(cache.get(key).features, (fake_media(key, kind).features + 1).to(dtype))
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [s["file"] for s in cache.meta["shards"]]


def test_the_reader_refuses_a_shard_of_another_plan(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    dump_cache(first, ITEMS, RecordingEncoder(), encoder=ENCODER, shard_size=4)
    dump_cache(second, ITEMS, RecordingEncoder(), encoder=ENCODER, shard_size=4, dtype="float32")
    (second / "shard-00001.parquet").replace(first / "shard-00001.parquet")
    with pytest.raises(CacheMismatchError, match=r"shard-00001\.parquet.*'moir\.plan_sha256'"):
        EncoderCache(first, encoder=ENCODER)


def test_reader_refuses_another_encoder_naming_the_field(tmp_path):
    dump_cache(tmp_path, ITEMS[:3], RecordingEncoder(), encoder=ENCODER)
    with pytest.raises(CacheMismatchError, match=r"'encoder\.feature_layer'.* -1, expected -2"):
        EncoderCache(tmp_path, encoder={**ENCODER, "feature_layer": -2})
    with pytest.raises(CacheMismatchError, match=r"'encoder\.select_strategy'"):
        EncoderCache(tmp_path, encoder={**ENCODER, "select_strategy": "default"})
    with pytest.raises(CacheMismatchError, match="'keys_sha256'"):
        dump_cache(tmp_path, ITEMS[1:4], RecordingEncoder(), encoder=ENCODER)  # same size, other examples


def test_a_truncated_shard_is_detected(tmp_path):
    dump_cache(tmp_path, ITEMS[:3], RecordingEncoder(), encoder=ENCODER)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["shards"][0]["n"] = 4
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheMismatchError, match="3 rows, meta.json says 4"):
        EncoderCache(tmp_path, encoder=ENCODER)
