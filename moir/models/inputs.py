"""What the model is given: one question (`Example`), the cached encoder output of its media (`EncodedMedia`), the
checks of an image or a video's frames before the processor sees them, and of a local model directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from torch import Tensor


@dataclass
class EncodedMedia:
    """The frozen vision encoder's output for one image or video: exactly what the encoder cache stores.

    features: (N, D_enc) float. LLaVA: the selected vision layer's patch features (after the select strategy),
    before the projector. Qwen2.5-VL: the vision transformer's output before the patch merger, one row per patch in
    raster order (each 2x2 merge group contiguous). grid_thw: (1, 3) patches along time, height, width (Qwen2.5-VL)
    or None (LLaVA). kind: "image" or "video". scores: (n_tokens,) float32, one importance score per language-model
    visual token (moir.compression: LLaVA one per row; Qwen2.5-VL one per merge group, in raster order), or None.
    """

    features: Tensor
    grid_thw: Tensor | None
    kind: str
    scores: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"EncodedMedia.kind must be 'image' or 'video', got {self.kind!r}")
        if self.features.ndim != 2:
            raise ValueError(f"EncodedMedia.features must be (N, D_enc), got shape {tuple(self.features.shape)}")
        if self.grid_thw is not None and tuple(self.grid_thw.shape) != (1, 3):
            raise ValueError(f"EncodedMedia.grid_thw must be (1, 3) or None, got shape {tuple(self.grid_thw.shape)}")
        if self.scores is not None and self.scores.ndim != 1:
            raise ValueError(f"EncodedMedia.scores must be (n_tokens,), got shape {tuple(self.scores.shape)}")


@dataclass
class Example:
    """One question for the model. `prompt` comes from moir.prompts.build_prompt (no media placeholder in it).

    The media is either `media` (cached encoder output) or `pixels` (a PIL image, or a video as a list of HxWx3
    uint8 frames); `media_kind` is "image", "video" or "none". `fps` is the frame rate of the sampled video frames
    (Qwen2.5-VL's temporal positions depend on it); None uses the processor's default for bare frames (24).
    """

    id: str
    prompt: str
    answer: str | None
    media_kind: str
    media: EncodedMedia | None = None
    pixels: PIL.Image.Image | list[np.ndarray] | None = None
    fps: float | None = None


def check_model_directory(path: Path) -> None:
    """A local model directory must hold the model config, the tokenizer and the processor; name what is missing."""
    required = {
        "model config": ["config.json"],
        "tokenizer": ["tokenizer.json", "tokenizer.model"],
        "tokenizer config": ["tokenizer_config.json"],
        "processor config": ["processor_config.json", "preprocessor_config.json"],
    }
    for what, candidates in required.items():
        if not any((path / name).is_file() for name in candidates):
            raise FileNotFoundError(f"{path}: no {what} ({' or '.join(candidates)}) in the model directory")


def load_media(kind: str, path_or_frames: Any) -> PIL.Image.Image | list[np.ndarray]:
    """"image": a path (or PIL image) -> RGB PIL image. "video": a sequence of HxWx3 uint8 frames -> list."""
    if kind == "image":
        if isinstance(path_or_frames, PIL.Image.Image):
            return path_or_frames.convert("RGB")
        path = Path(path_or_frames)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found")
        try:
            with PIL.Image.open(path) as image:
                return image.convert("RGB")
        except (PIL.UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path}: not a readable image ({error})") from error
    if kind == "video":
        if isinstance(path_or_frames, (str, os.PathLike)):
            raise ValueError(f"{path_or_frames}: give a video as its decoded frames (the media stage extracts "
                             "them), not as a path")
        frames = [np.asarray(frame) for frame in path_or_frames]
        if not frames:
            raise ValueError("video: no frames")
        for index, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                raise ValueError(
                    f"video frame {index}: expected an HxWx3 uint8 array, got shape {frame.shape} {frame.dtype}"
                )
        if len({frame.shape for frame in frames}) != 1:
            raise ValueError(f"video: frames differ in size: {sorted({frame.shape for frame in frames})}")
        return frames
    raise ValueError(f"media kind must be 'image' or 'video', got {kind!r}")
