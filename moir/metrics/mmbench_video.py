"""MMBench-Video aggregation of judge scores, as VLMEvalKit computes it, and the share judged correct.

A judge scores each answer 0-3 (`moir.evaluate.judge.parse_judge_score`: VLMEvalKit's parsing, any integer, -1 for
a reply that is not one). VLMEvalKit then reports two means of the scores (`mmbench_video_mean_scores`):
- "all": every question, a negative score (a failed judgement) counted as 0;
- "valid": only the questions with a score >= 0;
and both per dimension (`mmbench_video_dimension_ratings`): each question carries a list of fine (L3) capability
dimensions; a question counts once in every fine dimension it lists and once in every coarse dimension
(CP, FP-S, FP-C, HL, LR, AR, RR, CSR, TR, and the unions Perception, Reasoning, Overall) that contains one of
them. A dimension without questions has the mean of nothing: NaN (VLMEvalKit prints "nan").

The paper reports MMBench-Video "accuracy" as a percentage whose values (42.86, 52.38, 60.87, 69.57, 71.43, 100)
are multiples of 1/21 or 1/23 (or 1/7), i.e. shares of answers judged correct on about 22 questions, not the mean
score. `judged_correct_share` gives that share under a stated threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# VLMEvalKit's MMV_DIMENSIONS: coarse dimension -> its fine (L3) dimensions, then the unions.
MMBENCH_VIDEO_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "CP": ("Video Topic", "Video Emotion", "Video Scene", "Video Style"),
    "FP-S": ("OCR", "Object Recognition", "Attribute Recognition", "Event Recognition", "Human Motion", "Counting"),
    "FP-C": ("Spatial Relationship", "Human-object Interaction", "Human Interaction"),
    "HL": ("Hallucination",),
    "LR": ("Structuralized Image-Text Understanding", "Mathematical Calculation"),
    "AR": ("Physical Property", "Function Reasoning", "Identity Reasoning"),
    "RR": ("Natural Relation", "Physical Relation", "Social Relation"),
    "CSR": ("Common Sense Reasoning",),
    "TR": ("Counterfactual Reasoning", "Causal Reasoning", "Future Prediction"),
}
FINE_DIMENSIONS: tuple[str, ...] = tuple(fine for fines in MMBENCH_VIDEO_DIMENSIONS.values() for fine in fines)
PERCEPTION = ("CP", "FP-C", "FP-S", "HL")
REASONING = ("LR", "AR", "RR", "CSR", "TR")
MMBENCH_VIDEO_DIMENSIONS["Perception"] = tuple(f for c in PERCEPTION for f in MMBENCH_VIDEO_DIMENSIONS[c])
MMBENCH_VIDEO_DIMENSIONS["Reasoning"] = tuple(f for c in REASONING for f in MMBENCH_VIDEO_DIMENSIONS[c])
MMBENCH_VIDEO_DIMENSIONS["Overall"] = MMBENCH_VIDEO_DIMENSIONS["Perception"] + MMBENCH_VIDEO_DIMENSIONS["Reasoning"]

# "A rating of 2 suggests high similarity, meaning the candidate answer is largely correct." (the judge prompt)
JUDGED_CORRECT_THRESHOLD = 2


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def mmbench_video_mean_scores(scores: Sequence[int]) -> dict[str, float]:
    """{"all": mean with negative scores as 0, "valid": mean of the scores >= 0}; NaN where nothing is averaged."""
    all_scores = [max(score, 0) for score in scores]
    return {"all": _mean(all_scores), "valid": _mean([score for score in scores if score >= 0])}


def mmbench_video_dimension_ratings(
    scores: Sequence[int], dimensions: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """VLMEvalKit's per-dimension ratings: {"coarse_all", "coarse_valid", "fine_all", "fine_valid"}, each mapping
    every dimension (all of them, in VLMEvalKit's order) to its mean score (NaN when no question has it).

    scores: one judge score per question; dimensions: the fine dimensions each question lists.
    """
    if len(scores) != len(dimensions):
        raise ValueError(f"scores ({len(scores)}) and dimensions ({len(dimensions)}) differ in length")
    fine: dict[str, list[int]] = {name: [] for name in FINE_DIMENSIONS}
    coarse: dict[str, list[int]] = {name: [] for name in MMBENCH_VIDEO_DIMENSIONS}
    for question, (score, listed) in enumerate(zip(scores, dimensions)):
        for name in listed:
            if name not in fine:
                raise ValueError(f"question {question}: unknown MMBench-Video dimension {name!r}")
            fine[name].append(score)
        for name, members in MMBENCH_VIDEO_DIMENSIONS.items():
            if any(listed_name in members for listed_name in listed):
                coarse[name].append(score)
    ratings = {}
    for level, groups in (("coarse", coarse), ("fine", fine)):
        means = {name: mmbench_video_mean_scores(values) for name, values in groups.items()}
        ratings[f"{level}_all"] = {name: mean["all"] for name, mean in means.items()}
        ratings[f"{level}_valid"] = {name: mean["valid"] for name, mean in means.items()}
    return ratings


def judged_correct_share(scores: Sequence[int], threshold: int = JUDGED_CORRECT_THRESHOLD) -> float:
    """The share of answers judged correct, score >= threshold, in [0, 1]; a failed judgement (negative score)
    counts as not correct and stays in the denominator (as in VLMEvalKit's "all" mean).

    Why the default threshold 2: the paper's MMBench-Video numbers are shares k/n of about 22 questions, so each
    answer was binarised into correct or not; the judge prompt defines 2 as "largely correct" and 1 as "largely
    incorrect", so ">= 2" is the only cut that the prompt's own wording names as correct. The paper does not say
    which cut it used; with so few questions one answer moves the share by 4-5 points, so the threshold is a
    setting, and the report should state it.
    """
    if len(scores) == 0:
        raise ValueError("judged_correct_share needs at least one score")
    return sum(1 for score in scores if score >= threshold) / len(scores)
