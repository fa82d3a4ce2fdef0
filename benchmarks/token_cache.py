"""Examples per second reading the encoder cache against running the vision encoder on pixels.

    python benchmarks/token_cache.py                  # tiny-llava, tiny-qwen2.5-vl, LLaVA-1.5 shapes
    python benchmarks/token_cache.py --quick          # fewer images (a smoke run)

What is timed, per model, on the same images in one run:
    encode   what a run without the cache does for every example of every epoch: read the image file, the model's
             image processor, the frozen vision tower (`load_examples(..., vlm=...)` + `vlm.encode`, in
             batches of --batch-size).
    read     what a run with the cache does: `load_examples(..., cache_dir=...)`, one example at a time, which
             reads its features from the shard (one row group) into an Example.
    ratio    read examples/s over encode examples/s. Target: >= 10x at LLaVA-1.5 shapes.
The one-off dump (`moir.encoder_cache.cache.dump_for_vlm`) and the cache's open time are printed too.

Models: the tiny models of the test suite, and LLaVA-1.5's encoder shapes: the real CLIP ViT-L/14-336 vision
tower (config from moir.models.hub_configs, random weights) behind the LLaVA wrapper with a tiny language model,
giving 576 x 1024 features per image. Images are 640x480 JPEGs (the size of typical VizWiz/ScienceQA photos).
The cache is read right after it is written, so from the page cache: on a cold disk, reading 1.2 MB per LLaVA
example is bounded by disk bandwidth instead. Timings are from the CPU this runs on (threads: torch's default).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from moir.data.manifest import write_manifest
from moir.dataset import load_examples
from moir.models import build_tiny_model, load_vlm
from moir.models.hub_configs import hub_config
from moir.models.llava import LlavaWrapper
from moir.models.tiny import build_tiny_llava
from moir.encoder_cache.cache import dump_for_vlm


def write_images(directory: Path, n: int, seed: int = 0) -> Path:
    """`n` 640x480 JPEG photos-like images (smooth random colour fields) and their manifest."""
    rng = np.random.default_rng(seed)
    (directory / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((640, 480), Image.BICUBIC).save(
            directory / "images" / f"{i:04d}.jpg", quality=90
        )
        rows.append({
            "id": f"bench/test/{i:04d}", "dataset": "bench", "split": "test", "question": "What is shown?",
            "choices": [], "answer_index": None, "answers": ["colours"], "answer_type": None, "hint": "",
            "media_kind": "image", "media_path": f"images/{i:04d}.jpg", "has_image": True, "category": "",
        })  # fmt: skip
    return write_manifest(rows, directory / "test.parquet", media_root=directory)


def llava_1_5_shapes(seed: int = 0) -> LlavaWrapper:
    """The LLaVA wrapper over CLIP ViT-L/14-336 (random weights) and the tiny language model: 576 x 1024 features."""
    tiny_model, processor = build_tiny_llava(seed)
    config = LlavaConfig(
        vision_config=hub_config("llava-hf/llava-1.5-7b-hf").vision_config.to_dict(),
        text_config=tiny_model.config.text_config.to_dict(),
        image_token_index=tiny_model.config.image_token_id, image_seq_length=576,
        pad_token_id=tiny_model.config.pad_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor.image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )  # fmt: skip
    return LlavaWrapper(model, processor, "llava-1.5-shapes (CLIP ViT-L/14-336, random weights)")


def encode_rate(manifest: Path, vlm, batch_size: int) -> float:
    """Examples/s of the pixel path: image file -> processor -> vision tower."""
    examples = load_examples(manifest, vlm=vlm)
    vlm.encode(examples[:1])  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for begin in range(0, len(examples), batch_size):
        vlm.encode(examples[begin : begin + batch_size])
    return len(examples) / (time.perf_counter() - start)


def read_rate(manifest: Path, cache: Path, vlm, repeats: int) -> tuple[float, float]:
    """(examples/s of the cache path, seconds to open the cache), the rate the median of `repeats` passes."""
    start = time.perf_counter()
    examples = load_examples(manifest, cache_dir=cache, vlm=vlm)
    open_s = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = sum(example.media.features.shape[0] > 0 for example in examples)
        rates.append(n / (time.perf_counter() - start))
    return float(np.median(rates)), open_s


def run(name: str, vlm, n_images: int, batch_size: int, workdir: Path) -> float:
    directory = workdir / name
    manifest = write_images(directory, n_images)
    encode = encode_rate(manifest, vlm, batch_size)
    start = time.perf_counter()
    dump_for_vlm(manifest, directory / "cache", vlm, model=name, batch_size=batch_size)
    dump_s = time.perf_counter() - start
    read, open_s = read_rate(manifest, directory / "cache", vlm, repeats=5)
    shape = tuple(
        load_examples(manifest, cache_dir=directory / "cache", vlm=vlm, limit=1)[0].media.features.shape
    )
    print(
        f"{name:<22} {str(shape):>12} {n_images:>6} {encode:>12.2f} {read:>12.1f} {read / encode:>9.1f}x"
        f" {dump_s:>9.1f} {open_s:>8.2f}",
        flush=True,
    )
    return read / encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder call on the pixel path")
    args = parser.parse_args()
    tiny_images, large_images = (16, 4) if args.quick else (128, 16)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'model':<22} {'features':>12} {'images':>6} {'encode ex/s':>12} {'read ex/s':>12} {'ratio':>10}"
          f" {'dump s':>9} {'open s':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in ("tiny-llava", "tiny-qwen2.5-vl"):
            build_tiny_model(name, workdir / f"{name}-model", seed=0)
            run(name, load_vlm(workdir / f"{name}-model"), tiny_images, args.batch_size, workdir)
        ratio = run("llava-1.5-shapes", llava_1_5_shapes(), large_images, args.batch_size, workdir)
    print(f"LLaVA-1.5 shapes (576 x 1024 per image): reading the cache is {ratio:.0f}x faster than encoding "
          f"(target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
