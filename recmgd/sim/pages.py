"""Page-granular tiering, simulated: the comparison docs/ARCHITECTURE.md sets row slots against.

Kernel NUMA tiering, DAMON and memtierd (and recmgd's own page mode) keep whole pages of the slow
tier's backing store on the fast node, not rows. A table's rows lie in its backing store in id order
(each table's region starts on a page boundary, as in the pool), so a page of ``page_bytes`` holds
``page_bytes // row_bytes`` rows that, with hashed ids, have nothing to do with each other. When
``row_bytes`` does not divide ``page_bytes`` some rows straddle two pages; the simulation counts such a
row on the page of its first byte (the daemon's page mode, recmgd/daemon/pages.py, moves both), so
it slightly favours page tiering there.

:func:`simulate_pages` runs any registered policy on the same steps at page granularity: a step's
rows become the pages that hold them (deduplicated, in order of first appearance), the fast tier
holds ``DRAM bytes // page_bytes`` pages for the same DRAM bytes as ``capacity`` row slots, and a
lookup is on demand when its row's page is not on the fast node, counted per row (an embedding bag
reads each row of a page it needs, each from slow memory). The policy is driven exactly as on rows
(the python driver: decisions after step b apply before step b+1, the first half warms); ``opt``
here is Belady over pages, the best any page-granular tiering can do without prefetching. A learned
policy runs at the granularity of pages of ``page_bytes`` with rows of ``row_bytes``: it trains on the
page steps, and a ``model_dir`` checkpoint must have been trained on the same (``recmg train
--page-bytes``; recmgd.models.granularity).
``slow_bytes`` counts what page mode moves: whole pages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from recmgd import policy as policy_registry
from recmgd.keys import PAGE_BYTES, ROW_BITS, ROW_MASK, capacity_for
from recmgd.models.granularity import Granularity
from recmgd.policies.native import IdMap
from recmgd.policy import StepView
from recmgd.sim.driver import Driver, prepare
from recmgd.sim.results import SimResult
from recmgd.trace.steps import Steps

log = logging.getLogger(__name__)

DEFAULT_PAGE_BYTES = PAGE_BYTES
#: suffix of a page-granular run's policy name in the results
PAGE_SUFFIX = "@page"


#: the largest row or page size page_keys takes (recmg's --row-bytes and --page-bytes allow as much)
MAX_BYTES = 1 << 40
_SPLIT = 20  # page_index's split of row_bytes: each part times a row (< 2**40) fits int64


def page_keys(keys: np.ndarray, row_bytes: int, page_bytes: int = DEFAULT_PAGE_BYTES) -> np.ndarray:
    """The key (table << 40 | page index within the table's region) of the page holding each row."""
    _check_sizes(row_bytes, page_bytes)
    keys = np.asarray(keys, dtype=np.int64)
    return ((keys >> ROW_BITS) << ROW_BITS) | page_index(keys & ROW_MASK, row_bytes, page_bytes)


def page_index(rows: np.ndarray, row_bytes: int, page_bytes: int) -> np.ndarray:
    """``rows * row_bytes // page_bytes`` exactly for rows in 0..2**40-1 (int64), though the product
    does not fit int64 for rows of more than 8 MiB: a whole number of rows a page divides; else the
    product is split, ``row_bytes = hi * 2**20 + lo``, and divided in two parts that fit."""
    rows = np.asarray(rows, dtype=np.int64)
    if page_bytes % row_bytes == 0:
        return rows // (page_bytes // row_bytes)
    if row_bytes <= ((1 << 63) - 1) // (ROW_MASK + 1):
        return rows * row_bytes // page_bytes
    hi, lo = divmod(row_bytes, 1 << _SPLIT)  # hi <= 2**20, lo < 2**20
    q, r = np.divmod(rows * hi, page_bytes)  # rows * hi < 2**60; r < page_bytes <= 2**40
    return (q << _SPLIT) + ((r << _SPLIT) + rows * lo) // page_bytes  # each term < 2**60


def _check_sizes(row_bytes: int, page_bytes: int) -> None:
    if row_bytes < 1 or page_bytes < 1:
        raise ValueError(f"row and page bytes must be positive, got {row_bytes} and {page_bytes}")
    if row_bytes > page_bytes:
        raise ValueError(f"rows of {row_bytes} bytes span several pages of {page_bytes}: page granularity "
                         "needs rows no larger than a page")
    if page_bytes > MAX_BYTES:
        raise ValueError(f"pages of {page_bytes} bytes: at most {MAX_BYTES}")


def to_pages(steps: Steps, row_bytes: int, page_bytes: int = DEFAULT_PAGE_BYTES) -> tuple[Steps, np.ndarray]:
    """Row steps -> page steps (each step's pages deduplicated, in order of first appearance) and, per
    entry of the page steps, how many of that step's rows lie on that page."""
    n = len(steps)
    flat = steps.keys[steps.offsets[0]:steps.offsets[-1]]
    pk = page_keys(flat, row_bytes, page_bytes)
    sid = steps.step_of()
    if pk.shape[0] == 0:
        return Steps(np.zeros(0, np.int64), np.zeros(n + 1, np.int64)), np.zeros(0, np.int64)
    order = np.lexsort((pk, sid))  # stable: a (step, page) group is led by its first appearance
    sp, ss = pk[order], sid[order]
    lead = np.ones(order.shape[0], dtype=bool)
    lead[1:] = (sp[1:] != sp[:-1]) | (ss[1:] != ss[:-1])
    starts = np.flatnonzero(lead)
    counts = np.diff(np.append(starts, order.shape[0]))
    first_pos = order[starts]  # flat position of each group's first row
    back = np.argsort(first_pos, kind="stable")  # groups in trace order
    keep = first_pos[back]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(sid[keep], minlength=n), out=offsets[1:])
    return Steps(np.ascontiguousarray(pk[keep]), offsets), counts[back].astype(np.int64)


def floor_bound(page_steps: Steps, weights: np.ndarray, warm: int, cap_pages: int) -> tuple[int, int]:
    """The floor and bound of the simulator's protocol for page granularity: scored lookups of rows on pages
    never seen before (reading one row of a page brings its neighbours along, so this floor is at most the
    rows' one), and the sum over scored steps of max(those lookups, the rows of the step's pages beyond
    ``cap_pages``, lightest pages first)."""
    flat = page_steps.keys[page_steps.offsets[0]:page_steps.offsets[-1]]
    _, first = np.unique(flat, return_index=True)
    new = np.zeros(flat.shape[0], dtype=bool)
    new[first] = True
    sid = page_steps.step_of()
    n = len(page_steps)
    new_rows = np.bincount(sid[new], weights=weights[new], minlength=n).astype(np.int64)
    over = np.zeros(n, dtype=np.int64)
    sizes = np.diff(page_steps.offsets)
    base = page_steps.offsets[0]
    for b in np.flatnonzero(sizes > cap_pages):
        if b < warm:
            continue
        w = np.sort(weights[page_steps.offsets[b] - base:page_steps.offsets[b + 1] - base])
        over[b] = int(w[:sizes[b] - cap_pages].sum())
    return int(new_rows[warm:].sum()), int(np.maximum(new_rows, over)[warm:].sum())


def drive_pages(policy_name: str, steps: Steps, capacity_rows: int, warm: int, *, row_bytes: int,
                page_bytes: int = DEFAULT_PAGE_BYTES, options: dict[str, Any] | None = None,
                pages: tuple[Steps, np.ndarray] | None = None) -> dict[str, Any]:
    """Run one policy at page granularity with the DRAM of ``capacity_rows`` row slots.

    Returns the counters per row (lookups, hits, on_demand) and per page (page_misses, prefetches),
    the pages the fast tier holds, and the policy's seconds on the scored half.
    """
    page_steps, weights = pages if pages is not None else to_pages(steps, row_bytes, page_bytes)
    cap_pages = capacity_rows * row_bytes // page_bytes
    offs = page_steps.offsets
    scored_w = weights[offs[warm] - offs[0]:]
    out: dict[str, Any] = {"capacity_pages": cap_pages, "lookups": int(scored_w.sum()), "hits": 0,
                           "on_demand": int(scored_w.sum()), "page_misses": 0, "prefetch_issued": 0,
                           "prefetch_useful": 0, "seconds": 0.0}
    if cap_pages == 0:  # not one page fits in the budget: every lookup reads slow memory
        out["page_misses"] = int(offs[-1] - offs[warm])
        return out
    opts = dict(options or {})
    if policy_registry.is_learned(policy_name):  # it trains on page keys, and loads page checkpoints only
        opts["granularity"] = Granularity.pages(page_bytes, row_bytes)
    policy = policy_registry.create(policy_name, **opts)
    prepare(policy, page_steps, cap_pages, warm)
    if policy.needs_future:
        policy.set_future(page_steps)
    idmap = IdMap()
    drv = Driver(idmap, cap_pages)
    on_demand = hits = 0
    seconds = 0.0
    base = offs[0]
    for b in range(len(page_steps)):
        scored = b >= warm
        lo, hi = offs[b] - base, offs[b + 1] - base
        keys = np.ascontiguousarray(page_steps.keys[lo:hi], dtype=np.int64)
        hit = drv.observe(idmap.map(keys), scored).astype(bool)
        if scored:
            w = weights[lo:hi]
            got = int(w[hit].sum())
            hits += got
            on_demand += int(w.sum()) - got
        t0 = time.perf_counter()
        dec = policy.observe(StepView(step=b, keys=keys, hit=hit))
        if scored:
            seconds += time.perf_counter() - t0
        drv.apply(dec, scored, policy.name or policy_name)
    c = drv.counters()
    out.update(hits=hits, on_demand=on_demand, page_misses=c.on_demand, prefetch_issued=c.prefetch_issued,
               prefetch_useful=c.prefetch_useful, seconds=seconds)
    return out


def simulate_pages(name: str, steps: Steps, policies: Sequence[str], fractions: Sequence[float],
                   unique: int, *, row_bytes: int, page_bytes: int = DEFAULT_PAGE_BYTES, batch: int = 16,
                   options: dict[str, Any] | None = None) -> list[SimResult]:
    """Every policy at every fraction at page granularity, with the DRAM bytes of the row-slot tier
    of that fraction (``capacity`` in the results is that tier's rows; the policy column reads
    ``NAME@page``)."""
    _check_sizes(row_bytes, page_bytes)
    warm = len(steps) // 2
    pages = to_pages(steps, row_bytes, page_bytes)
    log.info("%s: %d rows a page of %d bytes; %d page lookups against %d row lookups", name,
             page_bytes // row_bytes, page_bytes, pages[0].n_lookups, steps.n_lookups)
    results: list[SimResult] = []
    for fraction in fractions:
        cap = capacity_for(fraction, unique)
        floor, bound = floor_bound(*pages, warm, cap * row_bytes // page_bytes)
        for pname in policies:
            c = drive_pages(pname, steps, cap, warm, row_bytes=row_bytes, page_bytes=page_bytes,
                            options=options, pages=pages)
            lookups = c["lookups"]
            useful = c["prefetch_useful"]
            results.append(SimResult(
                trace=name, policy=pname + PAGE_SUFFIX, fraction=fraction, capacity=cap,
                steps=len(steps) - warm, lookups=lookups, on_demand=c["on_demand"], hits=c["hits"],
                hit_rate=c["hits"] / lookups if lookups else 0.0, prefetch_issued=c["prefetch_issued"],
                prefetch_useful=useful,
                accuracy=useful / c["prefetch_issued"] if c["prefetch_issued"] else None,
                coverage=None, slow_bytes=page_bytes * (c["page_misses"] + c["prefetch_issued"]),
                seconds=c["seconds"], floor=floor, bound=bound, batch=batch, delay=1))
            log.debug("%s %s@page @%.2f: %d pages, on_demand %d", name, pname, fraction,
                      c["capacity_pages"], c["on_demand"])
    return results
