"""Noise images of the robustness evaluation: full-resolution draw (noise_like with no pixel cap) against
a draw at the size the processor uses (moir.evaluate.noise), each followed by the real LLaVA-1.5 image processor
(built offline from moir/models/hub_processors.json). One run, ratios.

    python benchmarks/noise.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import PIL.Image
from transformers import CLIPImageProcessor


from moir.evaluate.noise import llava_max_pixels, noise_image, noise_like
from moir.models.pixel_budget import hub_processor_settings

SIZES = {"vizwiz photo 4032x3024": (3024, 4032), "photo 1600x1200": (1200, 1600), "scienceqa 640x480": (480, 640)}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = {k: v for k, v in hub_processor_settings("llava-hf/llava-1.5-7b-hf")["image"].items()
                if k not in ("image_processor_type", "processor_class")}
    processor = CLIPImageProcessor(**settings)
    print(f"{'image':<24}{'full-res s':>12}{'budgeted s':>12}{'speed-up':>10}")
    for name, (height, width) in SIZES.items():
        photo = PIL.Image.new("RGB", (width, height))

        def full():
            processor(images=[noise_like(photo, 0, "x")], return_tensors="pt")

        def budgeted():
            processor(images=[noise_image(height, width, 0, "x", llava_max_pixels(height, width))],
                      return_tensors="pt")

        full_s, budget_s = median_time(full, args.repeats), median_time(budgeted, args.repeats)
        print(f"{name:<24}{full_s:>12.3f}{budget_s:>12.3f}{full_s / budget_s:>9.1f}x")


if __name__ == "__main__":
    main()
