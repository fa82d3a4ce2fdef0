"""Pretraining phases: passes over the pretrain split in order, each with its own mix of question types.

Why. The tiny video base learns the direction of motion only when direction is asked 2-3 times as often as the
other types; learned from the start that way, it never learns which half of a clip a colour belongs to (it names
the start or the end colour of a clip whose colour changes at chance), and more epochs, a wider or deeper language
model, a finer M-RoPE time or continued training on an even mix do not undo it. Learned after the colours, the
direction leaves them intact (docs/study.md, "Bases"). So a base can be pretrained in phases:

    models.<name>.pretrain_phases: [{epochs: 2, question_weights: {direction: 0}},
                                    {epochs: 1, question_weights: {direction: 3}}]

A phase's pass lists each example of the split `w` times, `w` the weight of its question type (the manifest's
`category` up to the ":"; a type not named, or an example without a category, weighs 1). A fractional weight
adds one more copy with probability `w - floor(w)`, drawn per example from the phase's seed. A weight of 0 leaves
the type out of the phase; 3 asks it three times per pass, as if the split had been generated with it three times
as often (on the same clips). Each phase is one run of the training loop: its own AdamW state and its own
warm-up and learning-rate schedule, starting from the weights the previous phase left. A phase may set its own
`lr`, `lr_schedule` and `warmup_steps` (None: the stage's).

The CLI form (moir.train.pretrain --phases) is one string: phases separated by ";", each "EPOCHS", optionally
followed by ":TYPE=W,TYPE=W" and by "@lr=1e-3,lr_schedule=constant,warmup_steps=0" (`format_phases` /
`parse_phases`). Pure Python: the workflow plan imports it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

LR_SCHEDULES = ("constant", "cosine", "linear")  # moir.train.loop.LR_SCHEDULES (checked equal by the tests)
OVERRIDES = ("lr", "lr_schedule", "warmup_steps")  # loop settings a phase may set itself


@dataclass(frozen=True)
class Phase:
    """One pass schedule: `epochs` passes over the split with each question type repeated by its weight."""

    epochs: int
    question_weights: Mapping[str, float] = field(default_factory=dict)
    lr: float | None = None  # None: the stage's --lr
    lr_schedule: str | None = None  # None: the stage's --lr-schedule
    warmup_steps: int | None = None  # None: the stage's --warmup-steps

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"a pretraining phase needs epochs >= 1, got {self.epochs!r}")
        for kind, weight in self.question_weights.items():
            if not kind or any(mark in kind for mark in ":;,="):
                raise ValueError(f"question type {kind!r}: empty or contains one of ':;,='")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"question type {kind!r}: the weight must be a finite number >= 0, got {weight!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not math.isfinite(self.lr) or self.lr <= 0):
            raise ValueError(f"a phase's lr must be a finite number > 0, got {self.lr!r}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"a phase's lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.warmup_steps is not None and (isinstance(self.warmup_steps, bool)
                                              or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise ValueError(f"a phase's warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")

    def overrides(self) -> dict:
        """The loop settings this phase sets itself."""
        return {key: getattr(self, key) for key in OVERRIDES if getattr(self, key) is not None}

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "question_weights": dict(sorted(self.question_weights.items())),
                **self.overrides()}


def format_weights(weights: Mapping[str, float]) -> str:
    """{"shape": 3, "count": 1.5} -> "count=1.5,shape=3" (sorted): the CLI form of question-type weights."""
    return ",".join(f"{kind}={weight:g}" for kind, weight in sorted(weights.items()))


def parse_weights(text: str) -> dict[str, float]:
    """The inverse of `format_weights` ("" -> {}); ValueError naming the item that does not parse."""
    weights = {}
    for item in filter(None, (item.strip() for item in text.split(","))):
        kind, sep, value = (piece.strip() for piece in item.partition("="))
        try:
            weights[kind] = float(value)
        except ValueError:
            sep = ""
        if not sep or not kind:
            raise ValueError(f"expected TYPE=WEIGHT[,TYPE=WEIGHT...], got {item!r}")
    return weights


def format_phases(phases: Sequence[Phase]) -> str:
    """[Phase(2, {"direction": 0}), Phase(1, {"direction": 3})] -> "2:direction=0;1:direction=3"."""
    parts = []
    for phase in phases:
        weights = format_weights(phase.question_weights)
        overrides = ",".join(f"{key}={value:g}" if key == "lr" else f"{key}={value}"
                             for key, value in phase.overrides().items())
        parts.append(str(phase.epochs) + (f":{weights}" if weights else "") + (f"@{overrides}" if overrides else ""))
    return ";".join(parts)


def parse_phases(text: str) -> tuple[Phase, ...]:
    """The inverse of `format_phases`; ValueError naming the part that does not parse."""
    phases = []
    for part in text.split(";"):
        head, _, overrides_text = part.partition("@")
        epochs_text, _, weights_text = head.strip().partition(":")
        try:
            epochs = int(epochs_text)
        except ValueError:
            raise ValueError(f"phase {part!r}: expected EPOCHS[:TYPE=W,...], e.g. 2:direction=0") from None
        try:
            weights = parse_weights(weights_text)
        except ValueError as error:
            raise ValueError(f"phase {part!r}: {error}") from None
        overrides: dict = {}
        for item in filter(None, (item.strip() for item in overrides_text.split(","))):
            key, sep, value = (piece.strip() for piece in item.partition("="))
            if not sep or key not in OVERRIDES:
                raise ValueError(f"phase {part!r}: expected one of {', '.join(OVERRIDES)} =VALUE after @, got {item!r}")
            try:
                overrides[key] = float(value) if key == "lr" else int(value) if key == "warmup_steps" else value
            except ValueError:
                raise ValueError(f"phase {part!r}: {key} {value!r} is not a number") from None
        phases.append(Phase(epochs, weights, **overrides))
    if not phases:
        raise ValueError("no pretraining phase given")
    return tuple(phases)


def question_type(category: str | None) -> str | None:
    """"direction:hint-wrong" -> "direction"; None stays None."""
    return None if category is None else category.split(":", 1)[0]


def phase_indices(types: Sequence[str | None], weights: Mapping[str, float], seed: int) -> list[int]:
    """The split's indices for one pass of a phase: index i `floor(w)` times, plus once with probability
    `w - floor(w)`, where w = weights[types[i]] (1 for a type not named). In split order; the loop shuffles.

    ValueError when a weight names a type the split does not have (a typo would otherwise pass silently) or when
    no example is left."""
    present = set(types)
    unknown = sorted(set(weights) - present)
    if unknown:
        raise ValueError(f"question_weights name type(s) {unknown} that the pretraining data does not have; "
                         f"it has {sorted(kind for kind in present if kind is not None)}")
    rng = random.Random(seed)
    indices = []
    for index, kind in enumerate(types):
        weight = float(weights.get(kind, 1.0)) if kind is not None else 1.0
        copies = int(math.floor(weight))
        if weight > copies and rng.random() < weight - copies:
            copies += 1
        indices.extend([index] * copies)
    if not indices:
        raise ValueError(f"question_weights {dict(weights)} leave no pretraining example")
    return indices
