"""Encoder-cache shards sized by bytes: boundaries, the bound on a shard, resume after a kill, the plan field."""

from __future__ import annotations

import json

import pytest
import torch

from moir.encoder_cache.cache import CacheMismatchError, EncoderCache, dump_cache
from moir.models import EncodedMedia

ENCODER = {"family": "qwen2_5_vl", "vision_config": "abc", "dtype": "bfloat16"}
DIM = 4
# rows of 10, 30, 20, 40, 10, 10 features x 4 dims x 2 bytes (float16)
ROWS = {f"vid/{i}.mp4": n for i, n in enumerate([10, 30, 20, 40, 10, 10])}
ITEMS = [(key, "video") for key in ROWS]


def encode(batch):
    return [EncodedMedia(torch.full((ROWS[key], DIM), float(ROWS[key])), torch.tensor([[1, ROWS[key], 1]]), "video")
            for key, _ in batch]


class KilledAt:
    def __init__(self, call: int):
        self.call, self.calls = call, 0

    def __call__(self, batch):
        if self.calls == self.call:
            raise KeyboardInterrupt("job killed")
        self.calls += 1
        return encode(batch)


def test_shards_close_at_the_byte_limit(tmp_path):
    meta = json.loads(dump_cache(tmp_path / "c", ITEMS, encode, encoder=ENCODER, shard_size=None, shard_bytes=320,
                                 batch_size=4).read_text())
    # bytes per row: 80, 240, 160, 320, 80, 80 -> a shard closes once it reaches 320 bytes
    assert [s["n"] for s in meta["shards"]] == [2, 2, 2]
    assert meta["shard_bytes"] == 320 and meta["shard_size"] is None
    cache = EncoderCache(tmp_path / "c", encoder=ENCODER)
    assert [cache.get(key).features.shape[0] for key in ROWS] == list(ROWS.values())


def test_count_and_bytes_together(tmp_path):
    meta = json.loads(dump_cache(tmp_path / "c", ITEMS, encode, encoder=ENCODER, shard_size=1, shard_bytes=10_000,
                                 batch_size=4).read_text())
    assert [s["n"] for s in meta["shards"]] == [1] * 6


def test_resume_writes_the_shards_a_fresh_dump_writes(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        dump_cache(tmp_path / "c", ITEMS, KilledAt(3), encoder=ENCODER, shard_size=None, shard_bytes=320,
                   batch_size=1)
    assert sorted(p.name for p in (tmp_path / "c").glob("shard-*")) == ["shard-00000.parquet"]
    resumed = KilledAt(call=-1)
    meta = json.loads(dump_cache(tmp_path / "c", ITEMS, resumed, encoder=ENCODER, shard_size=None, shard_bytes=320,
                                 batch_size=1).read_text())
    assert resumed.calls == 4  # the first shard's two rows were not encoded again
    fresh = json.loads(dump_cache(tmp_path / "f", ITEMS, encode, encoder=ENCODER, shard_size=None, shard_bytes=320,
                                  batch_size=1).read_text())
    assert meta["shards"] == fresh["shards"]
    for name in ("shard-00000.parquet", "shard-00002.parquet"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "f" / name).read_bytes()


def test_shard_bytes_is_part_of_the_plan(tmp_path):
    dump_cache(tmp_path / "c", ITEMS, encode, encoder=ENCODER, shard_size=None, shard_bytes=320)
    with pytest.raises(CacheMismatchError, match="shard_bytes"):
        dump_cache(tmp_path / "c", ITEMS, encode, encoder=ENCODER, shard_size=None, shard_bytes=640)
    with pytest.raises(ValueError, match="shard_size, shard_bytes or both"):
        dump_cache(tmp_path / "d", ITEMS, encode, encoder=ENCODER, shard_size=None)


def test_a_cache_is_linked_for_a_model_with_the_same_tower(tmp_path):
    """The 13B's dump when vision_tower_check found the 7B's tower: the 7B's shards, linked, read back whole."""
    from moir.encoder_cache.cache import link_cache

    source = dump_cache(tmp_path / "7b", ITEMS, encode, encoder=ENCODER, shard_size=2, batch_size=4).parent
    (tmp_path / "13b").mkdir()
    (tmp_path / "13b" / "shard-00007.parquet").write_bytes(b"an earlier dump's shard")
    link_cache(source, tmp_path / "13b", note={"shared": True, "tower_check": "t.json"})
    meta = json.loads((tmp_path / "13b" / "meta.json").read_text())
    assert meta["reused_from"] == str(source) and meta["reuse"]["shared"] is True
    assert not (tmp_path / "13b" / "shard-00007.parquet").exists()
    cache = EncoderCache(tmp_path / "13b", encoder=ENCODER)
    assert {key: media.features.shape[0] for key, media in cache} == ROWS
    with pytest.raises(CacheMismatchError, match="vision_config"):
        EncoderCache(tmp_path / "13b", encoder={**ENCODER, "vision_config": "other"})
