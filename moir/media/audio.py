"""Audio tracks of videos with decord's AudioReader: 16 kHz mono, stored as 16-bit PCM in Parquet.

Audio reaches the model only as text (the ASR transcript stage reads this table), so it is resampled once to
the rate speech models expect. 16-bit PCM is what speech corpora and ASR front ends use, and it halves the size
of float32 samples; values are clipped to [-1, 1] before quantisation (resampling can overshoot slightly).

A video without an audio stream is normal (many clips are silent): it gets a row with `has_audio = False` and no
samples. Any other decoding failure is raised for the extraction stage to record as an error.

Table (one row per video):
media_path   str          the video, as the manifest's `media_path`: the join key
sample_rate  int32        always SAMPLE_RATE
has_audio    bool         False when the file has no audio stream
samples      list<int16>  mono PCM, `round(x * 32767)`; empty when has_audio is False
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import decord
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE_RATE = 16_000
PCM_SCALE = 32767
NO_AUDIO_STREAM = "Can't find audio stream"  # what decord's AudioReader raises for a file without audio

AUDIO_SCHEMA = pa.schema(
    [
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("has_audio", pa.bool_(), nullable=False),
        pa.field("samples", pa.list_(pa.int16()), nullable=False),
    ]
)


def extract_audio(video_path: str | os.PathLike) -> np.ndarray | None:
    """The audio track of a video as float32 mono samples at SAMPLE_RATE, or None when it has no audio stream."""
    try:
        reader = decord.AudioReader(str(video_path), ctx=decord.cpu(0), sample_rate=SAMPLE_RATE, mono=True)
    except decord.DECORDError as error:
        if NO_AUDIO_STREAM in str(error):
            return None
        raise
    return reader[:].asnumpy().reshape(-1).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] to int16 PCM (values outside are clipped)."""
    return np.round(np.clip(samples, -1.0, 1.0) * PCM_SCALE).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM back to float32 samples in [-1, 1]."""
    return pcm.astype(np.float32) / PCM_SCALE


def audio_row(media_path: str, samples: np.ndarray | None) -> dict:
    """The table row of one video (`samples` None: no audio stream)."""
    pcm = np.zeros(0, np.int16) if samples is None else to_pcm16(samples)
    return {"media_path": media_path, "sample_rate": SAMPLE_RATE, "has_audio": samples is not None, "samples": pcm}


def iter_audio(audio_path: str | os.PathLike, batch_size: int = 16) -> Iterator[tuple[str, np.ndarray | None]]:
    """Stream (media_path, float32 samples or None) from an audio table, `batch_size` videos in memory at a time."""
    try:
        parquet = pq.ParquetFile(audio_path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{audio_path}: not a readable audio table ({error})") from error
    missing = set(AUDIO_SCHEMA.names) - set(parquet.schema_arrow.names)
    if missing:
        raise ValueError(f"{audio_path}: missing column(s) {sorted(missing)}")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=AUDIO_SCHEMA.names):
        paths, rates, has_audio = (
            batch.column(name).to_pylist() for name in ("media_path", "sample_rate", "has_audio")
        )
        samples = batch.column("samples")
        for i, path in enumerate(paths):
            if rates[i] != SAMPLE_RATE:
                raise ValueError(f"{audio_path}: field 'sample_rate' of {path} is {rates[i]}, expected {SAMPLE_RATE}")
            pcm = samples[i].values.to_numpy(zero_copy_only=False)
            yield path, from_pcm16(pcm) if has_audio[i] else None
