"""CO2e accounting: the paper's equations 1-2, the codecarbon path and its fallback."""
from __future__ import annotations

import sys
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdecomp.errors import RefdecompError
from refdecomp.scenarios import co2
from refdecomp.scenarios.co2 import Measurement, PowerFigures, co2e_lbs, energy_kwh, measure


class FakeClock:
    """A clock that advances by fixed steps, so durations are exact."""

    def __init__(self, *times: float):
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_equations_against_hand_computed_values():
    # 2 h at 50 W CPU + 10 W DRAM + 2 GPUs at 100 W: 1.58 * 2 * 260 / 1000 kWh
    assert energy_kwh(2.0, 50.0, 10.0, 2, 100.0) == pytest.approx(0.8216)
    assert co2e_lbs(0.8216) == pytest.approx(0.7838064)
    # the paper's setting: no GPU
    assert energy_kwh(0.5, 91.0, 12.0) == pytest.approx(1.58 * 0.5 * 103 / 1000)
    assert energy_kwh(1.0, 100.0, 0.0, pue=1.0) == pytest.approx(0.1)


@given(h=st.floats(0, 1e3), pc=st.floats(0, 1e3), pr=st.floats(0, 1e3),
       g=st.integers(0, 8), pg=st.floats(0, 1e3), k=st.floats(0.1, 10))
def test_energy_is_linear_in_time_and_power(h, pc, pr, g, pg, k):
    base = energy_kwh(h, pc, pr, g, pg)
    assert energy_kwh(h * k, pc, pr, g, pg) == pytest.approx(k * base, rel=1e-9, abs=1e-12)
    assert energy_kwh(h, pc * k, pr * k, g, pg * k) == pytest.approx(k * base, rel=1e-9,
                                                                      abs=1e-12)


def test_negative_figures_are_refused():
    with pytest.raises(RefdecompError, match="p_cpu"):
        energy_kwh(1.0, -1.0, 0.0)


def test_default_power_figures_are_the_documented_shares():
    p = PowerFigures.default(cores=4, memory_gb=32)
    assert p.p_cpu == pytest.approx(91.0)          # the paper's i7-7700K TDP over 4 cores
    assert p.p_dram == pytest.approx(12.0)         # 3 W per 8 GB
    assert p.n_gpus == 0 and p.pue == 1.58 and p.lbs_per_kwh == 0.954
    auto = PowerFigures.default()
    assert auto.p_cpu == pytest.approx(co2.usable_cores() * co2.CPU_WATTS_PER_CORE)
    assert auto.p_dram > 0


def test_measurement_report_with_formula_only():
    power = PowerFigures(p_cpu=40.0, p_dram=5.0, n_gpus=1, p_gpu=30.0)
    with Measurement("retrain", power=power, codecarbon=False,
                     clock=FakeClock(100.0, 100.0 + 1800.0)) as m:
        pass
    r = m.report
    assert r["task"] == "retrain" and r["time_s"] == 1800.0 and r["completed"]
    kwh = 1.58 * 0.5 * (40 + 5 + 30) / 1000
    assert r["formula"]["energy_kwh"] == pytest.approx(kwh)
    assert r["formula"]["co2e_lbs"] == pytest.approx(0.954 * kwh)
    assert r["formula"]["co2e_kg"] == pytest.approx(0.954 * kwh * 0.45359237)
    assert r["formula"]["source"] == ("formula(pc=40.00 W, pr=5.00 W, g=1, pg=30.00 W, "
                                      "pue=1.58, 0.954 lbs/kWh)")
    assert r["codecarbon"] is None and r["notes"] == []


def test_fallback_when_codecarbon_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # import raises ImportError
    with Measurement("reuse", power=PowerFigures(10.0, 1.0), clock=FakeClock(0.0, 36.0)) as m:
        pass
    assert m.report["codecarbon"] is None
    assert "not installed" in m.report["notes"][0]
    assert m.report["formula"]["energy_kwh"] == pytest.approx(1.58 * 0.01 * 11 / 1000)
    with pytest.raises(RefdecompError, match="codecarbon=True"):
        with Measurement("reuse", codecarbon=True):
            pass


def _fake_codecarbon(monkeypatch, *, fail_start=False):
    calls = {}
    module = types.ModuleType("codecarbon")
    module.__version__ = "9.9.9"

    class OfflineEmissionsTracker:
        def __init__(self, **kwargs):
            if fail_start:
                raise RuntimeError("no power sensors")
            calls["kwargs"] = kwargs

        def start(self):
            calls["started"] = True

        def stop(self):
            self.final_emissions_data = types.SimpleNamespace(energy_consumed=0.002)
            return 0.0008

    module.OfflineEmissionsTracker = OfflineEmissionsTracker
    monkeypatch.setitem(sys.modules, "codecarbon", module)
    return calls


def test_codecarbon_figures_are_reported_with_their_source(monkeypatch):
    calls = _fake_codecarbon(monkeypatch)
    with Measurement("train", power=PowerFigures(10.0, 1.0), country_iso_code="FRA",
                     clock=FakeClock(0.0, 3600.0)) as m:
        pass
    assert calls["started"] and calls["kwargs"]["country_iso_code"] == "FRA"
    cc = m.report["codecarbon"]
    assert cc["source"] == "codecarbon 9.9.9 (offline, country FRA)"
    assert cc["energy_kwh"] == 0.002 and cc["co2e_kg"] == 0.0008
    assert cc["co2e_lbs"] == pytest.approx(0.0008 / 0.45359237)
    # the formula's figures are still there, named as such
    assert m.report["formula"]["source"].startswith("formula(pc=10.00 W")
    assert m.report["formula"]["energy_kwh"] == pytest.approx(1.58 * 11 / 1000)


def test_codecarbon_that_cannot_measure_falls_back(monkeypatch):
    _fake_codecarbon(monkeypatch, fail_start=True)
    with Measurement("train", power=PowerFigures(10.0, 1.0)) as m:
        pass
    assert m.report["codecarbon"] is None
    assert "could not start: no power sensors" in m.report["notes"][0]


def test_measure_returns_result_and_times_the_call():
    result, report = measure(lambda a, b: a + b, 2, 3, task="sum",
                             power=PowerFigures(1.0, 0.0), codecarbon=False,
                             clock=FakeClock(5.0, 7.5))
    assert result == 5 and report["task"] == "sum" and report["time_s"] == 2.5


def test_a_failing_task_is_still_reported():
    m = Measurement("boom", power=PowerFigures(1.0, 0.0), codecarbon=False)
    with pytest.raises(ZeroDivisionError), m:
        1 / 0  # noqa: B018  (the failing task)
    assert m.report["completed"] is False and m.report["time_s"] >= 0
