"""Does a model read the media? Accuracy per question type when the text hint is right and when it is wrong.

The synthetic benchmark (moir/data/synthetic.py) gives every question a text hint that states an answer, right or
wrong, and records both in the manifest's `category` ("colour:hint-right", "direction:hint-wrong", ...). A model
that reads the image or video answers hint-wrong questions as well as hint-right ones; a model that follows the
text answers hint-wrong questions wrong. `base_reading` tabulates both accuracies per question type and answer
protocol (multiple choice and short answer are different skills: naming what one sees, and mapping it to an option
letter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

HINT_OUTCOMES = ("hint-right", "hint-wrong")


def split_category(category: str) -> tuple[str, str]:
    """"colour:hint-wrong" -> ("colour", "hint-wrong"); ValueError for a category without a hint outcome."""
    question_type, _, outcome = category.rpartition(":")
    if not question_type or outcome not in HINT_OUTCOMES:
        raise ValueError(f"category {category!r} is not '<question type>:hint-right' or '<question type>:hint-wrong'")
    return question_type, outcome


def base_reading(predictions: Iterable[Mapping], *, by_protocol: bool = True) -> list[dict]:
    """Accuracy with the hint right and with it wrong, per question type (and protocol), in percent.

    predictions: one mapping per evaluated question with `category` ("<type>:hint-right|wrong", the manifest's),
    `correct` (bool) and, when `by_protocol`, `protocol` ("multiple_choice", "short_answer", ...: the evaluation's).
    Returns one row per question type (and protocol), sorted: question_type, protocol ("all" unless
    `by_protocol`), n, n_hint_right, acc_hint_right, n_hint_wrong, acc_hint_wrong (None when there is no question
    of that outcome). A row with another category raises ValueError naming its `id` (when it has one).
    """
    groups: dict[tuple[str, str], dict[str, list[bool]]] = defaultdict(lambda: {o: [] for o in HINT_OUTCOMES})
    for index, row in enumerate(predictions):
        try:
            question_type, outcome = split_category(row["category"] or "")
        except ValueError as error:
            raise ValueError(f"prediction {row.get('id', index)}: {error}") from None
        protocol = row["protocol"] if by_protocol else "all"
        groups[(question_type, protocol)][outcome].append(bool(row["correct"]))

    def percent(values: list[bool]) -> float | None:
        return 100.0 * sum(values) / len(values) if values else None

    return [
        {
            "question_type": question_type,
            "protocol": protocol,
            "n": len(outcomes["hint-right"]) + len(outcomes["hint-wrong"]),
            "n_hint_right": len(outcomes["hint-right"]),
            "acc_hint_right": percent(outcomes["hint-right"]),
            "n_hint_wrong": len(outcomes["hint-wrong"]),
            "acc_hint_wrong": percent(outcomes["hint-wrong"]),
        }
        for (question_type, protocol), outcomes in sorted(groups.items())
    ]
