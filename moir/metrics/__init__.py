"""Metrics as pure functions: accuracy by each benchmark's protocol, MDI/AEI, effective rank, robustness and base
reading (accuracy with the text hint right and wrong).

The names exported here are called by checks outside this repository; keep them and their signatures.
"""

from moir.metrics.accuracy import exact_match, normalize_answer, parse_option_letter, vqa_accuracy, vqa_correct
from moir.metrics.dominance import layer_groups, modality_dominance
from moir.metrics.intervals import (
    binomial_interval,
    implied_sample_size,
    implied_sample_sizes,
    paper_percentage_interval,
)
from moir.metrics.mmbench_video import (
    FINE_DIMENSIONS,
    JUDGED_CORRECT_THRESHOLD,
    MMBENCH_VIDEO_DIMENSIONS,
    judged_correct_share,
    mmbench_video_dimension_ratings,
    mmbench_video_mean_scores,
)
from moir.metrics.rank import effective_rank
from moir.metrics.reading import base_reading
from moir.metrics.robustness import robustness_summary, unchanged_rate, vision_irrelevant_split
from moir.metrics.vizwiz import (
    normalize_vizwiz_answer,
    vizwiz_accuracy,
    vizwiz_accuracy_by_answer_type,
    vizwiz_predicts_unanswerable,
    vizwiz_unanswerability,
)

__all__ = [
    "FINE_DIMENSIONS",
    "JUDGED_CORRECT_THRESHOLD",
    "MMBENCH_VIDEO_DIMENSIONS",
    "binomial_interval",
    "base_reading",
    "effective_rank",
    "exact_match",
    "implied_sample_size",
    "implied_sample_sizes",
    "judged_correct_share",
    "layer_groups",
    "mmbench_video_dimension_ratings",
    "mmbench_video_mean_scores",
    "modality_dominance",
    "normalize_answer",
    "normalize_vizwiz_answer",
    "paper_percentage_interval",
    "parse_option_letter",
    "robustness_summary",
    "unchanged_rate",
    "vision_irrelevant_split",
    "vizwiz_accuracy",
    "vizwiz_accuracy_by_answer_type",
    "vizwiz_predicts_unanswerable",
    "vizwiz_unanswerability",
    "vqa_accuracy",
    "vqa_correct",
]
