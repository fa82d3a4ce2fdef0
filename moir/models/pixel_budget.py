"""The pixel budget of Qwen2.5-VL: how many pixels an image or a video frame may keep, hence how many visual tokens.

Qwen2.5-VL works at native resolution: an image (or a pair of video frames: temporal patch 2) is resized to a
multiple of 28 px (patch 14, merged 2x2) with at least `min_pixels` and at most `max_pixels` pixels, and becomes
(h / 28) * (w / 28) visual tokens. The hub processor of Qwen/Qwen2.5-VL-7B-Instruct allows 12,845,056 pixels
(hub_processors.json), for images and video frames alike: 16 frames of a 720p video are then 9,568 tokens, far
beyond a 2048-token training sequence. A `PixelBudget` sets the limits per image, per video frame and per video
(all frames together, as qwen-vl-utils' `total_pixels`); `apply_pixel_budget` puts them on a processor, and the
Qwen2.5-VL wrapper records them in its encoder signature, so a cache dumped under another budget is refused.

The paper suite's budget (PAPER_BUDGET; tests/test_pixel_budget.py checks every number with the real processor):
    video frames: at most 128 x 28 x 28 = 100,352 px each, at most 1024 x 28 x 28 px per video: a video is at
    most 1024 visual tokens whatever its length or resolution. 16 frames of a 16:9 video (360p, 720p and 1080p
    alike) resize to 224 x 420 px: 8 x 15 tokens per frame pair, 960 tokens. With the transcript capped at 512
    tokens (moir.media.transcript_cap), the question at 200 and the answer at 256, an example is at most
    1024 + 512 + 200 + 256 + the chat template (about 30) < 2048 tokens.
    images: 3,136 to 802,816 px (4 to 1024 tokens).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

HUB_PROCESSORS_PATH = Path(__file__).with_name("hub_processors.json")
QWEN_TOKEN_PIXELS = 28 * 28  # one merged visual token: a 2x2 group of 14 px patches


@dataclass(frozen=True)
class PixelBudget:
    """Pixel limits of Qwen2.5-VL's processor. `video_total_pixels` (None: no limit) caps a whole video: each
    frame may then keep at most video_total_pixels * temporal_patch_size / n_frames pixels (qwen-vl-utils' rule),
    so a video is at most video_total_pixels / (28 * 28) visual tokens."""

    image_min_pixels: int
    image_max_pixels: int
    video_min_pixels: int
    video_max_pixels: int
    video_total_pixels: int | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None and name == "video_total_pixels":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"pixel budget field {name!r} must be a positive integer, got {value!r}")
        for kind in ("image", "video"):
            low, high = getattr(self, f"{kind}_min_pixels"), getattr(self, f"{kind}_max_pixels")
            if low > high:
                raise ValueError(f"pixel budget: {kind}_min_pixels {low} > {kind}_max_pixels {high}")

    @classmethod
    def from_mapping(cls, fields: Mapping, source: str = "pixel budget") -> PixelBudget:
        """From a config block {image_min_pixels, image_max_pixels, video_min_pixels, video_max_pixels,
        video_total_pixels}; an unknown or missing field is named."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = sorted(name for name in known - set(fields) if name != "video_total_pixels")
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        return cls(**fields)

    def frame_max_pixels(self, n_frames: int, temporal_patch_size: int = 2) -> int:
        """The most pixels one frame of an `n_frames` video may keep."""
        if self.video_total_pixels is None:
            return self.video_max_pixels
        n_frames = -(-n_frames // temporal_patch_size) * temporal_patch_size  # padded to whole temporal patches
        share = self.video_total_pixels * temporal_patch_size // n_frames
        return max(min(self.video_max_pixels, share), self.video_min_pixels)


# The paper suite's budget (module docstring).
PAPER_BUDGET = PixelBudget(
    image_min_pixels=4 * QWEN_TOKEN_PIXELS,
    image_max_pixels=1024 * QWEN_TOKEN_PIXELS,
    video_min_pixels=4 * QWEN_TOKEN_PIXELS,
    video_max_pixels=128 * QWEN_TOKEN_PIXELS,
    video_total_pixels=1024 * QWEN_TOKEN_PIXELS,
)


def hub_processor_settings(hub_id: str) -> dict:
    """The published processor settings of a paper model ({"image": {...}, "video": {...}})."""
    table = json.loads(HUB_PROCESSORS_PATH.read_text())
    if hub_id not in table:
        raise ValueError(f"{HUB_PROCESSORS_PATH}: no processor settings for {hub_id!r}; "
                         f"stored: {sorted(k for k in table if not k.startswith('_'))}")
    return copy.deepcopy(table[hub_id])


def _constructor_fields(fields: Mapping) -> dict:
    return {k: v for k, v in fields.items() if k not in ("image_processor_type", "video_processor_type",
                                                           "processor_class")}


def build_qwen_media_processors(
    hub_id: str = "Qwen/Qwen2.5-VL-7B-Instruct", budget: PixelBudget | None = None
) -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    """The real image and video processors of a Qwen2.5-VL hub model, offline, from the shipped settings; with a
    budget, its limits replace the hub's."""
    settings = hub_processor_settings(hub_id)
    image = Qwen2VLImageProcessor(**_constructor_fields(settings["image"]))
    video = Qwen2VLVideoProcessor(**_constructor_fields(settings["video"]), cap_pixels_per_frame=False)
    if budget is not None:
        _set_limits(image, budget.image_min_pixels, budget.image_max_pixels)
        _set_limits(video, budget.video_min_pixels, budget.video_max_pixels)
    return image, video


def _set_limits(processor, min_pixels: int, max_pixels: int) -> None:
    processor.size = SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(processor, name):
            setattr(processor, name, value)


def apply_pixel_budget(processor, budget: PixelBudget) -> None:
    """Put `budget`'s per-image and per-frame limits on a Qwen2.5-VL processor (in place). The per-video limit is
    applied per call by `process_videos`, which knows the frame count."""
    _set_limits(processor.image_processor, budget.image_min_pixels, budget.image_max_pixels)
    _set_limits(processor.video_processor, budget.video_min_pixels, budget.video_max_pixels)


def process_videos(video_processor, videos: Sequence[np.ndarray], budget: PixelBudget | None) -> dict[str, torch.Tensor]:
    """pixel_values_videos and video_grid_thw of `videos` ((frames, H, W, 3) arrays), each video resized under
    the budget's per-frame limit for its frame count (the processor's own limits when `budget` is None)."""
    if budget is None:
        out = video_processor(videos=list(videos), return_tensors="pt")
        return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"]}
    pixels, grids = [], []
    for video in videos:
        size = {"shortest_edge": budget.video_min_pixels,
                "longest_edge": budget.frame_max_pixels(len(video), video_processor.temporal_patch_size)}
        out = video_processor(videos=[video], size=size, cap_pixels_per_frame=False, return_tensors="pt")
        pixels.append(out["pixel_values_videos"])
        grids.append(out["video_grid_thw"])
    return {"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.cat(grids)}


def image_tokens(height: int, width: int, min_pixels: int, max_pixels: int, *, patch_size: int = 14,
                 merge_size: int = 2) -> int:
    """Visual tokens of one image under the given limits (the processor's resize, then one token per merge)."""
    factor = patch_size * merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // factor) * (w // factor)


def video_tokens(height: int, width: int, n_frames: int, budget: PixelBudget, *, patch_size: int = 14,
                 merge_size: int = 2, temporal_patch_size: int = 2) -> int:
    """Visual tokens of an `n_frames` video of height x width pixels under `budget`."""
    per_pair = image_tokens(height, width, budget.video_min_pixels,
                            budget.frame_max_pixels(n_frames, temporal_patch_size),
                            patch_size=patch_size, merge_size=merge_size)
    return per_pair * -(-n_frames // temporal_patch_size)
