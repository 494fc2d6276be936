"""The daemon's numbers in the Prometheus text format (prometheus-client), on the metrics address.

The collector reads the latest stats snapshot that the loop publishes (a dict replaced as a whole,
so the HTTP thread never sees a half-updated one); it never calls into the pools itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from recmgd.errors import RecmgError

log = logging.getLogger(__name__)

# table-level counters: (stats key, metric name, help)
TABLE_METRICS = (
    ("lookups", "lookups", "ids looked up (ring records)"),
    ("unique", "unique_lookups", "distinct rows per batch, summed"),
    ("hits", "fast_hits", "distinct rows per batch found in the fast tier"),
    ("on_demand", "on_demand_fetches", "distinct rows per batch read from the slow tier"),
    ("prefetch_issued", "prefetches_issued", "rows prefetched by the policy"),
    ("prefetch_useful", "prefetches_useful", "prefetched rows read before eviction"),
    ("prefetch_late", "prefetches_late", "prefetches the budget deferred, read before they were filled"),
    ("hint_fetched", "hints_fetched", "rows fetched because an app hinted them"),
    ("hint_useful", "hints_useful", "hinted rows read from the fast tier"),
    ("evictions", "evictions", "rows evicted from the fast tier"),
    ("fills", "slot_fills", "rows copied into fast-tier slots"),
    ("slow_bytes", "slow_tier_read_bytes", "bytes read from the slow tier by fills"),
)
POOL_COUNTERS = (
    ("steps", "steps", "policy steps (app batches)"),
    ("ring_drops", "ring_drops", "ring records the apps dropped because a ring was full"),
    ("bad_records", "bad_records", "ring records with keys outside the tables"),
    ("prefetch_rejected", "prefetches_rejected", "prefetches the fill budget dropped"),
    ("admit_rejected", "admissions_rejected", "admissions the fill budget dropped"),
    ("prefetch_evicted_unread", "prefetches_evicted_unread", "prefetched rows evicted before a read"),
    ("rings_released", "rings_released", "rings of dead apps released"),
    ("hint_received", "hints_received", "hint records the apps sent"),
    ("hint_late", "hints_late", "hints that arrived with the lookups they announced"),
    ("hint_rejected", "hints_rejected", "hints not fetched (reserve full or fill budget)"),
    ("policy_time_s", "model_inference_seconds", "time spent in the policy"),
    ("early_admits", "early_admissions", "missed rows filled before a slow policy's step (early_admit)"),
    ("decision_skipped", "decision_rows_skipped",
     "rows left out of a late decision because a later step's view decides them"),
    ("decision_no_room", "decision_rows_no_room",
     "rows of a late decision that early fills left no room for"),
)
POOL_GAUGES = (
    ("resident", "resident_rows", "rows in the fast tier"),
    ("capacity", "capacity_rows", "rows the policy may keep"),
    ("apps", "apps", "app processes attached"),
    ("backlog_records", "backlog_records", "ring records left undrained after a tick"),
    ("hit_rate", "hit_rate", "fast hits / unique lookups"),
)

# page mode (pools with mode = "pages"): (key of the stats' "pages" dict, metric name, help)
PAGE_COUNTERS = (
    ("move_calls", "page_move_calls", "move_pages(2) calls (retries included)"),
    ("pages_requested", "page_moves_requested", "pages asked to move"),
    ("pages_moved", "pages_moved", "pages on the target node after a move (already there included)"),
    ("pages_failed", "page_moves_failed", "pages not on the target node after a move"),
    ("busy_retries", "page_move_busy_retries", "pages asked for again after -EBUSY"),
    ("promotions", "page_promotions", "pages promoted to the fast node"),
    ("demotions", "page_demotions", "pages demoted to the slow tier's node"),
    ("move_all_fallbacks", "page_move_all_fallbacks",
     "move_pages calls that fell back to MPOL_MF_MOVE (no CAP_SYS_NICE)"),
)
PAGE_GAUGES = (
    ("promoted_pages", "promoted_pages", "pages counted as promoted (at most the budget)"),
    ("budget_pages", "page_budget_pages", "pages the promoted pages may take (budget_mb)"),
)


# retraining (pools with retrain_every): (key of the stats' "retrain" dict, metric name, help)
RETRAIN_COUNTERS = (
    ("retrains", "retrains", "retrains started (trainer processes)"),
    ("switches", "model_switches", "retrained models switched to (the candidate fetched less)"),
    ("kept", "retrains_kept", "retrains whose candidate did not beat the current model"),
    ("failures", "retrain_failures", "retrains that failed (trainer failed or killed, model not loadable)"),
)


class StatsCollector(Collector):
    """Turns the daemon's stats snapshot into metric families."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot() or {}
        pools = snap.get("pools", {})
        for key, name, help_text in TABLE_METRICS:
            fam = CounterMetricFamily(f"recmgd_{name}", help_text, labels=["pool", "table"])
            for pname, p in pools.items():
                for t in p.get("tables", []):
                    fam.add_metric([pname, str(t["table"])], float(t.get(key, 0)))
            yield fam
        for key, name, help_text in POOL_COUNTERS:
            fam = CounterMetricFamily(f"recmgd_{name}", help_text, labels=["pool"])
            for pname, p in pools.items():
                fam.add_metric([pname], float(p.get(key, 0)))
            yield fam
        for key, name, help_text in POOL_GAUGES:
            fam = GaugeMetricFamily(f"recmgd_{name}", help_text, labels=["pool"])
            for pname, p in pools.items():
                fam.add_metric([pname], float(p.get(key, 0)))
            yield fam
        for key, help_text in (("lookups", "ids the apps looked up (their own count)"),
                               ("unique", "distinct rows per lookup call (the apps' count)"),
                               ("on_demand", "distinct rows the apps read from the slow tier (their count)"),
                               ("slow_bytes", "bytes read from the slow tier (lookups and fills)")):
            fam = CounterMetricFamily(f"recmgd_app_{key}", help_text, labels=["pool"])
            for pname, p in pools.items():
                fam.add_metric([pname], float((p.get("app") or {}).get(key, 0)))
            yield fam
        yield from self._pages(pools)
        yield from self._retrain(pools)
        d = snap.get("daemon", {})
        yield GaugeMetricFamily("recmgd_loop_lag_seconds", "how late the last loop tick ended",
                                value=float(d.get("loop_lag_s", 0.0)))
        yield CounterMetricFamily("recmgd_ticks", "loop ticks", value=float(d.get("ticks", 0)))
        yield GaugeMetricFamily("recmgd_lookups_per_second", "ring records drained per second",
                                value=float(d.get("lookups_per_s", 0.0)))
        yield GaugeMetricFamily("recmgd_pools", "pools attached", value=float(len(pools)))

    @staticmethod
    def _retrain(pools: dict[str, Any]) -> Iterator[Any]:
        """Retraining's families (samples only for the pools with retrain_every)."""
        rts = {name: p["retrain"] for name, p in pools.items() if p.get("retrain")}
        for key, name, help_text in RETRAIN_COUNTERS:
            fam = CounterMetricFamily(f"recmgd_{name}", help_text, labels=["pool"])
            for pname, rt in rts.items():
                fam.add_metric([pname], float(rt.get(key, 0)))
            yield fam
        gauges = (("model_age_seconds", "age of the pool's current model (its checkpoint's time)",
                   lambda rt: rt.get("model_age_s")),
                  ("retrain_window_lookups", "lookups in the retraining window",
                   lambda rt: rt.get("window_lookups")),
                  ("retrain_running", "1 while a trainer process runs",
                   lambda rt: int(bool(rt.get("running")))),
                  ("retrain_candidate_on_demand", "the last retrain's candidate: on-demand fetches on the "
                   "window's recent part", lambda rt: (rt.get("last") or {}).get("candidate_on_demand")),
                  ("retrain_current_on_demand", "the last retrain's current model: on-demand fetches on the "
                   "window's recent part", lambda rt: (rt.get("last") or {}).get("current_on_demand")))
        for name, help_text, get in gauges:
            fam = GaugeMetricFamily(f"recmgd_{name}", help_text, labels=["pool"])
            for pname, rt in rts.items():
                value = get(rt)
                if value is not None:
                    fam.add_metric([pname], float(value))
            yield fam

    @staticmethod
    def _pages(pools: dict[str, Any]) -> Iterator[Any]:
        """Page mode's families (samples only for the pools in page mode)."""
        pages = {name: p["pages"] for name, p in pools.items() if p.get("pages")}
        for key, name, help_text in PAGE_COUNTERS:
            fam = CounterMetricFamily(f"recmgd_{name}", help_text, labels=["pool"])
            for pname, pg in pages.items():
                fam.add_metric([pname], float(pg.get(key, 0)))
            yield fam
        fam = CounterMetricFamily("recmgd_page_move_failures", "pages not moved, by errno name",
                                  labels=["pool", "errno"])
        for pname, pg in pages.items():
            for err, n in sorted((pg.get("failed") or {}).items()):
                fam.add_metric([pname, str(err)], float(n))
        yield fam
        for key, name, help_text in PAGE_GAUGES:
            fam = GaugeMetricFamily(f"recmgd_{name}", help_text, labels=["pool"])
            for pname, pg in pages.items():
                fam.add_metric([pname], float(pg.get(key, 0)))
            yield fam
        fam = GaugeMetricFamily("recmgd_node_bytes", "bytes of the pool's slow tier on each NUMA node "
                                "(sampled when the pool has more pages than node_sample_pages)",
                                labels=["pool", "node"])
        for pname, pg in pages.items():
            for node, n in sorted((pg.get("node_bytes") or {}).items()):
                fam.add_metric([pname, str(node)], float(n))
        yield fam


class MetricsServer:
    """The Prometheus endpoint (GET /metrics), in a background thread of the daemon."""

    def __init__(self, address: tuple[str, int], snapshot: Callable[[], dict[str, Any]]) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(snapshot))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        host, port = self.address
        try:
            result = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise RecmgError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        if isinstance(result, tuple):
            self._server, self._thread = result
        log.info("metrics at http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> bytes:
        return generate_latest(self.registry)
