"""Uniform frame sampling from videos with decord, stored as encoded images in Parquet.

Videos are decoded once, here; every later stage (the encoder cache, training or evaluation on pixels) reads the
sampled frames from `frames.parquet` instead of the video file. That keeps the expensive, codec-dependent step
in one place and makes the frames a model sees identical across runs.

Sampling (one of):
- `num_frames=n`: the midpoints of n equal segments of the video, `floor((i + 0.5) * total / n)`; always n
  frames (a video shorter than n frames repeats frames, so every example of a dataset has the same count).
- `fps=f`: one frame every `average_fps / f` source frames, starting at the first; with `max_frames=m`, a video
  that would give more than m frames falls back to m uniformly sampled frames.

Table (one row per sampled frame, rows of a video contiguous and in time order):
media_path   str      the video, as the manifest's `media_path` (relative to its media root): the join key
frame_index  int32    index of the frame in the decoded video
timestamp    float32  presentation time of the frame in seconds
sampled_fps  float32  frames kept per second of video (n / duration; the same on every row of a video): the frame
                      rate the sampled frames play at, which Qwen2.5-VL's temporal positions depend on
image        binary   the frame as a JPEG or PNG file (metadata `image_format`)

Frames are stored at most `max_side` pixels on their longer side (default DEFAULT_MAX_SIDE = 1024, above what
LLaVA-1.5 (336) or Qwen2.5-VL's video budget reads), aspect ratio kept (Pillow's bicubic resampling). Frames are
decoded in chunks of at most DECODE_BYTES of full-resolution pixels, so an 8K video holds two full frames at a
time, not sixteen.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass

import decord
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from moir.media.images import open_image

IMAGE_FORMATS = ("jpeg", "png")
DEFAULT_MAX_SIDE = 1024
DECODE_CHUNK = 16  # frames decoded at once: bounds memory for long videos...
DECODE_BYTES = 256 << 20  # ... and for high-resolution ones: at most this many bytes of decoded pixels at once

FRAMES_SCHEMA = pa.schema(
    [
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("timestamp", pa.float32(), nullable=False),
        pa.field("sampled_fps", pa.float32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class FrameSampling:
    """How frames are sampled from a video: exactly one of `num_frames` and `fps`."""

    num_frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError("frame sampling: give exactly one of num_frames and fps")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"frame sampling: num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"frame sampling: fps must be > 0, got {self.fps}")
        if self.max_frames is not None and (self.fps is None or self.max_frames < 1):
            raise ValueError("frame sampling: max_frames (>= 1) only applies to fps sampling")

    def describe(self) -> str:
        if self.num_frames is not None:
            return f"num_frames={self.num_frames}"
        return f"fps={self.fps}" + (f",max_frames={self.max_frames}" if self.max_frames else "")


def sample_frame_indices(total_frames: int, average_fps: float, sampling: FrameSampling) -> list[int]:
    """Indices of the frames to keep from a video of `total_frames` frames at `average_fps` (module docstring)."""
    if total_frames < 1:
        raise ValueError("video has no frames")
    if sampling.num_frames is not None:
        return uniform_indices(total_frames, sampling.num_frames)
    if average_fps <= 0:
        raise ValueError(f"video reports a frame rate of {average_fps}")
    step = average_fps / sampling.fps
    indices = [int(i * step) for i in range(int(np.ceil(total_frames / step)))]
    indices = [index for index in indices if index < total_frames]
    if sampling.max_frames is not None and len(indices) > sampling.max_frames:
        return uniform_indices(total_frames, sampling.max_frames)
    return indices


def uniform_indices(total_frames: int, n: int) -> list[int]:
    """The midpoints of `n` equal segments of `range(total_frames)`."""
    return [int((i + 0.5) * total_frames / n) for i in range(n)]


def encode_image(frame: np.ndarray, image_format: str, jpeg_quality: int = 90) -> bytes:
    """One HxWx3 uint8 frame as JPEG or PNG bytes."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    buffer = io.BytesIO()
    options = {"quality": jpeg_quality} if image_format == "jpeg" else {}
    Image.fromarray(frame).save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def decode_image(data: bytes, name: str | None = None) -> np.ndarray:
    """Encoded image bytes back to an HxWx3 uint8 RGB array; a truncated or oversized image raises ImageError
    (moir.media.images) naming `name`."""
    return np.asarray(open_image(data, name=name))


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, aspect ratio kept, so that the longer side is at most `max_side`."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class SampledVideo:
    """The sampled frames of one video: (frame index, timestamp in seconds, image bytes) each, and their rate."""

    frames: list[tuple[int, float, bytes]]
    sampled_fps: float


def extract_frames(
    video_path: str | os.PathLike, sampling: FrameSampling, *, image_format: str = "jpeg", jpeg_quality: int = 90,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> SampledVideo:
    """Sample and encode the frames of one video, at most `max_side` pixels on their longer side.

    Raises whatever decord raises on an unreadable or corrupt file; the caller records it.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 (or None for no limit), got {max_side}")
    reader = decord.VideoReader(str(video_path), ctx=decord.cpu(0), num_threads=1)
    average_fps = reader.get_avg_fps()
    indices = sample_frame_indices(len(reader), average_fps, sampling)
    height, width = reader[indices[0]].shape[:2]
    size = scaled_size(width, height, max_side)
    chunk_size = max(1, min(DECODE_CHUNK, DECODE_BYTES // (width * height * 3)))
    frames = []
    for start in range(0, len(indices), chunk_size):
        chunk = indices[start : start + chunk_size]
        pixels = reader.get_batch(chunk).asnumpy()
        timestamps = reader.get_frame_timestamp(chunk)[:, 0]
        for index, timestamp, frame in zip(chunk, timestamps, pixels):
            if size != (width, height):
                frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
            frames.append((index, float(timestamp), encode_image(frame, image_format, jpeg_quality)))
        del pixels
    return SampledVideo(frames, sampled_fps=len(indices) * average_fps / len(reader))


def read_encoded_frames(
    frames_path: str | os.PathLike, media_paths: Iterable[str] | None = None
) -> dict[str, list[bytes]]:
    """The encoded frames of each video in a frames table (all videos, or only `media_paths`), in time order."""
    filters = None if media_paths is None else pc.field("media_path").isin(sorted(set(media_paths)))
    try:
        table = pq.read_table(frames_path, columns=["media_path", "frame_index", "image"], filters=filters)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{frames_path}: not a readable frames table ({error})") from error
    table = table.sort_by([("media_path", "ascending"), ("frame_index", "ascending")])
    frames: dict[str, list[bytes]] = {}
    for path, image in zip(table.column("media_path").to_pylist(), table.column("image").to_pylist()):
        frames.setdefault(path, []).append(image)
    return frames


def read_sampled_fps(frames_path: str | os.PathLike) -> dict[str, float]:
    """media_path -> sampled_fps of every video in a frames table (those the extraction stage could decode)."""
    try:
        table = pq.read_table(frames_path, columns=["media_path", "sampled_fps"])
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{frames_path}: not a readable frames table ({error})") from error
    return dict(zip(table.column("media_path").to_pylist(), table.column("sampled_fps").to_pylist()))
