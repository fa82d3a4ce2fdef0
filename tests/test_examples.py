"""Manifest -> Examples on the tiny models: prompts and targets, pixels, transcripts, and the encoder cache.

The cache's contract is that a model fed from it computes what it computes from pixels: the logits are compared
for both families (LLaVA on images, Qwen2.5-VL on videos, whose frame rate must survive the cache).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from moir.data.manifest import read_manifest, write_manifest
from moir.data.synthetic import generate_synth_video
from moir.dataset import load_examples
from moir.media.extract import extract_media
from moir.media.frames import FrameSampling
from moir.storage import write_table_atomic
from moir.media.transcript_cap import cap_transcript
from moir.media.transcripts import TRANSCRIPTS_SCHEMA
from moir.models import build_tiny_model, load_vlm
from moir.prompts import build_prompt, target_answer
from moir.encoder_cache.cache import CacheMismatchError, EncoderCache
from moir.encoder_cache.cache import main as tokens_main


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("examples")


@pytest.fixture(scope="module")
def images(work, synth_images):
    """A synth-image test split of 5 questions."""
    return synth_images(work / "image", {"test": 5}, seed=1)["test"]


@pytest.fixture(scope="module")
def videos(work):
    """A synth-video test split of 4 clips plus a question about a corrupt file; frames extracted (8 per clip)."""
    raw = work / "raw-video"
    manifest = generate_synth_video(raw, work / "manifests-video", {"test": 4}, frames=8, frame_size=32, seed=2)["test"]
    rows = read_manifest(manifest).to_pylist()
    (raw / "test" / "corrupt.mp4").write_bytes(b"not a video")
    rows.append({**rows[0], "id": "synth-video/test/corrupt", "media_path": "test/corrupt.mp4"})
    manifest = write_manifest(rows, work / "manifests-video" / "with-corrupt.parquet", media_root=raw)
    extract_media(manifest, work / "media-video", FrameSampling(num_frames=8), max_bad_share=0.5)
    return manifest


def dump(manifest, model_dir, out, *extra):
    assert tokens_main(["dump", "--manifest", str(manifest), "--model", str(model_dir), "--out", str(out), *extra]) == 0
    return out


def logits(vlm, examples):
    with torch.no_grad():
        return vlm.forward(vlm.collate(list(examples), with_answer=True)).logits


def test_examples_carry_prompt_target_and_pixels(images, llava):
    rows = read_manifest(images).to_pylist()
    examples = load_examples(images, vlm=llava)
    assert len(examples) == 5
    for row, example in zip(rows, examples):
        assert (example.id, example.media_kind) == (row["id"], "image")
        assert example.prompt == build_prompt(row) and example.answer == target_answer(row)
        assert isinstance(example.pixels, Image.Image) and example.media is None
    assert [ex.answer for ex in load_examples(images, vlm=llava, with_answer=False, limit=2)] == [None, None]
    with pytest.raises(ValueError, match="pass the model"):
        load_examples(images)


def test_llava_logits_from_the_cache_equal_those_from_pixels(images, llava, work, tiny_dirs):
    exact = dump(images, tiny_dirs["tiny-llava"], work / "cache-llava-f32", "--dtype", "float32", "--shard-size", "2")
    half = dump(images, tiny_dirs["tiny-llava"], work / "cache-llava-f16")
    from_pixels = logits(llava, load_examples(images, vlm=llava))
    from_cache = load_examples(images, cache_dir=exact, vlm=llava)
    assert all(ex.pixels is None and ex.media.features.shape == (64, 32) for ex in from_cache)
    torch.testing.assert_close(logits(llava, from_cache), from_pixels, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        logits(llava, load_examples(images, cache_dir=half, vlm=llava)), from_pixels, rtol=0, atol=1e-2
    )


def test_qwen_video_logits_from_the_cache_equal_those_from_pixels(videos, qwen, work, caplog, tiny_dirs):
    frames = work / "media-video" / "frames.parquet"
    cache = dump(videos, tiny_dirs["tiny-qwen2.5-vl"], work / "cache-qwen", "--frames", str(frames),
                 "--dtype", "float32")
    assert EncoderCache(cache, encoder=qwen.encoder_signature()).meta["missing"] == ["test/corrupt.mp4"]
    with caplog.at_level(logging.WARNING, logger="moir.dataset"):
        from_pixels = load_examples(videos, frames_path=frames, vlm=qwen)
        from_cache = load_examples(videos, cache_dir=cache, vlm=qwen)
    assert caplog.text.count("synth-video/test/corrupt") == 2  # left out, and named, on both paths
    assert len(from_pixels) == len(from_cache) == 4
    for pixel_example, cached_example in zip(from_pixels, from_cache):
        assert len(pixel_example.pixels) == 8 and pixel_example.pixels[0].shape == (32, 32, 3)
        assert pixel_example.fps == cached_example.fps == pytest.approx(8.0)  # 8 of 8 frames in 1 s
        assert cached_example.media.grid_thw.tolist() == [[4, 8, 8]]  # 8 frames / temporal patch 2, 32 px / 4 px
    torch.testing.assert_close(logits(qwen, from_cache), logits(qwen, from_pixels), rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="frames table"):
        load_examples(videos, vlm=qwen)


def test_a_cache_is_refused_for_another_encoder(images, llava, qwen, work, tiny_dirs):
    cache = dump(images, tiny_dirs["tiny-llava"], work / "cache-llava-refuse")
    with pytest.raises(CacheMismatchError, match=r"'encoder\.family'.*'llava', expected 'qwen2_5_vl'"):
        load_examples(images, cache_dir=cache, vlm=qwen)
    build_tiny_model("tiny-llava", work / "tiny-llava-seed1", seed=1)
    with pytest.raises(CacheMismatchError, match=r"'encoder\.vision_weights'"):
        load_examples(images, cache_dir=cache, vlm=load_vlm(work / "tiny-llava-seed1"))


def test_transcripts_join_the_prompt_per_video(videos, qwen, work):
    rows = read_manifest(videos).to_pylist()
    texts = {row["media_path"]: f"a tone number {i}" for i, row in enumerate(rows)}
    texts[rows[1]["media_path"]] = ""  # a clip without audio
    table = pa.Table.from_pylist(
        [{"media_path": path, "has_audio": bool(text), "text": text} for path, text in texts.items()],
        schema=TRANSCRIPTS_SCHEMA,
    )
    transcripts = write_table_atomic(table, work / "transcripts.parquet")
    examples = load_examples(
        videos, frames_path=work / "media-video" / "frames.parquet", transcripts_path=transcripts, vlm=qwen
    )
    assert examples[0].prompt == build_prompt(rows[0], transcript="a tone number 0")
    assert "Audio transcript: a tone number 0" in examples[0].prompt
    assert examples[1].prompt == build_prompt(rows[1])  # no audio: no transcript line
    long_text = "a tone number 0 and then a tone number 1 " * 8
    long_table = table.set_column(2, "text", pa.array([long_text if t else t for t in table.column("text").to_pylist()]))
    long_path = write_table_atomic(long_table, work / "transcripts-long.parquet")
    capped = load_examples(videos, frames_path=work / "media-video" / "frames.parquet", transcripts_path=long_path,
                           vlm=qwen, transcript_max_tokens=12)
    expected = cap_transcript(long_text, tokenizer=qwen.tokenizer, max_tokens=12)
    assert expected.endswith(" ...") and capped[0].prompt == build_prompt(rows[0], transcript=expected)


def test_dataloader_batches_with_the_wrapper_collate(images, llava, work, tiny_dirs):
    cache = dump(images, tiny_dirs["tiny-llava"], work / "cache-llava-loader")
    dataset = load_examples(images, cache_dir=cache, vlm=llava)
    dataset[0]  # opens a shard in this process; the workers must open their own
    collate = functools.partial(llava.collate, with_answer=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert [batch["input_ids"].shape[0] for batch in batches] == [2, 2, 1]
    assert all(int(batch["visual_mask"].sum()) == 64 * batch["input_ids"].shape[0] for batch in batches)
    assert np.array_equal(batches[0]["image_features"].shape, (128, 32))
