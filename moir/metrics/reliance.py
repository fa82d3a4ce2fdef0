"""Ground-truth text reliance on datasets whose questions carry a hint that is right or wrong (the synthetic
benchmarks, `moir.data.synthetic`): accuracy when the hint is right, when it is wrong, and the hint-follow rate,
the share of hint-wrong questions answered with the hinted (wrong) answer. A model that reads the media scores
the same with either hint and follows no wrong hint; a model that reads the hint scores 100 and 0 and follows
every wrong hint.

What the manifest says (moir.data.synthetic): `category` is "<question type>:hint-right" or
"<question type>:hint-wrong", and the hint ends with the answer it states ("A friend says the answer is red."; for
a multiple-choice question the option's text, or its letter).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from moir.metrics.accuracy import normalize_answer, parse_option_letter
from moir.prompts import OPTION_LETTERS

HINT_RIGHT, HINT_WRONG = "hint-right", "hint-wrong"


def hint_label(category: str) -> bool | None:
    """True for a hint-right question, False for a hint-wrong one, None for a question without a labelled hint."""
    label = category.rsplit(":", 1)[-1] if category else ""
    return True if label == HINT_RIGHT else False if label == HINT_WRONG else None


def hinted_answer(hint: str) -> str:
    """The answer a synthetic hint states: its last word ("The caption says red." -> "red")."""
    words = re.findall(r"[A-Za-z0-9]+", hint)
    if not words:
        raise ValueError(f"hint {hint!r} states no answer")
    return words[-1]


def follows_hint(choices: Sequence[str], prediction: str, stated: str) -> bool:
    """Whether `prediction` gives the hinted answer `stated`: for a multiple-choice question (`choices` non-empty)
    the option its parsed letter names is the stated option (stated as its text, or as its letter); otherwise the
    normalised texts are equal."""
    if choices:
        index = parse_option_letter(prediction, len(choices))
        if index is None:
            return False
        if stated in OPTION_LETTERS[:len(choices)]:
            return OPTION_LETTERS[index] == stated
        return normalize_answer(choices[index]) == normalize_answer(stated)
    return normalize_answer(prediction) == normalize_answer(stated)


def _percent(values: list[bool]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def hint_reliance(hint_right: Sequence[bool | None], correct: Sequence[bool], followed: Sequence[bool]) -> dict:
    """acc_hint_right, acc_hint_wrong, hint_follow (percent; None where no question of the kind) and their counts.

    Per question: whether its hint is right (None: no labelled hint, left out), whether the answer is correct, and
    whether it gives the hinted answer (read on hint-wrong questions only)."""
    if not len(hint_right) == len(correct) == len(followed):
        raise ValueError(f"hint_reliance: {len(hint_right)}, {len(correct)} and {len(followed)} values given; "
                         "one per question expected")
    right = [c for h, c in zip(hint_right, correct) if h is True]
    wrong = [(c, f) for h, c, f in zip(hint_right, correct, followed) if h is False]
    return {
        "acc_hint_right": _percent(right),
        "acc_hint_wrong": _percent([c for c, _ in wrong]),
        "hint_follow": _percent([f for _, f in wrong]),
        "n_hint_right": len(right),
        "n_hint_wrong": len(wrong),
    }
