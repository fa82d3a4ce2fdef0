"""ASR transcripts: the audio of each video as text, for V+A+T runs (`audio: transcript` in config.yaml).

The models we fine-tune have no audio encoder, so audio reaches them as words: a transformers
speech-recognition model (Whisper, wav2vec2, ... named on the command line) transcribes each video's audio
track from `audio.parquet`, and `moir.prompts.build_prompt(row, transcript=...)` adds the text to the prompt.

Long tracks are cut into 30 s windows with overlapping strides (the pipeline's chunked decoding), which works
for any model and keeps memory flat. Decoding is greedy, so a transcript is a function of the audio and the
settings. Transcribing is slow, so every video's transcript is cached on disk, keyed by a hash of the settings
(model id, revision, language, token budget) and of the audio samples themselves: a rerun, an interrupted run or
another split with the same videos only transcribes what it has not seen. A video without audio gets "".

Output table (one row per video of the audio table):
media_path  str   the video, as the manifest's `media_path`: the join key
has_audio   bool  False when the video has no audio stream (then text is "")
text        str   the transcript, stripped
Metadata: `asr_settings` (JSON of the settings below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from moir import runtime

from moir.media.audio import SAMPLE_RATE, iter_audio, to_pcm16
from moir.storage import write_table_atomic, write_text_atomic

log = logging.getLogger(__name__)

CHUNK_LENGTH_S = 30.0

TRANSCRIPTS_SCHEMA = pa.schema(
    [
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("has_audio", pa.bool_(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class AsrSettings:
    """Everything that changes a transcript; its fingerprint names the cache directory."""

    model: str
    revision: str | None = None
    language: str | None = None
    max_new_tokens: int | None = None
    chunk_length_s: float = CHUNK_LENGTH_S

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class TranscriptCache:
    """One small JSON file per (settings, audio content): `<root>/<settings fingerprint>/<hh>/<audio sha256>.json`."""

    def __init__(self, root: str | os.PathLike, settings: AsrSettings) -> None:
        self.dir = Path(root) / settings.fingerprint()
        self.dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.dir / "settings.json"
        if not settings_file.exists():
            write_text_atomic(settings_file, json.dumps(asdict(settings), indent=2, sort_keys=True))

    @staticmethod
    def audio_key(samples: np.ndarray) -> str:
        """Content hash of a track, over the 16-bit PCM the audio table stores."""
        return hashlib.sha256(to_pcm16(samples).tobytes()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        return json.loads(path.read_text())["text"] if path.exists() else None

    def put(self, key: str, text: str) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        write_text_atomic(path, json.dumps({"text": text}))


def load_asr_pipeline(settings: AsrSettings, *, device: str = "cpu", dtype: str = "float32"):
    """The transformers speech-recognition pipeline for `settings.model` (a hub id or a local directory)."""
    from transformers import pipeline  # here: every stage that reads transcripts would otherwise import pipelines

    import torch

    return pipeline(
        "automatic-speech-recognition",
        model=settings.model,
        revision=settings.revision,
        device=device,
        dtype=getattr(torch, dtype),
    )


def transcribe_batch(asr, settings: AsrSettings, tracks: list[np.ndarray], batch_size: int) -> list[str]:
    """Transcribe float32 16 kHz tracks with greedy decoding; returns one stripped text per track."""
    generate_kwargs = {"do_sample": False}
    if settings.max_new_tokens is not None:
        generate_kwargs["max_new_tokens"] = settings.max_new_tokens
    if settings.language is not None:
        generate_kwargs["language"] = settings.language
    inputs = [{"raw": track, "sampling_rate": SAMPLE_RATE} for track in tracks]
    options = {"chunk_length_s": settings.chunk_length_s, "batch_size": batch_size, "generate_kwargs": generate_kwargs}
    if asr.type != "ctc":
        options["ignore_warning"] = True  # chunked seq2seq decoding is what we want for long tracks
    outputs = asr(inputs, **options)
    return [output["text"].strip() for output in outputs]


def transcribe(
    audio_path: str | os.PathLike,
    out_path: str | os.PathLike,
    settings: AsrSettings,
    *,
    cache_dir: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 8,
) -> Path:
    """Write the transcripts table for an audio table (module docstring), transcribing only uncached tracks."""
    import torch

    torch.manual_seed(0)
    cache = TranscriptCache(cache_dir, settings)
    asr = None  # loaded on the first uncached track: a fully cached rerun never loads the model
    rows: list[dict] = []
    pending: list[tuple[int, str, np.ndarray]] = []  # (row index, audio key, samples) awaiting the model
    n_cached = 0

    def flush() -> None:
        nonlocal asr
        if asr is None:
            log.info("loading ASR model %s (revision %s) on %s", settings.model, settings.revision, device)
            asr = load_asr_pipeline(settings, device=device, dtype=dtype)
        texts = transcribe_batch(asr, settings, [samples for _, _, samples in pending], batch_size)
        for (row, key, _), text in zip(pending, texts):
            cache.put(key, text)
            rows[row]["text"] = text
        pending.clear()

    for media_path, samples in runtime.progress(iter_audio(audio_path), desc="transcripts", unit="video"):
        if samples is None or samples.size == 0:
            rows.append({"media_path": media_path, "has_audio": samples is not None, "text": ""})
            continue
        key = cache.audio_key(samples)
        text = cache.get(key)
        rows.append({"media_path": media_path, "has_audio": True, "text": text})
        if text is None:
            pending.append((len(rows) - 1, key, samples))
            if len(pending) == batch_size:
                flush()
        else:
            n_cached += 1
    if pending:
        flush()
    log.info("%d videos, %d transcripts from the cache", len(rows), n_cached)
    metadata = {"asr_settings": json.dumps(asdict(settings), sort_keys=True), "audio": str(audio_path)}
    table = pa.Table.from_pylist(rows, schema=TRANSCRIPTS_SCHEMA.with_metadata(metadata))
    return write_table_atomic(table, out_path)


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """media_path -> transcript ("" for a video without audio) from a transcripts table."""
    try:
        table = pq.read_table(path, columns=["media_path", "text"])
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{path}: not a readable transcripts table ({error})") from error
    return dict(zip(table.column("media_path").to_pylist(), table.column("text").to_pylist()))
