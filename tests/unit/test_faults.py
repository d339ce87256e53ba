"""Fault points: inert unless armed, fire as many times as armed, refuse a malformed spec."""

from __future__ import annotations

import pytest

from shared import faults


def test_an_armed_point_raises_as_often_as_armed_and_others_stay_inert():
    faults.arm("a.point=raise*2, other=exit")
    try:
        for _ in range(2):
            with pytest.raises(faults.InjectedFault, match="a.point"):
                faults.point("a.point")
        faults.point("a.point")  # spent
        faults.point("not.armed")
    finally:
        faults.arm("")
    faults.point("other")  # disarmed: no exit


@pytest.mark.parametrize("spec", ["nope", "p=explode", "p=raise*x", "=exit"])
def test_a_malformed_spec_is_refused(spec):
    with pytest.raises(ValueError, match="BATON_FAULTS"):
        faults.parse(spec)
