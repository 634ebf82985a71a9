"""The methods' guard rail (``experiments/guard_rail.py``): every method's train-state keys and
first three losses, recomputed and compared with ``tests/data/guard_rail.json``, recorded
before the methods' redesign (issue 22). Keys and shapes must match exactly, every logged
metric to 1e-5 relative.

Slow tier (CI runs it): each method's benchmark variant, on 1 and on 8 devices.
Every variant (79 recorded cases, about half an hour on 2 cores): ``python experiments/guard_rail.py
--check``, run it when you change a method.
"""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import guard_rail  # noqa: E402

with open(guard_rail.DATA) as f:
    RECORDED = json.load(f)

REPRESENTATIVE = sorted(guard_rail.REPRESENTATIVE.values())


def test_the_recorded_cases_are_known_and_the_representative_ones_recorded():
    assert set(RECORDED) <= set(guard_rail.cases()), "a recorded case no longer exists"
    for case in REPRESENTATIVE:
        assert "steps_1_devices" in RECORDED.get(case, {}), f"{case} is not recorded"


def _check(case: str, devices: tuple[int, ...]) -> None:
    if case not in RECORDED:
        pytest.skip(f"{case} is not recorded yet: run experiments/guard_rail.py --missing on "
                    "the commit that added it (the behaviour before issue 22's redesign)")
    expected = RECORDED[case]
    devices = tuple(n for n in devices if f"steps_{n}_devices" in expected)
    keys = guard_rail.state_keys(case)
    assert keys == expected["keys"], (
        f"{case}: the train state's keys changed; added {sorted(set(keys) - set(expected['keys']))},"
        f" removed {sorted(set(expected['keys']) - set(keys))}")
    for n in devices:
        problems = guard_rail.compare_metrics(expected[f"steps_{n}_devices"],
                                              guard_rail.first_steps(case, n))
        assert not problems, f"{case} on {n} device(s): " + "; ".join(problems)


@pytest.mark.slow  # 15 train-step compilations: about 1.5 min cold on 2 cores
@pytest.mark.parametrize("case", REPRESENTATIVE)
def test_representative_case(case):
    _check(case, (1,))


@pytest.mark.slow
@pytest.mark.parametrize("case", REPRESENTATIVE)
def test_representative_case_8_devices(case):
    _check(case, (8,))


def test_compare_metrics_reports_a_changed_value():
    """The comparison itself: equal within 1e-5 relative passes, a larger change fails."""
    rec = [{"loss": 2.0, "lr": 0.1}]
    assert guard_rail.compare_metrics(rec, [{"loss": 2.0 * (1 + 5e-6), "lr": 0.1}]) == []
    assert guard_rail.compare_metrics(rec, [{"loss": 2.0 * (1 + 5e-5), "lr": 0.1}])
    assert guard_rail.compare_metrics(rec, [{"loss": 2.0}])  # a metric went missing
