"""Traces: formats, streaming readers, step building, statistics and the synthetic generator."""

from recmgd.trace.steps import Steps, as_steps, build_steps, dedup_steps

__all__ = ["Steps", "as_steps", "build_steps", "dedup_steps"]
