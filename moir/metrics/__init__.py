"""Metrics as pure functions: accuracy by each benchmark's protocol, MDI/AEI, effective rank and robustness.

The names exported here are called by checks outside this repository; keep them and their signatures.
"""

from moir.metrics.accuracy import exact_match, normalize_answer, parse_option_letter, vqa_accuracy, vqa_correct
from moir.metrics.dominance import layer_groups, modality_dominance
from moir.metrics.rank import effective_rank
from moir.metrics.robustness import robustness_summary, unchanged_rate, vision_irrelevant_split

__all__ = [
    "effective_rank",
    "exact_match",
    "layer_groups",
    "modality_dominance",
    "normalize_answer",
    "parse_option_letter",
    "robustness_summary",
    "unchanged_rate",
    "vision_irrelevant_split",
    "vqa_accuracy",
    "vqa_correct",
]
