"""What each per-table counter of a pool's stats means: one home for the metrics' help (recmgd.daemon.
metrics) and ``recmgctl stats --help`` (which names the columns of its table by them). Plain data, so
the command-line tool reads it without loading the metrics server."""

from __future__ import annotations

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
    ("slow_bytes", "slow_tier_read_bytes",
     "row bytes the daemon's fills copied from the slow tier (the device reads, aligned O_DIRECT spans, "
     "are in recmgd_app_slow_bytes)"),
)
