"""The daemon's numbers in the Prometheus text format (prometheus-client), on the metrics address.

The HTTP side is our own small selector loop in one thread (bounded connections, idle timeout), not
prometheus-client's server, which starts a thread per connection.

The collector reads the latest stats snapshot that the loop publishes (a dict replaced as a whole,
so the HTTP thread never sees a half-updated one); it never calls into the pools itself.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from recmgd.daemon.table_counters import TABLE_METRICS
from recmgd.errors import RecmgError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32  # open scrape connections; a new one closes the longest-idle one
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent before it is closed
MAX_REQUEST = 8192  # bytes of a request head
LISTEN_BACKLOG = 64

POOL_COUNTERS = (
    ("steps", "steps", "policy steps (app batches)"),
    ("ring_drops", "ring_drops", "ring records the apps dropped because a ring was full"),
    ("bad_records", "bad_records", "ring records with keys outside the tables"),
    ("cut_batches", "batches_cut",
     "app batches cut without a batch end at the daemon's cap on the records of one batch"),
    ("prefetch_rejected", "prefetches_rejected", "prefetches the fill budget dropped"),
    ("admit_rejected", "admissions_rejected", "admissions the fill budget dropped"),
    ("prefetch_evicted_unread", "prefetches_evicted_unread", "prefetched rows evicted before a read"),
    ("rings_released", "rings_released", "rings of dead apps released"),
    ("hint_received", "hints_received", "hint records the apps sent"),
    ("hint_late", "hints_late", "hints that arrived with the lookups they announced"),
    ("hint_rejected", "hints_rejected", "hints not fetched (reserve full or fill budget)"),
    ("pin_refused", "pin_refused", "evictions refused: the row is announced for a batch still to run"),
    ("hint_early", "hints_early", "hints fetched ahead of the batches drained with them (daemon behind)"),
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
    ("pending_records", "pending_records",
     "ring records of the apps' unfinished batches the daemon holds (bounded by the pool cap)"),
    ("pending_records_peak", "pending_records_peak",
     "the most ring records of unfinished batches the daemon held at once since it attached the pool"),
    ("hit_rate", "hit_rate", "fast hits / unique lookups"),
    ("state_bytes", "state_bytes", "bytes the daemon holds allocated for the pool's policy and mirror"),
)
# a learned policy's guard (Policy.counters), for the pools whose policy has one
GUARD_COUNTERS = (
    ("guard_lru_steps", "guard_lru_order_steps", "steps the guard held the cache in LRU order"),
    ("guard_lru_misses", "guard_lru_shadow_misses", "misses of the guard's LRU shadow (its sampled rows)"),
    ("guard_model_misses", "guard_model_shadow_misses", "misses of the guard's model-order shadow"),
)
GUARD_GAUGES = (
    ("guard_lru_order", "guard_lru_order",
     "1 while the learned policy's guard holds the cache in LRU order (its model lost to LRU lately)"),
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


def _per_pool(kind: type, spec: tuple[tuple[str, str, str], ...], by_pool: dict[str, Any]) -> Iterator[Any]:
    """One family per (key, name, help) of spec, one sample per pool: by_pool[pool][key] (0 if absent)."""
    for key, name, help_text in spec:
        fam = kind(f"recmgd_{name}", help_text, labels=["pool"])
        for pname, values in by_pool.items():
            fam.add_metric([pname], float(values.get(key, 0)))
        yield fam


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
        yield from _per_pool(CounterMetricFamily, POOL_COUNTERS, pools)
        yield from _per_pool(GaugeMetricFamily, POOL_GAUGES, pools)
        guarded = {name: p for name, p in pools.items() if "guard_lru_order" in p}
        yield from _per_pool(CounterMetricFamily, GUARD_COUNTERS, guarded)
        yield from _per_pool(GaugeMetricFamily, GUARD_GAUGES, guarded)
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
        fam = GaugeMetricFamily("recmgd_pool_stuck_seconds", "seconds since a pool's writer lock stayed held "
                                "by another process (the pool is skipped meanwhile)", labels=["pool"])
        for pname, st in sorted((d.get("stuck") or {}).items()):
            fam.add_metric([pname], float(st.get("for_s", 0.0)))
        yield fam
        fam = GaugeMetricFamily("recmgd_pool_waiting", "1 for a pool the daemon should drive and does not "
                                "(not made yet, failing to attach, stuck or skipped; `recmgctl pools` says "
                                "why)", labels=["pool"])
        for pname in sorted(d.get("waiting_for") or []):
            fam.add_metric([pname], 1.0)
        yield fam
        yield GaugeMetricFamily("recmgd_pools_skipped",
                                "pools not served (their owner, or no fast-tier slots)",
                                value=float(len(d.get("skipped") or {})))

    @staticmethod
    def _retrain(pools: dict[str, Any]) -> Iterator[Any]:
        """Retraining's families (samples only for the pools with retrain_every)."""
        rts = {name: p["retrain"] for name, p in pools.items() if p.get("retrain")}
        yield from _per_pool(CounterMetricFamily, RETRAIN_COUNTERS, rts)
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
        yield from _per_pool(CounterMetricFamily, PAGE_COUNTERS, pages)
        fam = CounterMetricFamily("recmgd_page_move_failures", "pages not moved, by errno name",
                                  labels=["pool", "errno"])
        for pname, pg in pages.items():
            for err, n in sorted((pg.get("failed") or {}).items()):
                fam.add_metric([pname, str(err)], float(n))
        yield fam
        yield from _per_pool(GaugeMetricFamily, PAGE_GAUGES, pages)
        fam = GaugeMetricFamily("recmgd_node_bytes", "bytes of the pool's slow tier on each NUMA node "
                                "(sampled when the pool has more pages than node_sample_pages)",
                                labels=["pool", "node"])
        for pname, pg in pages.items():
            for node, n in sorted((pg.get("node_bytes") or {}).items()):
                fam.add_metric([pname, str(node)], float(n))
        yield fam


class _HttpConn:
    __slots__ = ("sock", "inbuf", "outbuf", "last")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = b""
        self.last = now


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + (b"" if head_only else body)


class MetricsServer:
    """The Prometheus endpoint (GET /metrics): one background thread serves every connection.

    A selector loop, not a thread per connection: at most :data:`MAX_CONNECTIONS` are open (a new one
    takes the slot of the longest-idle one), a connection silent for :data:`IDLE_TIMEOUT` seconds is
    closed, a request head longer than :data:`MAX_REQUEST` bytes gets 431. Each answer closes its
    connection. Half-open or slow clients cost a file descriptor each, never a thread.
    """

    def __init__(self, address: tuple[str, int], snapshot: Callable[[], dict[str, Any]]) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(snapshot))
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stop = threading.Event()
        self.scrapes = 0
        self.dropped = 0  # connections closed idle or to make room

    def start(self) -> None:
        host, port = self.address
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, stype, proto, _, addr = infos[0]
            sock = socket.socket(family, stype, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(LISTEN_BACKLOG)
            except OSError:
                sock.close()
                raise
        except (OSError, socket.gaierror) as exc:
            raise RecmgError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listener = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="recmgd-metrics", daemon=True)
        self._thread.start()
        log.info("metrics at http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)  # (IPv6)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        assert self._wake_w is not None
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=5.0)
        self._thread = None
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._listener = self._wake_r = self._wake_w = None

    def text(self) -> bytes:
        return generate_latest(self.registry)

    # -- the serving thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        conns: dict[int, _HttpConn] = {}
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                for key, mask in sel.select(timeout=min(1.0, IDLE_TIMEOUT / 4)):
                    try:
                        if key.data == "accept":
                            self._accept(sel, conns)
                        elif key.data != "wake":
                            self._io(sel, conns, key.data, mask)
                    except Exception:  # noqa: BLE001 - a client must never stop the endpoint
                        log.exception("metrics connection failed")
                        if isinstance(key.data, _HttpConn):
                            self._close(sel, conns, key.data)
                now = time.monotonic()
                for conn in [c for c in conns.values() if now - c.last > IDLE_TIMEOUT]:
                    self.dropped += 1
                    self._close(sel, conns, conn)
        finally:
            for conn in list(conns.values()):
                self._close(sel, conns, conn)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, conns: dict[int, _HttpConn]) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next event
                log.warning("metrics: cannot accept: %s", exc.strerror or exc)
                return
            now = time.monotonic()
            if len(conns) >= MAX_CONNECTIONS:
                self.dropped += 1
                self._close(sel, conns, min(conns.values(), key=lambda c: c.last))
            sock.setblocking(False)
            conn = _HttpConn(sock, now)
            conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)

    def _io(self, sel: selectors.BaseSelector, conns: dict[int, _HttpConn], conn: _HttpConn,
            mask: int) -> None:
        if mask & selectors.EVENT_READ and not conn.outbuf:
            try:
                data = conn.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(sel, conns, conn)
                return
            if not data:
                self._close(sel, conns, conn)
                return
            conn.last = time.monotonic()
            conn.inbuf += data
            end = conn.inbuf.find(b"\r\n\r\n")
            if end < 0:
                end = conn.inbuf.find(b"\n\n")
            if end < 0:
                if len(conn.inbuf) > MAX_REQUEST:
                    conn.outbuf = _response("431 Request Header Fields Too Large", b"request too large\n")
                else:
                    return
            else:
                conn.outbuf = self._answer(bytes(conn.inbuf[:end]))
            sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        if conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(sel, conns, conn)
                return
            conn.last = time.monotonic()
            conn.outbuf = conn.outbuf[n:]
            if not conn.outbuf:
                self._close(sel, conns, conn)

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response("400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):  # (HEAD: what a health probe sends; the head of a GET)
            return _response("405 Method Not Allowed", b"only GET and HEAD\n")
        head_only = method == b"HEAD"
        if target not in (b"/metrics", b"/"):
            return _response("404 Not Found", b"not found (the metrics are at /metrics)\n",
                             head_only=head_only)
        self.scrapes += 1
        return _response("200 OK", self.text(), CONTENT_TYPE_LATEST, head_only=head_only)

    @staticmethod
    def _close(sel: selectors.BaseSelector, conns: dict[int, _HttpConn], conn: _HttpConn) -> None:
        conns.pop(conn.sock.fileno(), None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
