"""The simulator: drives policies through a trace under the protocol of docs/ARCHITECTURE.md."""

from recmgd.sim.driver import Counters, Driver, drive
from recmgd.sim.lookahead import BeladyWindow, LookaheadCounters, drive_lookahead
from recmgd.sim.results import SimResult, format_table
from recmgd.sim.runner import DEFAULT_FRACTIONS, capacity_for, simulate

__all__ = ["DEFAULT_FRACTIONS", "BeladyWindow", "Counters", "Driver", "LookaheadCounters", "SimResult",
           "capacity_for", "drive", "drive_lookahead", "format_table", "simulate"]
