"""Raw pixels of a manifest's media, as the model wrapper loads them: images from the manifest's media root, video
frames from the frames table that `moir.media extract` wrote (videos are never decoded twice).

A video's frames are read when its pixels are asked for, from the row groups that hold them (an index of the frames
table's row groups, built once per process from its media_path column): memory holds one example's media, and a
read costs the same whatever the number of videos in the table.

Every image path is resolved inside the manifest's media root (`resolve_media` refuses `..`, absolute paths and
symbolic links pointing out, naming the row) and opened by `moir.media.images.open_image` (truncated images and
decompression bombs are refused naming the file).

Used by `moir.dataset` (training/evaluation on pixels) and by `moir.encoder_cache.cache` (the encoder cache dump).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moir.data.manifest import resolve_media
from moir.media.frames import decode_image, read_sampled_fps
from moir.media.images import open_image


class MediaLoader:
    """Raw pixels of a manifest's media: images from its media root, videos from a frames table."""

    def __init__(self, manifest: pa.Table, frames_path: str | os.PathLike | None, vlm) -> None:
        self.manifest = manifest
        self.vlm = vlm
        self.frames_path = frames_path
        has_videos = "video" in manifest.column("media_kind").to_pylist()
        if has_videos and frames_path is None:
            raise ValueError("the manifest has video examples: pass the frames table of `moir.media extract`")
        self.sampled_fps = read_sampled_fps(frames_path) if has_videos else {}
        self._frames_file: pq.ParquetFile | None = None  # opened on the first read, once per process
        self._row_groups: dict[str, list[int]] = {}
        self._pid: int | None = None

    def encoded_frames(self, media_path: str) -> list[bytes] | None:
        """A video's encoded frames in time order (None: not in the frames table), read from its row groups only."""
        if self._pid != os.getpid():  # first read, or a forked worker: open the table and index it
            try:
                self._frames_file = pq.ParquetFile(self.frames_path)
                self._row_groups = {}
                for group in range(self._frames_file.num_row_groups):
                    paths = self._frames_file.read_row_group(group, columns=["media_path"]).column(0)
                    for path in pc.unique(paths).to_pylist():
                        self._row_groups.setdefault(path, []).append(group)
            except (pa.ArrowInvalid, OSError) as error:
                raise ValueError(f"{self.frames_path}: not a readable frames table ({error})") from error
            self._pid = os.getpid()
        if media_path not in self._row_groups:
            return None
        table = self._frames_file.read_row_groups(self._row_groups[media_path],
                                                  columns=["media_path", "frame_index", "image"])
        table = table.filter(pc.equal(table["media_path"], media_path)).sort_by("frame_index")
        return table.column("image").to_pylist()

    def available(self, kind: str, media_path: str) -> bool:
        """False for a video the extraction stage could not decode."""
        return kind != "video" or media_path in self.sampled_fps

    def video_fps(self, media_path: str) -> float:
        """The frame rate of a video's sampled frames (`sampled_fps` of the frames table)."""
        return self.sampled_fps[media_path]

    def pixels(self, kind: str, media_path: str):
        """A PIL image, or the list of HxWx3 uint8 frames of a video, as the model wrapper loads them."""
        if kind == "image":
            path = resolve_media(self.manifest, media_path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: image file not found (media path {media_path!r})")
            return self.vlm.load_media("image", open_image(path))
        if kind == "video":
            frames = self.encoded_frames(media_path)
            if frames is None:
                raise KeyError(f"{self.frames_path}: no frames for video {media_path!r}")
            names = (f"{self.frames_path}: frame {i} of {media_path}" for i in range(len(frames)))
            return self.vlm.load_media("video", [decode_image(frame, name) for frame, name in zip(frames, names)])
        raise ValueError(f"media kind {kind!r} has no pixels")
