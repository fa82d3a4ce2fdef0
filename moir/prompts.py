"""Prompt text and target answers, one protocol per benchmark, shared by training and evaluation.

The text built here is the user's turn without media placeholders: each model wrapper places the image or
video placeholder and applies its family's chat template. Training and evaluation call the same functions, so
a model is evaluated with exactly the prompt it was trained on.

Protocols (the benchmarks' reference prompts):
- multiple choice (ScienceQA, the synthetic benchmark's choice questions): "Context: ..." when there is a hint,
  the question, the options as "A. ...", and "Answer with the option's letter from the given choices directly.";
  the target is the letter.
- VizWiz: the question, then "When the provided information is insufficient, respond with 'Unanswerable'.
  Answer the question using a single word or phrase."; the target is the annotators' most common answer.
- short answer (the synthetic benchmark's open questions): the question and "Answer the question using a single
  word or phrase."
- open-ended (MMBench-Video): the question as it is; the target is the reference answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MULTIPLE_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
VIZWIZ_INSTRUCTION = (
    "When the provided information is insufficient, respond with 'Unanswerable'.\n"
    "Answer the question using a single word or phrase."
)
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
OPEN_ENDED_DATASETS = frozenset({"mmbench_video"})


def protocol(row: Mapping) -> str:
    """Which prompt protocol a manifest row follows: multiple_choice, vizwiz, open_ended or short_answer."""
    if row["choices"]:
        return "multiple_choice"
    if row["dataset"] == "vizwiz":
        return "vizwiz"
    if row["dataset"] in OPEN_ENDED_DATASETS:
        return "open_ended"
    return "short_answer"


def build_prompt(row: Mapping, *, transcript: str | None = None) -> str:
    """The user's text for one manifest row (see the module docstring); `transcript` adds the audio as text."""
    lines = []
    if row["hint"]:
        lines.append(f"Context: {row['hint']}")
    if transcript:
        lines.append(f"Audio transcript: {transcript}")
    lines.append(row["question"])
    kind = protocol(row)
    if kind == "multiple_choice":
        if len(row["choices"]) > len(OPTION_LETTERS):
            raise ValueError(f"example {row['id']}: {len(row['choices'])} choices, at most {len(OPTION_LETTERS)}")
        lines.extend(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(row["choices"]))
        lines.append(MULTIPLE_CHOICE_INSTRUCTION)
    elif kind == "vizwiz":
        lines.append(VIZWIZ_INSTRUCTION)
    elif kind == "short_answer":
        lines.append(SHORT_ANSWER_INSTRUCTION)
    return "\n".join(lines)


def target_answer(row: Mapping) -> str:
    """The text a model is trained to produce for one manifest row.

    Multiple choice: the option letter. Otherwise the most common reference answer (ties: the first seen).
    """
    if row["choices"]:
        if row["answer_index"] is None:
            raise ValueError(f"example {row['id']}: multiple-choice row without answer_index")
        return OPTION_LETTERS[row["answer_index"]]
    if not row["answers"]:
        raise ValueError(f"example {row['id']}: no reference answer to train on (field 'answers' is empty)")
    counts = Counter(answer.strip() for answer in row["answers"])
    return max(counts, key=lambda answer: counts[answer])  # max keeps the first of equal counts
