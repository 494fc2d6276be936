"""Page mode: the daemon's policies moving whole pages of a NUMA slow tier (docs/ARCHITECTURE.md,
"Page mode").

Instead of copying rows into the fast tier's slots, the daemon promotes whole 4096-byte pages of a
table's backing store (the pool's slow tier, bound to a CPU-less or far node) to ``fast_node`` with
move_pages(2), and demotes them back to the slow tier's node when the policy evicts them. The app sees
no change: it reads every row from the slow tier's addresses as before (the row slots stay empty), and
the kernel decides which node's memory serves the read.

One policy, two drivers: :class:`PagePool` presents a pool to the ordinary
:class:`~recmgd.daemon.loop.PoolDriver` at page granularity (the ``PoolLike`` protocol):

- a key is ``table << 40 | page`` (page k of table t holds bytes [k * 4096, (k + 1) * 4096) of the
  table's rows; each table's region starts on a page boundary). :meth:`PagePool.drain_ring` turns the
  apps' row records into page records, one per page a row's bytes touch (every page from its first to
  its last: a row across a page boundary gives two records, a 256 KiB row 64); a record of a row
  outside the tables becomes a key outside them, which the driver counts as a bad record;
- ``tables`` are the tables' pages (rows = pages, row_bytes = 4096), ``n_slots`` the DRAM budget in
  pages, so the policy's capacity is the budget (less ``hint_slots``, counted in pages too);
- ``fill_keys`` promotes pages to ``fast_node``, ``evict_keys`` demotes them to the slow node;
  ``resident_keys`` are the pages promoted (rebuilt on attach from where the pages are, when the fast
  node is not the slow tier's own node).

So every registered policy runs unchanged on pages. A learned one sees page keys, so it needs a
checkpoint trained on page keys (``recmg train TRACE --out DIR --page-bytes 4096``); a row checkpoint
is refused at attach and at reload (recmgd.daemon.step.create_policy, recmgd.models.granularity), as a
page checkpoint is in row mode. The MB/s cap is a per-pool
:class:`~recmgd.daemon.mover.FillBudget` over 4096-byte "rows": promotions take from it before they are
made, demotions (which free the budget and are never refused) are charged to it after, so the pages
moved both ways keep to the cap over time (in step mode, to a fixed grant per step, a step's
demotions running ahead by at most that step's evictions). The DRAM budget is a hard limit: a
promotion that would hold more than ``budget_pages`` pages is an error, never a move.

A page whose promotion failed (its status a negative errno: -ENOMEM when the fast node is full,
-EBUSY after the retries, -EACCES when the daemon has no CAP_SYS_NICE and an app maps the page) stays
counted as promoted, holding its share of the budget until the policy evicts it; the failure is
counted per errno, and the bytes per node show where the pages really are.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from recmgd.daemon.config import PagesConfig
from recmgd.daemon.loop import PoolDriver
from recmgd.daemon.mover import FillBudget, PoolLike
from recmgd.daemon.tracker import page_records
from recmgd.errors import PoolError
from recmgd.keys import PAGE_BYTES, ROW_BITS, ROW_MASK
from recmgd.policy import Policy

log = logging.getLogger(__name__)

#: pages asked about in one move_pages query call
QUERY_CHUNK = 65536
#: counter names of :meth:`PagePool.stats` (all cumulative)
MOVE_COUNTERS = ("move_calls", "pages_requested", "pages_moved", "pages_failed", "busy_retries",
                 "promotions", "demotions", "promote_failed", "demote_failed", "move_all_fallbacks")


class PageTable:
    """One table seen at page granularity: ``rows`` are its slow tier's pages."""

    __slots__ = ("index", "rows", "row_bytes", "data_rows", "data_row_bytes")

    def __init__(self, index: int, pages: int, data_rows: int, data_row_bytes: int) -> None:
        self.index = index
        self.rows = pages
        self.row_bytes = PAGE_BYTES
        self.data_rows = data_rows
        self.data_row_bytes = data_row_bytes


def errno_name(status: int) -> str:
    """The errno name of a negative move_pages status (``EBUSY``), or ``WRONG_NODE`` for a node."""
    if status >= 0:
        return "WRONG_NODE"
    return errno.errorcode.get(-status, f"E{-status}")


def page_mode_problem(name: str, slow: str) -> str | None:
    """Why a pool cannot run in page mode (one line), or None."""
    if not slow.startswith("numa:"):
        return (f"pool {name}: page mode needs a NUMA slow tier (numa:N); this pool's slow tier is "
                f"{slow.split(':', 1)[0]}")
    return None


def _slow_node(slow: str) -> int:
    return int(slow.split(":", 1)[1])


class PagePool:
    """A pool at page granularity, for :class:`~recmgd.daemon.loop.PoolDriver` (see the module doc).

    ``pool`` is a :class:`recmgd.pool.Pool` attached as the daemon (or anything with its methods).
    ``budget`` is the pool's own MB/s cap (demotions are charged to it); ``node_query_interval`` is how
    old the bytes per node may be before :meth:`stats` queries them again.
    """

    def __init__(self, pool: Any, cfg: PagesConfig, budget: FillBudget | None = None, *,
                 node_query_interval: float = 2.0, clear_row_slots: bool = True) -> None:
        problem = page_mode_problem(str(pool.name), str(pool.slow))
        if problem:
            raise PoolError(problem)
        self.pool = pool
        self.cfg = cfg
        self.name = str(pool.name)
        self.slow = str(pool.slow)
        self.slow_node = _slow_node(str(pool.slow))
        self.fast_node = int(cfg.fast_node)
        self.budget = budget
        self.node_query_interval = float(node_query_interval)
        tables = list(pool.tables)
        self.tables = [PageTable(i, int(pool.slow_pages(i)), int(t.rows), int(t.row_bytes))
                       for i, t in enumerate(tables)]
        self.n_tables = len(self.tables)
        self.n_slots = int(cfg.budget_pages)
        self.table_pages = np.array([t.rows for t in self.tables], dtype=np.int64)
        self.table_rows = np.array([t.data_rows for t in self.tables], dtype=np.int64)
        self.table_row_bytes = np.array([t.data_row_bytes for t in self.tables], dtype=np.int64)
        self.offsets = np.zeros(self.n_tables + 1, dtype=np.int64)
        np.cumsum(self.table_pages, out=self.offsets[1:])
        self.total_pages = int(self.offsets[-1])
        self.promoted = np.zeros(self.total_pages, dtype=bool)
        self.n_promoted = 0
        self.counters: dict[str, int] = dict.fromkeys(MOVE_COUNTERS, 0)
        self.failed: dict[str, int] = {}
        self.move_all = True
        self._warned_fallback = False
        self._node_cache: dict[str, Any] | None = None
        self._node_time = 0.0
        # called (records, ring index) with the rows drained, before they become pages (recordings)
        self.tap: Callable[[np.ndarray, int], None] | None = None
        if self.fast_node == self.slow_node:
            log.warning("pool %s: page mode's fast node %d is the slow tier's own node: pages are counted "
                        "as promoted but stay where they are", self.name, self.fast_node)
        if clear_row_slots:
            rows = np.asarray(pool.resident_keys(), dtype=np.int64)
            if len(rows):
                pool.evict_keys(rows)
                log.info("pool %s: page mode: %d rows left in the fast tier's slots evicted", self.name,
                         len(rows))
        self._adopt()

    # -- keys --------------------------------------------------------------------------------------

    def _flat(self, keys: np.ndarray, what: str) -> np.ndarray:
        """Flat page index of each page key; a key outside the tables is an error (a driver bug)."""
        t = keys >> ROW_BITS
        pg = keys & ROW_MASK
        ok = (keys >= 0) & (t < self.n_tables)
        ok[ok] &= pg[ok] < self.table_pages[t[ok]]
        if not ok.all():
            bad = int(keys[~ok][0])
            raise PoolError(f"pool {self.name}: {what}: page key {bad:#x} is outside the tables")
        return self.offsets[t] + pg

    def keys_of(self, flat: np.ndarray) -> np.ndarray:
        t = np.searchsorted(self.offsets, flat, side="right") - 1
        return (t.astype(np.int64) << ROW_BITS) | (flat - self.offsets[t])

    def page_keys(self, row_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(page key of each row's first byte, page key of its last byte), both of the row's table: the
        row's bytes touch every page from the first to the last (recmgd.daemon.tracker.page_records
        gives a record for each). A row outside the tables gets a key outside them (table = the table
        count) in both."""
        t = row_keys >> ROW_BITS
        r = row_keys & ROW_MASK
        ok = (row_keys >= 0) & (t < self.n_tables)
        tc = np.where(ok, t, 0)
        ok &= r < self.table_rows[tc]
        rb = self.table_row_bytes[tc]
        first = (r * rb) // PAGE_BYTES
        last = ((r + 1) * rb - 1) // PAGE_BYTES
        bad = np.int64(self.n_tables) << ROW_BITS
        k1 = np.where(ok, (t << ROW_BITS) | first, bad)
        k2 = np.where(ok, (t << ROW_BITS) | last, bad)
        return k1, k2

    # -- the PoolLike protocol ---------------------------------------------------------------------------

    def rings(self) -> list[Any]:
        return list(self.pool.rings())

    def ring_table(self, first: int = 0, count: int | None = None) -> np.ndarray:
        """The rings' state in one array (Pool.ring_table; waiting and before_claim in ring records)."""
        return self.pool.ring_table(first, count)

    def release_ring(self, index: int) -> None:
        self.pool.release_ring(index)


    def counters(self) -> dict[str, Any]:
        """The apps' own counts (rows, as the pool keeps them)."""
        return dict(self.pool.counters())

    def drain_ring(self, index: int, max_records: int) -> np.ndarray:
        """Records of one ring with row keys turned into page keys (see the module doc;
        recmgd.daemon.tracker.page_records does the rewrite)."""
        recs = self.pool.drain_ring(index, max_records)
        if self.tap is not None and len(recs):  # recordings and the retraining window get the rows
            self.tap(np.asarray(recs, dtype=np.uint64), index)
        return page_records(recs, self.page_keys)

    def resident_keys(self) -> np.ndarray:
        """The pages promoted (the driver rebuilds its mirror from them)."""
        return self.keys_of(np.flatnonzero(self.promoted))

    def fill_keys(self, keys: np.ndarray) -> int:
        """Promote pages to the fast node; returns how many are there now. Promoting past the DRAM
        budget is an error (the driver never asks for it)."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(keys):
            return 0
        fl = self._flat(keys, "promote")
        _, first = np.unique(fl, return_index=True)
        first.sort()
        fl = fl[first]
        new = ~self.promoted[fl]
        fl = fl[new]
        if self.n_promoted + len(fl) > self.n_slots:
            raise PoolError(f"pool {self.name}: promoting {len(fl)} pages would exceed the DRAM budget of "
                            f"{self.n_slots} pages ({self.n_promoted} promoted)")
        if not len(fl):
            return 0
        # counted before the move: a failed page still holds its share of the budget (module doc)
        self.promoted[fl] = True
        self.n_promoted += len(fl)
        return self._move(self.keys_of(fl), self.fast_node, "promote")

    def evict_keys(self, keys: np.ndarray) -> int:
        """Demote promoted pages to the slow tier's node (charged to the MB/s cap); returns how many
        are there now."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(keys):
            return 0
        fl = np.unique(self._flat(keys, "demote"))
        fl = fl[self.promoted[fl]]
        if not len(fl):
            return 0
        self.promoted[fl] = False
        self.n_promoted -= len(fl)
        if self.budget is not None:
            self.budget.charge(len(fl) * PAGE_BYTES)
        return self._move(self.keys_of(fl), self.slow_node, "demote")

    def demote_all(self) -> int:
        """Demote every promoted page (leaving page mode); returns how many are on the slow node."""
        return self.evict_keys(self.resident_keys())

    def close(self) -> None:
        self.pool.close()

    # -- moving ------------------------------------------------------------------------------------

    def _move(self, keys: np.ndarray, node: int, kind: str) -> int:
        """Move pages (keys) to a node in batches of ``cfg.batch`` per table; count what happened."""
        c = self.counters
        t_all = keys >> ROW_BITS
        at_node = 0
        for t in np.unique(t_all).tolist():
            pages = keys[t_all == t] & ROW_MASK
            for s in range(0, len(pages), self.cfg.batch):
                # MPOL_MF_MOVE_ALL until a call finds no CAP_SYS_NICE (then MPOL_MF_MOVE: one call, not two)
                res = self.pool.move_slow_pages(t, pages[s:s + self.cfg.batch], node, move_all=self.move_all,
                                                busy_retries=self.cfg.busy_retries)
                c["move_calls"] += res.calls
                c["pages_requested"] += res.requested
                c["busy_retries"] += res.busy_retries
                c["pages_moved"] += res.moved
                at_node += res.moved
                if self.move_all and not res.move_all:
                    c["move_all_fallbacks"] += 1
                    if not self._warned_fallback:
                        log.warning("pool %s: no CAP_SYS_NICE: move_pages falls back to MPOL_MF_MOVE, and "
                                    "pages the apps map too stay where they are (EACCES)", self.name)
                        self._warned_fallback = True
                self.move_all = res.move_all
                st = np.asarray(res.status)
                bad = st[st != node]
                if len(bad):
                    c["pages_failed"] += len(bad)
                    c["promote_failed" if kind == "promote" else "demote_failed"] += len(bad)
                    vals, counts = np.unique(bad, return_counts=True)
                    for v, n in zip(vals.tolist(), counts.tolist(), strict=True):
                        name = errno_name(int(v))
                        self.failed[name] = self.failed.get(name, 0) + int(n)
        c["promotions" if kind == "promote" else "demotions"] += at_node
        self._node_cache = None  # placement changed
        if at_node < len(keys):
            log.debug("pool %s: %s: %d of %d pages on node %d", self.name, kind, at_node, len(keys), node)
        return at_node

    def _adopt(self) -> None:
        """On attach: pages already on the fast node (a restarted daemon's promotions) count as promoted
        (the driver evicts what its capacity cannot hold). Not when the fast node is the slow node."""
        if self.fast_node == self.slow_node or not self.total_pages:
            return
        st = self._query(np.arange(self.total_pages, dtype=np.int64))
        on_fast = np.flatnonzero(st == self.fast_node)
        if len(on_fast):
            self.promoted[on_fast] = True
            self.n_promoted = len(on_fast)
            log.info("pool %s: %d pages already on the fast node %d taken as promoted", self.name,
                     len(on_fast), self.fast_node)

    def _query(self, flat: np.ndarray) -> np.ndarray:
        """The node (or -errno) of each flat page index, in chunks."""
        out = np.empty(len(flat), dtype=np.int32)
        t_all = np.searchsorted(self.offsets, flat, side="right") - 1
        for t in np.unique(t_all).tolist():
            sel = np.flatnonzero(t_all == t)
            pages = flat[sel] - self.offsets[t]
            for s in range(0, len(sel), QUERY_CHUNK):
                out[sel[s:s + QUERY_CHUNK]] = self.pool.slow_page_nodes(t, pages[s:s + QUERY_CHUNK])
        return out

    # -- reporting ---------------------------------------------------------------------------------

    def node_usage(self, force: bool = False) -> dict[str, Any]:
        """Bytes of the pool's slow tier on each node (by move_pages queries of every page, or of an
        even sample of ``cfg.node_sample_pages`` pages, scaled), at most ``node_query_interval`` old."""
        now = time.monotonic()
        if (not force and self._node_cache is not None
                and now - self._node_time < self.node_query_interval):
            return self._node_cache
        total = self.total_pages
        limit = self.cfg.node_sample_pages
        n = total if limit == 0 or total <= limit else limit
        flat = (np.arange(n, dtype=np.int64) * total) // max(n, 1)
        st = self._query(flat) if n else np.zeros(0, dtype=np.int32)
        scale = total / n if n else 0.0
        placed = st[st >= 0]
        nodes, counts = np.unique(placed, return_counts=True)
        node_bytes = {str(int(nd)): int(round(int(c) * scale)) * PAGE_BYTES
                      for nd, c in zip(nodes.tolist(), counts.tolist(), strict=True)}
        usage = {
            "node_bytes": node_bytes,
            "node_pages_sampled": int(n),
            "node_bytes_exact": n == total,
            "unplaced_pages": int(round(int((st < 0).sum()) * scale)),
        }
        self._node_cache = usage
        self._node_time = now
        return usage

    def stats(self) -> dict[str, Any]:
        """Page mode's own numbers (beside the driver's counters, which are in pages here)."""
        out: dict[str, Any] = {
            "fast_node": self.fast_node,
            "slow_node": self.slow_node,
            "budget_pages": self.n_slots,
            "budget_bytes": self.n_slots * PAGE_BYTES,
            "promoted_pages": self.n_promoted,
            "promoted_bytes": self.n_promoted * PAGE_BYTES,
            "total_pages": self.total_pages,
            "mb_per_s": self.cfg.mb_per_s,
            "batch": self.cfg.batch,
            "move_all": self.move_all,
            **self.counters,
            "failed": dict(sorted(self.failed.items())),
        }
        out.update(self.node_usage())
        return out


class PageDriver(PoolDriver):
    """The ordinary driver over a :class:`PagePool`; its stats add page mode's own numbers."""

    mode = "pages"

    def __init__(self, pages: PagePool, policy: Policy, policy_name: str, **kwargs: Any) -> None:
        self.pages = pages
        target: PoolLike = pages
        super().__init__(target, policy, policy_name, **kwargs)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["pages"] = self.pages.stats()
        return out
