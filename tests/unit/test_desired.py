"""The one rule both modules apply desired properties by (`edgelink.desired`)."""

from __future__ import annotations

import dataclasses

import pytest
from edgelink.desired import apply_fields, flag, probability, whole_number


@dataclasses.dataclass(frozen=True)
class Knobs:
    level: float = 0.5
    count: int = 1
    on: bool = True


FIELDS = {"level": ("level", probability), "count": ("count", whole_number), "on": ("on", flag)}


def test_valid_keys_apply_wrong_ones_keep_their_value_and_say_why() -> None:
    knobs, errors = apply_fields(
        Knobs(), {"$version": 7, "level": 0.9, "count": -2, "on": "yes", "colour": 1}, FIELDS
    )
    assert knobs == Knobs(level=0.9)
    assert errors == {
        "count": "must be a whole number, 0 or more (got -2)",
        "on": 'must be true or false (got "yes")',
        "colour": "unknown property",
    }


@pytest.mark.parametrize("value", [True, 1.5, -0.1, "0.5", None])
def test_a_probability_is_a_number_from_0_to_1_and_never_a_boolean(value: object) -> None:
    with pytest.raises(ValueError, match="from 0 to 1"):
        probability(value)
