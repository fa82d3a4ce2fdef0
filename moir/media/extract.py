"""The frames/audio stage: decode every video of a manifest once into `frames.parquet` and `audio.parquet`.

Real video collections contain a few files that no decoder reads (truncated downloads, broken containers). One
bad file must not sink a run over thousands, but a broken download must not pass unnoticed either: every failure
goes into `errors.parquet` (media path, stage, reason), and the stage fails, naming the files, only when the
share of bad videos exceeds `max_bad_share` (default 1%). In that case only the errors table is written, and
frames/audio tables of an earlier run in `out_dir` are deleted so they never sit beside the new errors. A media
path that leaves the manifest's media root (`..`, absolute, a symbolic link pointing out) is not a bad video but
a bad manifest: the stage refuses it before decoding anything, naming the row.

Frames are stored at most `max_side` pixels on their longer side (default 1024, above what either model family
reads), decoded a few full-resolution frames at a time: an 8K video is never held whole at full resolution.

Each video in the manifest is decoded once, however many questions refer to it (MMBench-Video asks several per
video); the tables are keyed by the manifest's `media_path` and rows are in sorted media-path order.

Outputs in `out_dir`: frames.parquet (moir.media.frames), audio.parquet (moir.media.audio), errors.parquet:
media_path str, stage str ("frames" or "audio"), reason str.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
from moir import runtime

from moir.data.manifest import media_root, read_manifest, resolve_media
from moir.media.audio import AUDIO_SCHEMA, audio_row, extract_audio
from moir.media.frames import DEFAULT_MAX_SIDE, FRAMES_SCHEMA, FrameSampling, SampledVideo, extract_frames
from moir.storage import ParquetStreamWriter, write_table_atomic

log = logging.getLogger(__name__)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
VIDEOS_PER_ROW_GROUP = 8  # how many videos' frames/audio are held in memory before they are written out


class TooManyBadFiles(RuntimeError):
    """More than the allowed share of videos could not be decoded."""


@dataclass
class VideoResult:
    media_path: str
    video: SampledVideo | None
    audio: dict | None
    errors: list[dict]


@dataclass
class ExtractionSummary:
    n_videos: int
    n_bad: int
    n_without_audio: int
    errors: list[dict]


def process_video(
    media_path: str, *, root: Path, sampling: FrameSampling, image_format: str, jpeg_quality: int,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> VideoResult:
    """Decode one video's frames and audio; a failure of either is returned as an error row, never raised."""
    path = root / media_path
    video = audio = None
    errors = []
    try:
        video = extract_frames(path, sampling, image_format=image_format, jpeg_quality=jpeg_quality, max_side=max_side)
    except Exception as error:  # decord raises RuntimeError, DECORDError, IndexError... on bad files
        errors.append({"media_path": media_path, "stage": "frames", "reason": f"{type(error).__name__}: {error}"})
    if video is not None:
        try:
            audio = audio_row(media_path, extract_audio(path))
        except Exception as error:
            errors.append({"media_path": media_path, "stage": "audio", "reason": f"{type(error).__name__}: {error}"})
    return VideoResult(media_path, video, audio, errors)


def extract_media(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    sampling: FrameSampling,
    *,
    image_format: str = "jpeg",
    jpeg_quality: int = 90,
    max_bad_share: float = 0.01,
    workers: int = 1,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> ExtractionSummary:
    """Run the stage (module docstring) for one manifest. Raises TooManyBadFiles past `max_bad_share`."""
    manifest = read_manifest(manifest_path)
    kinds = manifest.column("media_kind").to_pylist()
    videos = sorted({path for kind, path in zip(kinds, manifest.column("media_path").to_pylist()) if kind == "video"})
    for media_path in videos:  # refuses, naming the row, a path outside the media root; before any output
        resolve_media(manifest, media_path)
    out_dir = Path(out_dir)
    metadata = {"frame_sampling": sampling.describe(), "image_format": image_format, "manifest": str(manifest_path),
                "max_side": str(max_side)}
    log.info("%s: %d videos, sampling %s", manifest_path, len(videos), sampling.describe())

    work = partial(
        process_video,
        root=media_root(manifest),
        sampling=sampling,
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        max_side=max_side,
    )
    errors: list[dict] = []
    n_without_audio = 0
    frames_out = ParquetStreamWriter(out_dir / "frames.parquet", FRAMES_SCHEMA.with_metadata(metadata))
    audio_out = ParquetStreamWriter(out_dir / "audio.parquet", AUDIO_SCHEMA.with_metadata(metadata))
    try:
        with frames_out, audio_out, ProcessPoolExecutor(workers) as pool:
            frame_rows: list[dict] = []
            audio_rows: list[dict] = []
            results = pool.map(work, videos)
            for i, result in enumerate(runtime.progress(results, total=len(videos), desc="frames+audio", unit="video"), 1):
                errors.extend(result.errors)
                if result.video is not None:
                    frame_rows.extend(
                        {
                            "media_path": result.media_path,
                            "frame_index": index,
                            "timestamp": time,
                            "sampled_fps": result.video.sampled_fps,
                            "image": image,
                        }
                        for index, time, image in result.video.frames
                    )
                if result.audio is not None:
                    audio_rows.append(result.audio)
                    n_without_audio += not result.audio["has_audio"]
                if i % VIDEOS_PER_ROW_GROUP == 0 or i == len(videos):
                    frames_out.write_rows(frame_rows)
                    audio_out.write_rows(audio_rows)
                    frame_rows, audio_rows = [], []
            check_bad_share(errors, len(videos), max_bad_share, manifest_path)  # raising here publishes nothing
    except TooManyBadFiles:
        for stale in ("frames.parquet", "audio.parquet"):  # an earlier run's tables must not pass for this run's
            (out_dir / stale).unlink(missing_ok=True)
        write_errors(errors, out_dir / "errors.parquet", metadata)
        raise
    write_errors(errors, out_dir / "errors.parquet", metadata)
    n_bad = len({error["media_path"] for error in errors})
    log.info("%d videos, %d bad, %d without audio", len(videos), n_bad, n_without_audio)
    return ExtractionSummary(len(videos), n_bad, n_without_audio, errors)


def write_errors(errors: list[dict], path: Path, metadata: dict) -> None:
    write_table_atomic(pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA.with_metadata(metadata)), path)


def check_bad_share(errors: list[dict], n_videos: int, max_bad_share: float, source: str | os.PathLike) -> None:
    """Raise TooManyBadFiles, naming every bad file and its reason, when their share exceeds `max_bad_share`."""
    bad = sorted({error["media_path"] for error in errors})
    if n_videos and len(bad) / n_videos > max_bad_share:
        reasons = "\n".join(f"  {e['media_path']} ({e['stage']}): {e['reason']}" for e in errors)
        raise TooManyBadFiles(
            f"{source}: {len(bad)} of {n_videos} videos could not be decoded "
            f"({len(bad) / n_videos:.1%} > max_bad_share {max_bad_share:.1%}):\n{reasons}"
        )
    for error in errors:
        log.warning("skipped %s (%s): %s", error["media_path"], error["stage"], error["reason"])
