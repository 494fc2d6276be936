"""The simulator: a trace, policies and fractions in; one SimResult per (policy, fraction) out.

Protocol (docs/ARCHITECTURE.md, "The simulator's protocol"): steps of ``batch`` samples, deduplicated;
capacity = fraction x unique rows of the trace; every policy warms on the first half of the steps and is
scored on the second half (learned policies are fit on the first half first); ``floor`` counts scored lookups
of rows never seen before; ``bound`` is the sum over scored steps of max(rows never seen before, rows -
capacity), below which no policy can go, prefetching or not (a step's rows beyond the capacity cannot all be
resident); and ``gap_closed`` compares with LRU at the same capacity (without lookahead).

Lookahead (``lookahead`` > 0, recmgd.sim.lookahead): every policy also sees the next L steps' rows,
which the driver fills ahead within ``budget`` rows a step; results are named ``POLICY+LL`` (``lru+L2``).
``belady`` (the reference for lookahead: Belady's order with the same window and budget) is a name
only the simulator knows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from recmgd import policy as policy_registry
from recmgd.keys import capacity_for
from recmgd.policies.native import IdMap, NativePolicy
from recmgd.sim.driver import Counters, drive, drive_stream
from recmgd.sim.lookahead import REFERENCE, BeladyWindow, drive_lookahead
from recmgd.sim.results import SimResult
from recmgd.trace.model import Trace
from recmgd.trace.steps import Steps

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.05, 0.1, 0.2)
DEFAULT_ROW_BYTES = 256


def unique_rows(steps: Steps) -> int:
    """Distinct keys in the steps."""
    return int(np.unique(steps.keys[steps.offsets[0]:steps.offsets[-1]]).shape[0])


def policy_names() -> list[str]:
    """The policies the simulator runs: the registry's and the lookahead reference (``belady``)."""
    return [*policy_registry.available(), REFERENCE]


def check_policies(names: Sequence[str]) -> None:
    """ValueError naming the unknown policies and listing the known ones."""
    bad = policy_registry.unknown([n for n in names if n != REFERENCE])
    if bad:
        known = policy_names()
        raise ValueError(f"unknown polic{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)} "
                         f"(known: {', '.join(known)})")


def count_unique(trace: Trace, chunk: int = 1 << 22) -> int:
    """Distinct keys of a trace, streaming it through a C id map (memory linear in unique rows)."""
    idmap = IdMap()
    for keys in trace.iter_chunks(chunk):
        idmap.map(keys)
    return len(idmap)


def simulate(trace: Trace, policies: Sequence[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
             batch: int = 16, delay: int = 1, row_bytes: int = DEFAULT_ROW_BYTES,
             options: dict[str, Any] | None = None, path: str = "auto",
             steps: Steps | None = None, stream: bool | None = None, lookahead: Sequence[int] = (0,),
             budget: int | None = None) -> list[SimResult]:
    """Run every policy at every fraction (and lookahead) on ``trace``; results in (fraction, lookahead,
    policy) order.

    ``budget``: rows a step the lookahead driver may fill ahead (default: the ``prefetch_budget``
    option, else 16); used only with a lookahead > 0.

    ``stream`` (default: on for the native path) drives policies that need neither training nor the
    future chunk by chunk from the (memory-mapped) trace, so memory stays linear in unique rows; the
    others get the whole list of steps, built once.
    """
    check_policies(policies)
    options = dict(options or {})
    if any(L < 0 for L in lookahead):
        raise ValueError(f"lookahead must be >= 0, got {list(lookahead)}")
    if budget is None:
        budget = int(options.get("prefetch_budget", 16))  # type: ignore[call-overload]
    if stream is None:
        stream = path != "python" and steps is None
    n_steps = trace.n_steps(batch) if steps is None else len(steps)
    warm = n_steps // 2
    uniq = count_unique(trace) if steps is None else unique_rows(steps)
    name = os.path.basename(trace.path) or "trace"
    log.info("%s: %d lookups, %d steps of %d samples, %d unique rows", name, trace.n_lookups, n_steps,
             batch, uniq)
    cache: dict[str, Steps] = {}
    # the models a learned policy trained itself, by (policy, capacity): its runs at the other
    # lookaheads take them rather than train the same models again
    trained: dict[tuple[str, int], Any] = {}

    def all_steps() -> Steps:
        if steps is not None:
            return steps
        if "s" not in cache:
            cache["s"] = trace.steps(batch)
        return cache["s"]

    def run(pname: str, cap: int, L: int = 0) -> tuple[Counters, dict[str, int]]:
        """The run's counters, and what the policy counted of itself (Policy.counters)."""
        pol = BeladyWindow() if pname == REFERENCE else policy_registry.create(pname, **options)
        learned = getattr(pol, "trained", None) is None and hasattr(pol, "use_trained")
        if learned and (pname, cap) in trained:
            pol.use_trained(trained[pname, cap])  # type: ignore[attr-defined]
        if L or pname == REFERENCE:
            if delay != 1:
                raise ValueError("lookahead runs with delay 1 only")
            c = drive_lookahead(pol, all_steps(), cap, warm, lookahead=L, budget=budget, path=path)
        elif stream and isinstance(pol, NativePolicy) and not pol.needs_future and not pol.learned:
            c = drive_stream(pol, trace, batch, cap, warm, delay=delay)
        else:
            c = drive(pol, all_steps(), cap, warm, delay=delay, path=path)
        if learned and L != lookahead[-1]:  # (the last lookahead's run has none after it)
            trained[pname, cap] = pol.trained  # type: ignore[attr-defined]
        return c, pol.counters()

    results: list[SimResult] = []
    for fraction in fractions:
        cap = capacity_for(fraction, uniq)
        trained.clear()  # (only this capacity's runs take them)
        lru_on_demand: int | None = None
        batch_results = []
        for L in lookahead:
            for pname in policies:
                c, own = run(pname, cap, L)
                label = f"{pname}+L{L}" if L else pname
                r = SimResult.from_counters(name, label, fraction, cap, c, row_bytes, batch, delay)
                r.counters = own
                log.debug("%s %s @%.2f: on_demand %d, hit rate %.4f (%.2f s)", name, label, fraction,
                          r.on_demand, r.hit_rate, r.seconds)
                if own.get("guard_lru_steps"):
                    of = f" of {n_steps}" if delay == 1 else ""
                    log.info("%s %s @%.2f: the guard held the cache in LRU order %d%s steps, warm-up "
                             "included (the model lost to LRU there; if on most, train on this workload)",
                             name, label, fraction, own["guard_lru_steps"], of)
                if pname == "lru" and not L:
                    lru_on_demand = r.on_demand
                batch_results.append(r)
        if lru_on_demand is None:
            lru_on_demand = run("lru", cap)[0].on_demand
        for r in batch_results:
            r.set_gap(lru_on_demand)
        results.extend(batch_results)
    return results
