"""Session-wide test settings and the fixtures several test files share.

Tests never touch the network and stay on one thread per process. Shared fixtures: `tiny_dirs` (the two tiny
models, built once per session; tests only read them), `synth_images` and `synth_videos` (factories of small
synthetic splits, the videos with their frames extracted). Plain helpers (examples, the unmodified reference) are
in model_helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process (torch reads these when the test modules import it), here and in the processes tests
# start: the tiny models' operations are far smaller than a thread pool's overhead, which on a machine with more
# processes than cores costs many times the work itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

TINY_MODELS = ("tiny-llava", "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{name: directory} of each tiny model with seed-0 weights (`moir.models.build_tiny_model`); read-only."""
    from moir.models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {name: build_tiny_model(name, root / name, seed=0) for name in TINY_MODELS}


@pytest.fixture(scope="session")
def synth_images():
    """make(root, sizes, seed, image_size=32) -> {split: manifest} of a synth-image dataset under `root`."""
    from moir.data.synthetic import generate_synth_image

    def make(root: Path, sizes: dict[str, int], seed: int, image_size: int = 32) -> dict[str, Path]:
        return generate_synth_image(root / "raw", root / "manifests", sizes, image_size=image_size, seed=seed)

    return make


@pytest.fixture(scope="session")
def synth_videos():
    """make(root, split, n, seed, frames=8, frame_size=32) -> (manifest, frames.parquet): a synth-video split
    under `root` with `frames` frames of every clip extracted."""
    from moir.data.synthetic import generate_synth_video
    from moir.media.extract import extract_media
    from moir.media.frames import FrameSampling

    def make(root: Path, split: str, n: int, seed: int, frames: int = 8, frame_size: int = 32) -> tuple[Path, Path]:
        manifest = generate_synth_video(root / "raw", root / "manifests", {split: n}, frames=frames,
                                        frame_size=frame_size, seed=seed)[split]
        extract_media(manifest, root / "media", FrameSampling(num_frames=frames))
        return manifest, root / "media" / "frames.parquet"

    return make


@pytest.fixture(scope="module")
def llava(tiny_dirs):
    """tiny-llava behind its wrapper, loaded once per test module (imported here: conftest imports no torch)."""
    from moir.models import load_vlm

    return load_vlm(tiny_dirs["tiny-llava"])


@pytest.fixture(scope="module")
def qwen(tiny_dirs):
    """tiny-qwen2.5-vl behind its wrapper, loaded once per test module."""
    from moir.models import load_vlm

    return load_vlm(tiny_dirs["tiny-qwen2.5-vl"])
