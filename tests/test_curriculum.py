"""moir.train.curriculum: pretraining phases, their CLI form and the pass each one makes over the split."""

from __future__ import annotations

import pytest

from moir.train import loop
from moir.train.curriculum import (
    LR_SCHEDULES,
    Phase,
    format_phases,
    format_weights,
    parse_phases,
    parse_weights,
    phase_indices,
    question_type,
)


def test_the_cli_form_round_trips():
    phases = (Phase(2, {"direction": 0.0}), Phase(1, {"direction": 3.0, "colour change": 0.5}), Phase(4))
    text = format_phases(phases)
    assert text == "2:direction=0;1:colour change=0.5,direction=3;4"
    assert parse_phases(text) == phases
    assert parse_phases(" 2 : direction = 0 ; 1") == (Phase(2, {"direction": 0.0}), Phase(1))
    own = (Phase(3, {"direction": 0.0}, lr=1e-3, lr_schedule="constant", warmup_steps=0), Phase(1, lr=2e-4))
    assert format_phases(own) == "3:direction=0@lr=0.001,lr_schedule=constant,warmup_steps=0;1@lr=0.0002"
    assert parse_phases(format_phases(own)) == own
    assert own[0].overrides() == {"lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 0}
    assert Phase(2).overrides() == {} and Phase(2).to_dict() == {"epochs": 2, "question_weights": {}}
    assert LR_SCHEDULES == loop.LR_SCHEDULES


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "expected EPOCHS"), ("two", "expected EPOCHS"), ("0", "epochs >= 1"), ("1:direction", "TYPE=WEIGHT"),
     ("1:direction=-1", ">= 0"), ("1:direction=nan", "finite"), ("1:=2", "TYPE=WEIGHT"), ("1;;1", "expected EPOCHS"),
     ("1@rate=1", "one of lr, lr_schedule, warmup_steps"), ("1@lr=fast", "not a number"), ("1@lr=0", "> 0"),
     ("1@lr_schedule=step", "constant, cosine, linear"), ("1@warmup_steps=-2", ">= 0")],
)
def test_bad_phases_are_refused_with_the_part_named(text, expected):
    with pytest.raises(ValueError, match=expected):
        parse_phases(text)


def test_question_weights_round_trip_and_bad_items_are_named():
    assert format_weights({"shape": 3, "count": 1.5}) == "count=1.5,shape=3"
    assert parse_weights("count=1.5, shape=3") == {"count": 1.5, "shape": 3.0} and parse_weights("") == {}
    for bad in ("shape", "shape=big", "=3"):
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            parse_weights(bad)


def test_a_pass_repeats_each_example_by_its_types_weight():
    types = ["direction", "start colour", "direction", None, "colour change"]
    assert phase_indices(types, {}, seed=0) == [0, 1, 2, 3, 4]
    assert phase_indices(types, {"direction": 0}, seed=0) == [1, 3, 4]
    assert phase_indices(types, {"direction": 3, "start colour": 0}, seed=0) == [0, 0, 0, 2, 2, 2, 3, 4]


def test_fractional_weights_add_a_copy_with_the_fraction_as_probability():
    types = ["a"] * 4000 + ["b"] * 4000
    indices = phase_indices(types, {"a": 1.25, "b": 0.5}, seed=3)
    a = sum(1 for i in indices if i < 4000)
    b = len(indices) - a
    assert 4000 * 1.25 - 150 < a < 4000 * 1.25 + 150 and 2000 - 150 < b < 2000 + 150
    assert all(indices.count(i) in (1, 2) for i in range(0, 4000, 97))
    assert indices == phase_indices(types, {"a": 1.25, "b": 0.5}, seed=3)  # seeded
    assert indices != phase_indices(types, {"a": 1.25, "b": 0.5}, seed=4)


def test_weights_must_name_types_the_data_has_and_leave_something():
    with pytest.raises(ValueError, match=r"\['color'\].*it has \['colour'\]"):
        phase_indices(["colour", None], {"color": 2}, seed=0)
    with pytest.raises(ValueError, match="leave no pretraining example"):
        phase_indices(["colour", "colour"], {"colour": 0}, seed=0)


def test_question_type_is_the_category_before_the_colon():
    assert question_type("start colour:hint-wrong") == "start colour"
    assert question_type("count") == "count" and question_type(None) is None
