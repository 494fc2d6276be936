"""Traces: formats, streaming readers, step building, statistics and the synthetic generator."""

from recmgd.trace.io import FORMATS, detect_format, open_trace, save_trace
from recmgd.trace.model import Trace
from recmgd.trace.steps import Steps, as_steps, build_steps, dedup_steps

__all__ = ["FORMATS", "Steps", "Trace", "as_steps", "build_steps", "dedup_steps", "detect_format",
           "open_trace", "save_trace"]
