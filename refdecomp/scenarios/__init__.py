"""What the modules are for: reuse, replacement and update scenarios, and their CO2e cost.

`refdecomp.scenarios.co2` times a piece of work and reports its energy and CO2e with the
paper's equations (and codecarbon where installed).
"""
from __future__ import annotations

from .co2 import Measurement, PowerFigures, co2e_lbs, energy_kwh, measure

__all__ = ["Measurement", "PowerFigures", "co2e_lbs", "energy_kwh", "measure"]
