"""The inputs as each evaluation mode presents them: as they are (clean), the media removed (no-image), or every
image and every video frame replaced by Gaussian noise of the same size (noise), drawn from a stream seeded per
example so that it depends on neither batching nor order."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import PIL.Image

from moir.evaluate import EvaluationError
from moir.models import Example

NOISE_MEAN, NOISE_STD = 127.5, 64.0


def _stream_seed(seed: int, example_id: str) -> list[int]:
    return [seed, int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "little")]

def noise_like(pixels: PIL.Image.Image | list[np.ndarray], seed: int, example_id: str):
    """Gaussian noise with the shape of an image (PIL) or of every frame of a video, seeded per example."""
    rng = np.random.default_rng(_stream_seed(seed, example_id))

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return np.clip(np.rint(rng.normal(NOISE_MEAN, NOISE_STD, size=shape)), 0, 255).astype(np.uint8)

    if isinstance(pixels, PIL.Image.Image):
        return PIL.Image.fromarray(draw((pixels.height, pixels.width, 3)))
    return [draw(np.asarray(frame).shape) for frame in pixels]

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
