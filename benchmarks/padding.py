"""Padding share of random batches against modality- and length-grouped batches (moir.batching), one run.

    python benchmarks/padding.py [--batch-size 8] [--seed 0]

Length distributions (tokens of prompt + media + answer, LLaVA-1.5: an image is 576 visual tokens):
    scienceqa-like   51% text-only, about 130 tokens (normal, sd 40, at least 40); 49% with an image, about 720
                     (576 + normal text of mean 144, sd 40): the issue's description of ScienceQA's train split.
    vizwiz-like      every example has an image: 576 + a short question and the instruction (about 70 tokens,
                     lognormal, a long tail of 150+).
    mmbench-like     Qwen2.5-VL videos under the paper's pixel budget (900-1024 visual tokens) + transcript
                     (0-512 tokens, a third without audio) + question.
Printed per distribution: the padding share (padding tokens / computed tokens) of a random order and of the
grouped order, over 10 epochs' orders, and their ratio; and the share of compute saved, 1 - grouped/random total
tokens. Deterministic (seeded): the numbers are ratios of token counts, not timings.
"""

from __future__ import annotations

import argparse

import numpy as np

from moir.batching import evaluation_order, grouped_order, padding_share, random_order


def scienceqa_like(rng: np.random.Generator, n: int = 12726) -> tuple[list[int], list[str]]:
    text_only = rng.random(n) < 0.51
    text = np.maximum(rng.normal(130, 40, n), 40)
    image = 576 + np.maximum(rng.normal(144, 40, n), 30)
    lengths = np.where(text_only, text, image).astype(int).tolist()
    return lengths, ["none" if t else "image" for t in text_only]


def vizwiz_like(rng: np.random.Generator, n: int = 20523) -> tuple[list[int], list[str]]:
    text = np.minimum(rng.lognormal(np.log(65), 0.35, n), 400)
    return (576 + text).astype(int).tolist(), ["image"] * n


def mmbench_like(rng: np.random.Generator, n: int = 1400) -> tuple[list[int], list[str]]:
    visual = rng.choice([900, 936, 960, 1020], n)
    transcript = np.where(rng.random(n) < 1 / 3, 0, rng.integers(50, 513, n))
    question = rng.integers(15, 80, n)
    return (visual + transcript + question + 30).astype(int).tolist(), ["video"] * n


DISTRIBUTIONS = {"scienceqa-like": scienceqa_like, "vizwiz-like": vizwiz_like, "mmbench-like": mmbench_like}


def measure(lengths: list[int], kinds: list[str], batch_size: int, seed: int, epochs: int = 10) -> dict:
    random_padded, grouped_padded, random_tokens, grouped_tokens = [], [], 0.0, 0.0
    real = sum(lengths)
    for epoch in range(epochs):
        shuffled = random_order(len(lengths), seed=seed, epoch=epoch)
        grouped = grouped_order(lengths, kinds, batch_size, seed=seed, epoch=epoch)
        assert sorted(grouped) == list(range(len(lengths)))
        random_padded.append(padding_share(lengths, shuffled, batch_size))
        grouped_padded.append(padding_share(lengths, grouped, batch_size))
        random_tokens += real / (1 - random_padded[-1])
        grouped_tokens += real / (1 - grouped_padded[-1])
    return {
        "random": float(np.mean(random_padded)), "grouped": float(np.mean(grouped_padded)),
        "evaluation": padding_share(lengths, evaluation_order(lengths, kinds), batch_size),
        "saved": 1 - grouped_tokens / random_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"batch size {args.batch_size}; padding share = padding tokens / computed tokens (mean of 10 epochs)")
    print(f"{'distribution':<16}{'n':>7}{'random':>9}{'grouped':>9}{'random/grouped':>16}{'compute saved':>15}"
          f"{'eval sorted':>13}")
    for name, make in DISTRIBUTIONS.items():
        lengths, kinds = make(np.random.default_rng(args.seed))
        result = measure(lengths, kinds, args.batch_size, args.seed)
        ratio = result["random"] / result["grouped"] if result["grouped"] else float("inf")
        print(f"{name:<16}{len(lengths):>7}{result['random']:>9.1%}{result['grouped']:>9.1%}{ratio:>15.1f}x"
              f"{result['saved']:>15.1%}{result['evaluation']:>13.1%}")


if __name__ == "__main__":
    main()
