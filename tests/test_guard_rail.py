"""The methods' guard rail (``experiments/guard_rail.py``): every method's train-state keys and
first three losses, recomputed and compared with ``tests/data/guard_rail.json``, recorded
before the methods' redesign (issue 22). Keys and shapes must match exactly, every logged
metric to 1e-5 relative on a CPU kind that has its own record (the metrics depend on the
vector ISA: see the script's docstring); on another kind, step 1 only, to 1e-3, with a warning.

Slow tier (CI runs it): each method's benchmark variant, on 1 and on 8 devices.
Every variant (79 recorded cases, about half an hour on 2 cores): ``python experiments/guard_rail.py
--check``, run it when you change a method.
"""

import json
import os
import sys
import warnings

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
        # The CI machines seen so far; the AVX-512 one recorded 8 devices for 9 cases only.
        for kind, need in (("AuthenticAMD avx2", {"1", "8"}), ("AuthenticAMD avx512", {"1"})):
            steps = guard_rail.recorded_steps(RECORDED.get(case, {}), kind)
            assert need <= set(steps), f"{case} is not recorded on {kind}"


def _check(case: str, devices: tuple[int, ...]) -> None:
    assert case in RECORDED, (f"{case} is not recorded: run experiments/guard_rail.py "
                              "--representative --missing on the commit before issue 22")
    expected = RECORDED[case]
    keys = guard_rail.state_keys(case)
    assert keys == expected["keys"], (
        f"{case}: the train state's keys changed; added {sorted(set(keys) - set(expected['keys']))},"
        f" removed {sorted(set(expected['keys']) - set(keys))}")
    for n in devices:
        problems, how = guard_rail.check(expected, case, n)
        assert not problems, f"{case} on {n} device(s) ({how}): " + "; ".join(problems)
        if str(n) not in guard_rail.recorded_steps(expected):
            warnings.warn(f"{case} on {n} device(s) compared {how}; record this CPU kind with "
                          "experiments/guard_rail.py --missing on the commit before issue 22")


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


def test_cpu_kind_names_the_vendor_and_the_widest_vector_isa():
    def info(vendor, flags):
        return (f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\n"
                f"processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n")
    zen3 = "fpu sse sse2 avx fma avx2 bmi2 sha_ni"
    assert guard_rail.cpu_kind(info("AuthenticAMD", zen3)) == "AuthenticAMD avx2"
    assert guard_rail.cpu_kind(info("AuthenticAMD", zen3 + " avx512f avx512dq avx512bw "
                                    "avx512vl avx512_bf16")) == "AuthenticAMD avx512"
    # AVX-512F alone (Xeon Phi) lacks the BW/VL forms XLA's kernels use.
    assert guard_rail.cpu_kind(info("GenuineIntel", zen3 + " avx512f")) == "GenuineIntel avx2"
    assert guard_rail.cpu_kind(info("GenuineIntel", "fpu sse sse2 avx")) == "GenuineIntel avx"


def test_an_unrecorded_cpu_kind_compares_step_1_loosely(monkeypatch):
    """Another kind: step 1 within FOREIGN_RTOL of every recorded kind, later steps ignored;
    the recorded kind itself: every step at RTOL."""
    rec = {"steps": {"A avx512": {"1": [{"loss": 2.0}, {"loss": 1.5}]},
                     "B avx2": {"1": [{"loss": 2.0002}, {"loss": 1.6}]}}}
    run = [{"loss": 2.001}, {"loss": 1.0}]
    monkeypatch.setattr(guard_rail, "first_steps", lambda case, n: run)
    monkeypatch.setattr(guard_rail, "cpu_kind", lambda: "C arm64")
    problems, how = guard_rail.check(rec, "x", 1)
    assert problems == [] and "step 1 only" in how
    run[0] = {"loss": 2.01}  # 0.5% off at step 1: caught
    problems, _ = guard_rail.check(rec, "x", 1)
    assert len(problems) == 2 and problems[0].startswith("A avx512: step 1: loss")
    monkeypatch.setattr(guard_rail, "cpu_kind", lambda: "A avx512")
    run[:] = [{"loss": 2.0}, {"loss": 1.500075}]  # recorded kind: step 2 checked, 5e-5 off
    problems, how = guard_rail.check(rec, "x", 1)
    assert problems == ["step 2: loss = 1.500075, recorded 1.5"] and how == "A avx512, every step"
    assert guard_rail.check(rec, "x", 8)[0] == ["no CPU kind recorded 8 device(s)"]
