"""Energy and CO2e of a piece of work (paper Section 4.1, equations 1 and 2).

    p_t  = PUE * t * (p_c + p_r + g * p_g) / 1000      kWh; t in hours, powers in W, PUE = 1.58
    CO2e = 0.954 * p_t                                  lbs (US average lbs CO2e per kWh)

`p_c`, `p_r`, `p_g` are the average CPU, DRAM and per-GPU power and `g` the number of GPUs. The
paper measured them with Intel Power Gadget; here they are stated figures (`PowerFigures`):
by default the TDP share of the cores used and a DRAM figure per GB, both overridable.

Where `codecarbon` is installed, `Measurement` also runs its `OfflineEmissionsTracker`
(no network; the carbon intensity of `country_iso_code`) and reports its figures next to the
formula's. Every figure in a report names its source ("formula(...)" or "codecarbon ...").
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import RefdecompError

#: Power usage effectiveness of the data centre (the paper's and Strubell et al.'s value).
PUE = 1.58
#: lbs of CO2e per kWh (US average used by the paper and Strubell et al.).
LBS_CO2E_PER_KWH = 0.954
KG_PER_LB = 0.45359237
#: Default CPU power per core used: the paper's machine, a 4.2 GHz quad-core Core i7
#: (i7-7700K, TDP 91 W), i.e. 91 W / 4 cores.
CPU_WATTS_PER_CORE = 91.0 / 4
#: Default DRAM power per GB of memory (3 W per 8 GB, the figure codecarbon also uses).
DRAM_WATTS_PER_GB = 3.0 / 8


def energy_kwh(hours: float, p_cpu: float, p_dram: float, n_gpus: float = 0,
               p_gpu: float = 0.0, pue: float = PUE) -> float:
    """Equation 1: total energy in kWh of `hours` of work at the given average powers (W)."""
    for name, value in (("hours", hours), ("p_cpu", p_cpu), ("p_dram", p_dram),
                        ("n_gpus", n_gpus), ("p_gpu", p_gpu), ("pue", pue)):
        if value < 0:
            raise RefdecompError(f"energy_kwh: {name} must be >= 0, got {value}")
    return pue * hours * (p_cpu + p_dram + n_gpus * p_gpu) / 1000.0


def co2e_lbs(kwh: float, lbs_per_kwh: float = LBS_CO2E_PER_KWH) -> float:
    """Equation 2: CO2e in lbs of `kwh` of energy."""
    return lbs_per_kwh * kwh


@dataclass(frozen=True)
class PowerFigures:
    """The stated average powers of equation 1 (W) and the constants of both equations."""

    p_cpu: float
    p_dram: float
    n_gpus: int = 0
    p_gpu: float = 0.0
    pue: float = PUE
    lbs_per_kwh: float = LBS_CO2E_PER_KWH

    @classmethod
    def default(cls, cores: int | None = None, memory_gb: float | None = None,
                cpu_watts_per_core: float = CPU_WATTS_PER_CORE,
                dram_watts_per_gb: float = DRAM_WATTS_PER_GB, **others: Any) -> PowerFigures:
        """TDP share of the `cores` used (default: the cores this process may run on) and DRAM
        power of `memory_gb` (default: this process's peak resident memory)."""
        cores = usable_cores() if cores is None else cores
        memory_gb = peak_memory_gb() if memory_gb is None else memory_gb
        return cls(p_cpu=cores * cpu_watts_per_core, p_dram=memory_gb * dram_watts_per_gb,
                   **others)

    def source(self) -> str:
        return (f"formula(pc={self.p_cpu:.2f} W, pr={self.p_dram:.2f} W, g={self.n_gpus}, "
                f"pg={self.p_gpu:.2f} W, pue={self.pue}, {self.lbs_per_kwh} lbs/kWh)")

    def report(self, seconds: float) -> dict[str, Any]:
        kwh = energy_kwh(seconds / 3600.0, self.p_cpu, self.p_dram, self.n_gpus, self.p_gpu,
                         self.pue)
        lbs = co2e_lbs(kwh, self.lbs_per_kwh)
        return {"source": self.source(), "energy_kwh": kwh, "co2e_lbs": lbs,
                "co2e_kg": lbs * KG_PER_LB, "power_w": asdict(self)}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def peak_memory_gb() -> float:
    """Peak resident memory of this process in GB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows: no figure, state the memory explicitly instead
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 30) if sys.platform == "darwin" else rss / (1 << 20)


class Measurement:
    """Time a piece of work and report its time, energy and CO2e.

    >>> with Measurement("retrain") as m:      # doctest: +SKIP
    ...     train()
    >>> m.report["formula"]["co2e_lbs"]        # doctest: +SKIP

    `power` gives the formula's figures (default `PowerFigures.default()`, taken when the work
    ends so the peak memory includes it). `codecarbon`: None runs codecarbon's offline tracker
    when it is installed and can measure, True requires it, False never runs it.
    """

    def __init__(self, task: str = "work", *, power: PowerFigures | None = None,
                 codecarbon: bool | None = None, country_iso_code: str = "USA",
                 clock: Callable[[], float] = time.perf_counter):
        self.task = task
        self.power = power
        self.use_codecarbon = codecarbon
        self.country_iso_code = country_iso_code
        self.clock = clock
        self.report: dict[str, Any] | None = None
        self._tracker = None
        self._notes: list[str] = []
        self._start = 0.0

    def __enter__(self) -> Measurement:
        self._notes = []
        self._tracker = self._start_codecarbon() if self.use_codecarbon is not False else None
        self._start = self.clock()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        seconds = self.clock() - self._start
        tracked = self._stop_codecarbon()
        power = self.power or PowerFigures.default()
        self.report = {
            "task": self.task,
            "time_s": seconds,
            "formula": power.report(seconds),
            "codecarbon": tracked,
            "notes": list(self._notes),
            "completed": exc_type is None,
        }

    # -- codecarbon ---------------------------------------------------------------------
    def _start_codecarbon(self):
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            return self._unavailable("codecarbon is not installed (pip install codecarbon)")
        try:
            tracker = OfflineEmissionsTracker(country_iso_code=self.country_iso_code,
                                              project_name=self.task, save_to_file=False,
                                              log_level="error")
            tracker.start()
        except Exception as exc:  # codecarbon could not measure on this machine
            return self._unavailable(f"codecarbon could not start: {exc}")
        return tracker

    def _unavailable(self, why: str) -> None:
        if self.use_codecarbon:
            raise RefdecompError(f"Measurement({self.task!r}, codecarbon=True): {why}")
        self._notes.append(f"{why}; figures come from the formula only")
        return None

    def _stop_codecarbon(self) -> dict[str, Any] | None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return None
        try:
            kg = float(tracker.stop())
            data = getattr(tracker, "final_emissions_data", None)
            kwh = float(data.energy_consumed) if data is not None else None
        except Exception as exc:
            self._notes.append(f"codecarbon failed while measuring: {exc}; "
                               "figures come from the formula only")
            return None
        import codecarbon

        version = getattr(codecarbon, "__version__", "?")
        return {"source": f"codecarbon {version} (offline, country {self.country_iso_code})",
                "energy_kwh": kwh, "co2e_kg": kg, "co2e_lbs": kg / KG_PER_LB}


def measure(fn: Callable[..., Any], *args: Any, task: str | None = None,
            **options: Any) -> tuple[Any, dict[str, Any]]:
    """Run `fn(*args)` inside a `Measurement`; return (its result, the report).

    `options` go to `Measurement` (power, codecarbon, country_iso_code)."""
    with Measurement(task or getattr(fn, "__name__", "work"), **options) as m:
        result = fn(*args)
    return result, m.report
