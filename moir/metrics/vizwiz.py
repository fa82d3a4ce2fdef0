"""VizWiz-VQA scoring as the official VizWiz evaluation (`VQAEval` by Qing Li, distributed with VizWiz) computes it.

The official evaluation reports, for a set of answered questions:
- accuracy: for each question, the prediction is normalised (`normalize_vizwiz_answer`) and compared, as a string,
  with each of the annotators' answers *as released*; the question's accuracy is the mean over the leave-one-out
  subsets of min(#matches / 3, 1) (`vizwiz_accuracy`); overall accuracy is the mean over questions;
- accuracy per answer type ("yes/no", "number", "other", "unanswerable": the annotation's `answer_type`), the
  mean over the questions of each type (`vizwiz_accuracy_by_answer_type`);
- unanswerability: with "unanswerable" as the positive class (1 - the annotation's `answerable`) and the
  submission's answerability score p turned into 1 - p, sklearn's `average_precision_score` and the F1 of the
  decision 1 - p > 0.5 (`vizwiz_unanswerability`). A generated answer carries no score; it declares the question
  unanswerable when it normalises to "unanswerable" (`vizwiz_predicts_unanswerable`), i.e. p = 0, else p = 1.

The official script reports these in percent rounded to 2 decimals; the functions here return unrounded
fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

from moir.metrics.accuracy import _ARTICLES, _CONTRACTIONS, _NUMBER_WORDS, _leave_one_out_accuracy, _process_punctuation

# VizWiz's contraction table is the VQA table typed with the typographic apostrophe (U+2019) in place of "'",
# except for the entries below, which kept the ASCII apostrophe (in the key or in the value).
_TYPOGRAPHIC = "\u2019"
_ASCII_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_ASCII_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
_VIZWIZ_CONTRACTIONS = {
    (key if key in _ASCII_KEYS else key.replace("'", _TYPOGRAPHIC)):
        (value if key in _ASCII_VALUES else value.replace("'", _TYPOGRAPHIC))
    for key, value in _CONTRACTIONS.items()
}

UNANSWERABLE = "unanswerable"
ANSWER_TYPES = ("yes/no", "number", "other", "unanswerable")


def normalize_vizwiz_answer(text: str) -> str:
    """The official VizWiz normalisation of a prediction: VQA's, with VizWiz's contraction table."""
    text = _process_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_VIZWIZ_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz accuracy of one prediction, in [0, 1]: the normalised prediction against the annotators' answers
    as released, leave-one-out mean of min(matches/3, 1). A single answer leaves no other annotator: 0."""
    if len(answers) == 0:
        raise ValueError("vizwiz_accuracy needs at least one reference answer")
    return _leave_one_out_accuracy(normalize_vizwiz_answer(prediction), answers)


def vizwiz_accuracy_by_answer_type(accuracies: Sequence[float], answer_types: Sequence[str]) -> dict[str, float]:
    """Mean accuracy per answer type, {type: mean}, types in order of first appearance."""
    if len(accuracies) != len(answer_types):
        raise ValueError(f"accuracies ({len(accuracies)}) and answer_types ({len(answer_types)}) differ in length")
    groups: dict[str, list[float]] = {}
    for accuracy, answer_type in zip(accuracies, answer_types):
        groups.setdefault(answer_type, []).append(accuracy)
    return {answer_type: sum(values) / len(values) for answer_type, values in groups.items()}


def vizwiz_predicts_unanswerable(prediction: str) -> bool:
    """Whether a generated answer declares the question unanswerable (it normalises to "unanswerable")."""
    return normalize_vizwiz_answer(prediction) == UNANSWERABLE


def _average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """sklearn's average_precision_score for binary labels: sum over the distinct score thresholds, from the
    highest, of (recall_t - recall_previous) * precision_t. With no positive label, recall is 1 at every
    threshold and precision 0, so the sum is 0 (sklearn warns and returns the same)."""
    positives = sum(labels)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    average_precision, previous_recall = 0.0, 0.0
    true_positives = false_positives = 0
    for rank, i in enumerate(order):
        true_positives += labels[i]
        false_positives += 1 - labels[i]
        if rank + 1 < len(order) and scores[order[rank + 1]] == scores[i]:
            continue  # a threshold takes all tied scores at once
        recall = true_positives / positives if positives else 1.0
        precision = true_positives / (true_positives + false_positives)
        average_precision += (recall - previous_recall) * precision
        previous_recall = recall
    return average_precision


def vizwiz_unanswerability(answerable: Sequence[int], predicted_answerable: Sequence[float]) -> dict[str, float]:
    """{"average_precision", "f1_score"} of recognising unanswerable questions, in [0, 1].

    answerable: the annotations' `answerable` (1 or 0); predicted_answerable: the submission's answerability
    score in [0, 1] (for a generated answer: 0.0 when it says "unanswerable", else 1.0).
    """
    if len(answerable) != len(predicted_answerable):
        raise ValueError(f"answerable ({len(answerable)}) and predicted_answerable ({len(predicted_answerable)}) "
                         "differ in length")
    if len(answerable) == 0:
        raise ValueError("vizwiz_unanswerability needs at least one question")
    if any(label not in (0, 1) for label in answerable):
        raise ValueError("answerable must hold only 0 and 1")
    labels = [1 - int(label) for label in answerable]  # 1: unanswerable
    scores = [1.0 - float(score) for score in predicted_answerable]
    decisions = [score > 0.5 for score in scores]
    true_positives = sum(1 for label, decision in zip(labels, decisions) if label and decision)
    false_positives = sum(1 for label, decision in zip(labels, decisions) if not label and decision)
    false_negatives = sum(1 for label, decision in zip(labels, decisions) if label and not decision)
    denominator = 2 * true_positives + false_positives + false_negatives
    f1 = 2 * true_positives / denominator if denominator else 0.0  # sklearn's zero_division default: 0 (warns)
    return {"average_precision": _average_precision(labels, scores), "f1_score": f1}
