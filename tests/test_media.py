"""Frames/audio extraction and ASR transcripts on small videos written by the test (PyAV, H.264/MPEG-4 + AAC)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from moir.data.manifest import write_manifest
from moir.data.synthetic import write_mp4
from moir.media.__main__ import main as media_main
from moir.media.audio import SAMPLE_RATE, from_pcm16, iter_audio, to_pcm16
from moir.media.extract import TooManyBadFiles, extract_media
from moir.media.frames import FrameSampling, decode_image, read_encoded_frames, sample_frame_indices
from moir.media.transcripts import AsrSettings, read_transcripts, transcribe

FPS = 10
N_FRAMES = 30  # 3 s
TONE_HZ = 440.0


def grey_ramp_video(n_frames: int = N_FRAMES, size: int = 64) -> np.ndarray:
    """Frame t is a flat grey of value 8 t: a decoded frame tells which frame it is."""
    return np.stack([np.full((size, size, 3), 8 * t, np.uint8) for t in range(n_frames)])


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.4 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def manifest_row(index: int, media_path: str) -> dict:
    return {
        "id": f"clips/test/{index}",
        "dataset": "clips",
        "split": "test",
        "question": "What happens?",
        "choices": [],
        "answer_index": None,
        "answers": ["something"],
        "answer_type": None,
        "hint": "",
        "media_kind": "video",
        "media_path": media_path,
        "has_image": True,
        "category": "",
    }


@pytest.fixture
def videos(tmp_path):
    """A manifest over a video with audio, a silent one (no audio stream), a corrupt file, and a second question
    about the first video."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mp4(raw / "sound.mp4", grey_ramp_video(), FPS, tone(N_FRAMES / FPS), SAMPLE_RATE)
    write_mp4(raw / "silent.mp4", grey_ramp_video(), FPS, None)
    (raw / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    paths = ["sound.mp4", "silent.mp4", "corrupt.mp4", "sound.mp4"]
    manifest = write_manifest(
        [manifest_row(i, p) for i, p in enumerate(paths)], tmp_path / "test.parquet", media_root=raw
    )
    return manifest


def test_uniform_sampling_takes_segment_midpoints():
    assert sample_frame_indices(30, 10.0, FrameSampling(num_frames=4)) == [3, 11, 18, 26]
    assert sample_frame_indices(2, 10.0, FrameSampling(num_frames=4)) == [0, 0, 1, 1]  # short video: repeats


def test_fps_sampling_steps_through_the_video_and_caps():
    assert sample_frame_indices(30, 10.0, FrameSampling(fps=2)) == [0, 5, 10, 15, 20, 25]
    assert sample_frame_indices(30, 25.0, FrameSampling(fps=10)) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27]
    assert sample_frame_indices(30, 10.0, FrameSampling(fps=2, max_frames=3)) == [5, 15, 25]


def test_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        FrameSampling(num_frames=4, fps=1.0)
    with pytest.raises(ValueError, match="max_frames"):
        FrameSampling(num_frames=4, max_frames=8)


def test_pcm16_round_trip_clips_out_of_range_samples():
    samples = np.array([-1.5, -1.0, -0.25, 0.0, 0.5, 1.0, 1.2], np.float32)
    back = from_pcm16(to_pcm16(samples))
    np.testing.assert_allclose(back, np.clip(samples, -1, 1), atol=1 / 32767)


def test_extract_writes_frames_audio_and_errors(videos, tmp_path):
    out = tmp_path / "media"
    summary = extract_media(videos, out, FrameSampling(num_frames=4), max_bad_share=0.5)
    assert (summary.n_videos, summary.n_bad, summary.n_without_audio) == (3, 1, 1)  # each video decoded once

    frames = pq.read_table(out / "frames.parquet")
    assert sorted(set(frames.column("media_path").to_pylist())) == ["silent.mp4", "sound.mp4"]
    sound = frames.filter(frames.column("media_path").to_numpy(zero_copy_only=False) == "sound.mp4")
    assert sound.column("frame_index").to_pylist() == [3, 11, 18, 26]
    np.testing.assert_allclose(sound.column("timestamp").to_pylist(), [0.3, 1.1, 1.8, 2.6], atol=1e-3)
    np.testing.assert_allclose(sound.column("sampled_fps").to_pylist(), [4 / 3] * 4, rtol=1e-6)  # 4 frames in 3 s
    decoded = read_encoded_frames(out / "frames.parquet", ["sound.mp4"])["sound.mp4"]
    for index, image in zip([3, 11, 18, 26], decoded):
        pixels = decode_image(image)
        assert pixels.shape == (64, 64, 3)
        assert abs(pixels.mean() - 8 * index) < 4  # the frame it claims to be (lossy codec: within 4 levels)

    audio = dict(iter_audio(out / "audio.parquet"))
    assert audio["silent.mp4"] is None
    track = audio["sound.mp4"]
    assert abs(track.size - 3 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # 3 s (AAC adds some padding)
    spectrum = np.abs(np.fft.rfft(track))
    assert np.fft.rfftfreq(track.size, 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(TONE_HZ, abs=2)

    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [(e["media_path"], e["stage"]) for e in errors] == [("corrupt.mp4", "frames")]
    assert errors[0]["reason"]


def test_extract_fails_past_the_bad_share_naming_the_file(videos, tmp_path):
    out = tmp_path / "media"
    with pytest.raises(TooManyBadFiles, match=r"(?s)1 of 3 videos.*corrupt\.mp4"):
        extract_media(videos, out, FrameSampling(num_frames=2))  # default max_bad_share 1%
    assert sorted(p.name for p in out.iterdir()) == ["errors.parquet"]  # no half-written frames or audio


def test_extract_cli_exit_status(videos, tmp_path):
    out = tmp_path / "media"
    args = ["extract", "--manifest", str(videos), "--out-dir", str(out), "--fps", "2", "--max-frames", "3"]
    assert media_main(args) == 1
    assert media_main(args + ["--max-bad-share", "0.5", "--image-format", "png", "--workers", "2"]) == 0
    frames = read_encoded_frames(out / "frames.parquet")
    assert [len(frames[path]) for path in ("silent.mp4", "sound.mp4")] == [3, 3]
    assert pq.read_schema(out / "frames.parquet").metadata[b"image_format"] == b"png"


def build_tiny_whisper(directory) -> None:
    """A 2-layer Whisper with random weights, a byte-level tokenizer and a feature extractor, built offline."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    specials = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ["<|endoftext|>", *specials]}
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], no_timestamps_token_id=ids["<|notimestamps|>"], max_length=64,
    )  # fmt: skip
    model.save_pretrained(directory)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        directory
    )


def test_transcripts_are_deterministic_and_cached_per_video(videos, tmp_path):
    media = tmp_path / "media"
    extract_media(videos, media, FrameSampling(num_frames=2), max_bad_share=0.5)
    model_dir = tmp_path / "tiny-whisper"
    build_tiny_whisper(model_dir)
    settings = AsrSettings(model=str(model_dir), max_new_tokens=6, chunk_length_s=2.0)  # 3 s track: 2 windows
    cache = tmp_path / "asr-cache"

    first = transcribe(media / "audio.parquet", tmp_path / "t1.parquet", settings, cache_dir=cache, batch_size=2)
    rows = {row["media_path"]: row for row in pq.read_table(first).to_pylist()}
    assert rows["silent.mp4"] == {"media_path": "silent.mp4", "has_audio": False, "text": ""}
    assert rows["sound.mp4"]["has_audio"] and rows["sound.mp4"]["text"]  # random weights: some gibberish
    assert json.loads(pq.read_schema(first).metadata[b"asr_settings"])["model"] == str(model_dir)
    assert len(list(cache.rglob("*/*/*.json"))) == 1  # one cached transcript: the video with audio

    # A rerun is served from the cache: it works with the model gone.
    shutil.move(model_dir, tmp_path / "moved")
    second = transcribe(media / "audio.parquet", tmp_path / "t2.parquet", settings, cache_dir=cache)
    assert read_transcripts(second) == read_transcripts(first)

    # Without the cache, the same model transcribes the same audio to the same text.
    shutil.move(tmp_path / "moved", model_dir)
    third = transcribe(media / "audio.parquet", tmp_path / "t3.parquet", settings, cache_dir=tmp_path / "fresh")
    assert read_transcripts(third) == read_transcripts(first)


def test_media_loader_reads_a_videos_frames_from_its_row_groups_in_time_order(tmp_path):
    """A frames table of many row groups (a video split across two of them, its frames out of order): each
    video's frames come back complete and in time order; a video not in the table gives None."""
    import pyarrow as pa

    from moir.media.pixels import MediaLoader

    rows = [(f"v{v}.mp4", index) for v in range(5) for index in (2, 0, 1)]
    table = pa.table({"media_path": [p for p, _ in rows], "frame_index": pa.array([i for _, i in rows], pa.int32()),
                      "timestamp": pa.array([0.0] * len(rows), pa.float32()),
                      "sampled_fps": pa.array([1.0] * len(rows), pa.float32()),
                      "image": [f"{p}:{i}".encode() for p, i in rows]})
    path = tmp_path / "frames.parquet"
    pq.write_table(table, path, row_group_size=4)  # v1's frames span row groups 0 and 1
    assert pq.ParquetFile(path).num_row_groups == 4
    manifest = pa.table({"media_kind": ["video"], "media_path": ["v1.mp4"]})
    loader = MediaLoader(manifest, path, vlm=None)
    for v in range(5):
        assert loader.encoded_frames(f"v{v}.mp4") == [f"v{v}.mp4:{i}".encode() for i in range(3)]
    assert loader.encoded_frames("missing.mp4") is None
    assert read_encoded_frames(path, ["v1.mp4"])["v1.mp4"] == loader.encoded_frames("v1.mp4")
