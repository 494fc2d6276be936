"""The simulator: drives policies through a trace under the protocol of DESIGN.md."""

from recmgd.sim.driver import Counters, Driver, drive
from recmgd.sim.results import SimResult, format_table
from recmgd.sim.runner import DEFAULT_FRACTIONS, capacity_for, simulate

__all__ = ["DEFAULT_FRACTIONS", "Counters", "Driver", "SimResult", "capacity_for", "drive", "format_table",
           "simulate"]
