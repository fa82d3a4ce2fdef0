"""The inputs as each evaluation mode presents them: as they are (clean), the media removed (no-image), or every
image and every video frame replaced by Gaussian noise of the same size (noise), drawn from a stream seeded per
example so that it depends on neither batching nor order.

Drawing
that noise at the photo's full resolution (a 12 MP VizWiz photo: 36 million float64 draws, then the processor
resizes it down to 336 x 336) costs a CPU pass per photo for pixels the model never sees. `noise_image` draws it
at most at `max_pixels` (the aspect ratio kept: the processor then resizes, crops and patches it as it would the
photo's own size), in float32, and needs only the photo's size (PIL.Image.open(path).size reads the header).

`max_pixels` per family: LLaVA-1.5 (resize to shortest edge 336, centre crop): any size whose shortest edge is at
least 336 gives the processor the same work, so `llava_max_pixels(height, width)` keeps the shortest edge at 336;
Qwen2.5-VL: the pixel budget's image_max_pixels (or the frame limit for video frames).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import PIL.Image

from moir.evaluate import EvaluationError
from moir.models import Example

NOISE_MEAN, NOISE_STD = 127.5, 64.0


def noise_rng(seed: int, example_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "little")])


def noise_size(height: int, width: int, max_pixels: int | None) -> tuple[int, int]:
    """(height, width) scaled down, aspect ratio kept, to at most `max_pixels` pixels (None: unchanged)."""
    if height < 1 or width < 1:
        raise ValueError(f"an image needs a positive size, got {height} x {width}")
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def llava_max_pixels(height: int, width: int, shortest_edge: int = 336) -> int:
    """The fewest pixels at this aspect ratio whose shortest edge is still `shortest_edge` (LLaVA's resize)."""
    short, long = sorted((height, width))
    return shortest_edge * math.ceil(long * shortest_edge / short)


def draw_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 (height, width, 3) Gaussian noise of mean NOISE_MEAN and sd NOISE_STD, clipped to 0-255."""
    values = rng.standard_normal((height, width, 3), dtype=np.float32)
    values *= NOISE_STD
    values += NOISE_MEAN
    return np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8)


def noise_image(height: int, width: int, seed: int, example_id: str, max_pixels: int | None) -> PIL.Image.Image:
    """The noise that replaces an image of height x width pixels, at most `max_pixels` pixels, seeded per example."""
    return PIL.Image.fromarray(draw_noise(noise_rng(seed, example_id), *noise_size(height, width, max_pixels)))


def noise_frames(n_frames: int, height: int, width: int, seed: int, example_id: str,
                 max_pixels: int | None) -> list[np.ndarray]:
    """The noise that replaces the frames of a video, each at most `max_pixels` pixels, seeded per example."""
    rng = noise_rng(seed, example_id)
    size = noise_size(height, width, max_pixels)
    return [draw_noise(rng, *size) for _ in range(n_frames)]


def noise_like(pixels: PIL.Image.Image | list[np.ndarray], seed: int, example_id: str,
               max_pixels: int | None = None):
    """Gaussian noise in place of an image (PIL) or of every frame of a video, at most `max_pixels` pixels each
    (None: the media's own size), seeded per example."""
    if isinstance(pixels, PIL.Image.Image):
        return noise_image(pixels.height, pixels.width, seed, example_id, max_pixels)
    if not pixels:
        return []
    height, width = np.asarray(pixels[0]).shape[:2]
    return noise_frames(len(pixels), height, width, seed, example_id, max_pixels)


def prepare_example(example: Example, mode: str, noise_seed: int) -> Example:
    """The example as the mode presents it to the model (generation: no answer)."""
    example = dataclasses.replace(example, answer=None)
    if mode == "no-image" or example.media_kind == "none":
        return dataclasses.replace(example, media_kind="none", media=None, pixels=None, fps=None)
    if mode == "noise":
        if example.pixels is None:
            raise EvaluationError(f"example {example.id}: noise mode needs pixels, not cached features")
        return dataclasses.replace(example, media=None, pixels=noise_like(example.pixels, noise_seed, example.id))
    return example
