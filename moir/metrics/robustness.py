"""Robustness to visual corruption: the rate of unchanged predictions when every image (or frame) becomes noise.

A high unchanged rate means the model ignores its visual input. The rate is reported for all questions and split
into vision-dependent and vision-irrelevant questions; a question is vision-irrelevant when the base model
answers it correctly with the image removed (`vision_irrelevant_split`). The split is computed once, from the base
model, and shared by every run so that all arms are compared on the same questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from moir.metrics.accuracy import normalize_answer


def unchanged_rate(clean: Sequence[str], noisy: Sequence[str], *, normalize: bool = True) -> float:
    """Percentage (0-100) of positions where the two prediction lists agree, after `normalize_answer` by default.

    Pass normalize=False when the predictions are already canonical (for example parsed option letters).
    """
    if len(clean) != len(noisy):
        raise ValueError(f"prediction lists differ in length: {len(clean)} clean vs {len(noisy)} noisy")
    if len(clean) == 0:
        raise ValueError("unchanged_rate of empty prediction lists is undefined")
    if normalize:
        clean = [normalize_answer(text) for text in clean]
        noisy = [normalize_answer(text) for text in noisy]
    return 100.0 * sum(a == b for a, b in zip(clean, noisy)) / len(clean)


def vision_irrelevant_split(no_image_correct: Mapping[str, bool]) -> dict[str, str]:
    """Example id -> "vision_irrelevant" when the base model answered it correctly without the image, else
    "vision_dependent"."""
    return {
        example_id: "vision_irrelevant" if correct else "vision_dependent"
        for example_id, correct in no_image_correct.items()
    }


def robustness_summary(
    clean: Mapping[str, str], noisy: Mapping[str, str], split: Mapping[str, str]
) -> dict[str, dict[str, float | int | None]]:
    """Unchanged rate (percent) and question count for all questions and for each side of the split.

    `clean` and `noisy` map example id -> canonical prediction and must hold the same ids; every id must be in
    `split`. A side of the split without questions gets rate None.
    """
    if set(clean) != set(noisy):
        missing = sorted(set(clean) ^ set(noisy))
        raise ValueError(f"clean and noisy predictions cover different examples, e.g. {missing[:5]}")
    unsplit = sorted(set(clean) - set(split))
    if unsplit:
        raise ValueError(f"{len(unsplit)} example(s) missing from the vision split, e.g. {unsplit[:5]}")
    groups = {"all": sorted(clean)}
    for side in ("vision_dependent", "vision_irrelevant"):
        groups[side] = [example_id for example_id in groups["all"] if split[example_id] == side]
    summary = {}
    for name, ids in groups.items():
        rate = (
            unchanged_rate([clean[i] for i in ids], [noisy[i] for i in ids], normalize=False) if ids else None
        )
        summary[name] = {"unchanged_rate": rate, "n": len(ids)}
    return summary
