"""The end-to-end comparison behind ``tools/bench_e2e.py`` and ``recmg demo``: the DLRM inference server
(``python -m recmgd.app.serve``) on the same trace and load under each system:

- ``all-dram``: TorchRec's own EmbeddingBagCollection, every row in DRAM;
- ``no-cache``: recmg's collection over a pool with no fast tier (every row read from the slow tier);
- ``lru``, ``recmg``: a pool whose fast tier holds ``fraction`` of the trace's unique rows, driven by a real
  ``recmgd`` (a child process that reports READY over the systemd notify protocol) running that policy;
- ``lru+lookahead``, ``recmg+lookahead``: the same, the server announcing a batch's rows when it is
  ``lookahead_batches`` (L) batches from running (hint records; 0: each request's at arrival); the daemon
  fetches them into ``hint_slots`` reserved out of the same slots and pins them ``L + 1`` batches
  (:func:`pin_batches`).

The slow tier is a file in the work dir (O_DIRECT, io_uring). The offered loads are fractions of the
all-DRAM server's throughput with every request queued at once (its most). Each system is one server
process: the warm-up samples back to back (the caches' history; RecMG trains on them beforehand with
``recmg train``), then each load in turn on the next requests of the trace, Poisson at that rate (the
same requests at a load for every system). Per run: latency
percentiles, throughput, on-demand fetches a batch, slow-tier MB/s, the daemon's CPU share while the
counted requests ran.

Never imports torch or torchrec itself (the server processes do).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recmgd.app.weights import write_weights
from recmgd.errors import RecmgError, TraceError
from recmgd.keys import capacity_for
from recmgd.pool import Pool

log = logging.getLogger(__name__)

SYSTEMS = ("all-dram", "no-cache", "lru", "recmg", "lru+lookahead", "recmg+lookahead")
#: the daemon's counters a result carries (how much each grew while a load ran; recmgctl stats names them)
DAEMON_COUNTERS = ("steps", "batches", "on_demand", "fills", "evictions", "prefetch_issued",
                   "prefetch_useful", "admit_rejected", "prefetch_rejected", "hint_received", "hint_early",
                   "hint_fetched", "hint_useful", "hint_late", "hint_rejected", "pin_refused", "early_admits",
                   "policy_time_s")
REQUIRED_KEYS = ("trace", "system", "offered_qps", "p50_ms", "p99_ms", "throughput_qps",
                 "on_demand_per_batch")
# The server's batching and lookahead defaults, one home for ``python -m recmgd.app.serve``, ``recmg demo``
# and E2EConfig (here, not in recmgd.app.serve: this module never imports torch, the server does).
#: requests a batch at most
MAX_BATCH = 64
#: a batch leaves when its first request has waited this long (ms), or when full
MAX_WAIT_MS = 2.0
#: the server announces a batch's rows when it is this many batches (L) from running
LOOKAHEAD_BATCHES = 2


@dataclass
class E2EConfig:
    """One comparison's settings (the defaults are the full benchmark's)."""

    traces: list[tuple[str, Path]]  # (label, trace file)
    work: Path
    systems: Sequence[str] = SYSTEMS
    loads: Sequence[float] = (0.5, 0.9)  # offered load, share of the all-DRAM server's most
    seconds: float = 4.0  # counted requests at each load: load x seconds (at most what the trace holds)
    warmup: int = 20000  # samples served first, back to back (and RecMG's training half)
    fraction: float = 0.1  # fast-tier slots, share of the trace's unique rows
    dim: int = 64
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    epochs: int = 2  # RecMG training
    hint_share: float = 0.25  # lookahead: share of the slots reserved for announced rows
    lookahead_batches: int = LOOKAHEAD_BATCHES  # lookahead: a batch's rows announced L batches ahead
    seed: int = 0
    threads: int = 1
    max_requests: int = 0  # cap on counted requests a run (0: none)
    progress: Callable[[str], None] = field(default=lambda s: None)


@dataclass
class TraceSetup:
    label: str
    path: Path  # warm-up + counted samples
    samples: int
    sizes: list[int]
    unique: int
    slots: int
    model_dir: Path | None = None


def pin_batches(lookahead_batches: int) -> int:
    """The daemon's ``hint_pin_batches`` for a server announcing ``lookahead_batches`` (L) ahead: a row
    hinted when batch i starts is read by batch i+L at the latest, L+1 daemon steps on."""
    return lookahead_batches + 1


def synth_trace(path: Path, seed: int, tables: int = 8, pooling: int = 2, lookups: int = 1_000_000,
                gap: float = 2048.0) -> None:
    """A synthetic trace with Meta 2021 reuse statistics (recmgd.trace.synth), its hashed row ids made
    dense per table (a pool allocates every row of a table). ``gap``: median lookups between a row's
    uses; at 32768 with 26 tables the reuse distances straddle a 10% cache, so policies differ."""
    from recmgd.keys import key_row, key_table, make_keys
    from recmgd.trace import Trace, save_trace
    from recmgd.trace.synth import SynthConfig, synth_keys

    cfg = SynthConfig(lookups=lookups, tables=tables, pooling=pooling, gap=gap, seed=seed)
    keys = np.concatenate(list(synth_keys(cfg)))
    t, r = key_table(keys), key_row(keys)
    dense = np.empty_like(r)
    for tab in range(tables):
        m = t == tab
        dense[m] = np.unique(r[m], return_inverse=True)[1]
    per = cfg.lookups_per_sample
    n = keys.size - keys.size % per
    offsets = np.arange(0, n + 1, per, dtype=np.int64)
    save_trace(Trace(make_keys(t[:n], dense[:n]), offsets), path)


SYNTH_26 = "synthetic-26"


def synthetic_26(path: Path, samples: int, seed: int) -> None:
    """The comparison's synthetic trace: 26 tables (DLRM's Criteo count), one lookup a table a sample,
    reuse gaps of ~32K lookups, so a 10% cache sees both short and long reuse (on 2x10^4 samples: OPT's
    hit rate ~0.81, LRU's ~0.71, the floor well below both; at the generator's default gap OPT equals the
    floor and no policy can win anything)."""
    synth_trace(path, seed, tables=26, pooling=1, lookups=samples * 26, gap=32768.0)


def cut_trace(src: Path, samples: int, dst: Path) -> int:
    """The first ``samples`` samples of a trace into ``dst``; returns how many it holds."""
    from recmgd.trace import Trace, open_trace, save_trace

    tr = open_trace(src)
    samples = min(samples, tr.n_samples)
    offs = np.asarray(tr.sample_offsets[: samples + 1], dtype=np.int64)
    save_trace(Trace(np.asarray(tr.keys[: offs[-1]]), offs), dst)
    return samples


def _run(cmd: list[str], timeout: float = 3600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        tail = proc.stderr.strip()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {tail}")
    return proc.stdout


def wait_ready(sock: socket.socket, proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait for READY=1 from a child on a notify socket (the systemd notify protocol)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"recmgd exited with {proc.returncode} before READY=1: {err}")
        try:
            msg = sock.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        if "READY=1" in msg.split("\n"):
            return
    raise RuntimeError("recmgd did not send READY=1 in time")


class Stack:
    """A pool (slow tier a file under ``work``) holding the seeded weights, and for a policy a ``recmgd``
    child driving it; a context manager that stops the daemon and removes pool and file."""

    def __init__(self, tag: str, setup: TraceSetup, cfg: E2EConfig, policy: str | None,
                 lookahead: bool) -> None:
        self.tag = tag
        self.setup = setup
        self.cfg = cfg
        self.policy = policy
        self.lookahead = lookahead
        self.name = f"recmg-e2e-{os.getpid()}-{tag}"
        self.slow_file = cfg.work / f"slow-{tag}.bin"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.pool: Pool | None = None

    def __enter__(self) -> Stack:
        s, cfg = self.setup, self.cfg
        slots = s.slots if self.policy else 0
        self.pool = Pool.create(self.name, [(r, cfg.dim) for r in s.sizes], slots,
                                slow=f"ssd:{self.slow_file}", ring_records=1 << 20)
        try:
            write_weights(self.pool, s.sizes, cfg.dim, cfg.seed)
            if self.policy:
                self._start_daemon()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_daemon(self) -> None:
        s, cfg, w = self.setup, self.cfg, self.cfg.work
        ctl = w / f"control-{self.tag}.sock"
        conf = w / f"recmgd-{self.tag}.toml"
        hint_slots = int(s.slots * cfg.hint_share) if self.lookahead else 0
        pins = pin_batches(cfg.lookahead_batches)
        model = s.model_dir if self.policy == "recmg" else None
        conf.write_text(
            # coalesce: when the daemon falls behind, it merges the batches it drains at once into steps of
            # at least 1,024 lookups (fewer policy calls, so it catches up)
            f'pools = ["{self.name}"]\ninterval = 0.001\nlog_level = "warning"\ncoalesce = 1024\n'
            f'[control]\nsocket = "{ctl}"\n'
            f'[policy]\nname = "{self.policy}"\nmodel_dir = "{model or ""}"\nhint_slots = {hint_slots}\n'
            f'hint_pin_batches = {pins}\n'
            f'[policy.options]\nprefetch_budget = {max(8, s.slots // 64)}\nseed = {cfg.seed}\n')
        notify = w / f"notify-{self.tag}.sock"
        notify.unlink(missing_ok=True)
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            nsock.bind(str(notify))
            env = dict(os.environ, NOTIFY_SOCKET=str(notify))
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(conf), "--foreground"],
                env=env, stderr=subprocess.PIPE)
            wait_ready(nsock, self.daemon, timeout=180)
        finally:
            nsock.close()
            notify.unlink(missing_ok=True)

    def counters(self) -> dict[str, float]:
        """The daemon's counters of this stack's pool (DAEMON_COUNTERS; {} without a daemon or when it
        does not answer)."""
        if self.daemon is None:
            return {}
        from recmgd.daemon.control import request

        try:
            st = request(str(self.cfg.work / f"control-{self.tag}.sock"), "stats", timeout=5.0)
        except RecmgError as exc:
            log.warning("recmgd of %s: no stats (%s)", self.tag, exc)
            return {}
        pool = st.get("pools", {}).get(self.name) if isinstance(st, dict) else None
        if not isinstance(pool, dict):
            return {}
        return {k: float(pool.get(k, 0)) for k in DAEMON_COUNTERS}

    def __exit__(self, *exc: object) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None
        if self.pool is not None:
            self.pool.destroy()
            self.pool = None
        self.slow_file.unlink(missing_ok=True)


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def run_server(cfg: E2EConfig, setup: TraceSetup, pool: str | None, rates: Sequence[float],
               counts: Sequence[int], lookahead: bool, daemon_pid: int | None,
               latencies: Path, counters: Callable[[], dict[str, float]] | None = None
               ) -> list[dict[str, Any]]:
    """One server process serving the loads one after the other (one warm-up); returns its JSON result a
    load plus ``daemon_cpu`` (the daemon's share of a core while that load's requests ran) and, with
    ``counters`` (the daemon's, see :meth:`Stack.counters`), ``daemon``: how much each grew meanwhile."""
    cmd = [sys.executable, "-m", "recmgd.app.serve", "--trace", str(setup.path), "--dim", str(cfg.dim),
           "--seed", str(cfg.seed), "--warmup", str(cfg.warmup), "--requests", ",".join(map(str, counts)),
           "--rate", ",".join(f"{r:.3f}" for r in rates), "--max-batch", str(cfg.max_batch),
           "--max-wait-ms", str(cfg.max_wait_ms), "--threads", str(cfg.threads),
           "--latencies", str(latencies)]
    cmd += ["--pool", pool] if pool else ["--all-dram"]
    if lookahead:
        cmd += ["--lookahead", "--lookahead-batches", str(cfg.lookahead_batches)]
    out: list[dict[str, Any]] = []
    c0 = w0 = 0.0
    k0: dict[str, float] = {}
    # (with: a ^C or an error here kills and reaps the server, which stayed a zombie or ran on)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                msg = json.loads(line)
                if "phase" in msg:
                    c0, w0 = _cpu(daemon_pid), time.monotonic()
                    k0 = counters() if counters else {}
                    continue
                c1, w1 = _cpu(daemon_pid), time.monotonic()
                msg["daemon_cpu"] = round((c1 - c0) / (w1 - w0), 3) if w1 > w0 else 0.0
                if counters:
                    k1 = counters()
                    msg["daemon"] = {k: round(v - k0.get(k, 0.0), 6) for k, v in k1.items()}
                out.append(msg)
            err = proc.stderr.read() if proc.stderr else ""
        except BaseException:
            proc.kill()  # and reaped here: Popen's exit waits only 0.25 s after a ^C
            proc.wait()
            raise
    if proc.wait() != 0 or len(out) != len(rates):
        raise RuntimeError(f"server failed ({proc.returncode}): {err.strip()[-2000:]}")
    return out


def prepare(cfg: E2EConfig, label: str, src: Path, counted: int, train: bool) -> TraceSetup:
    """The run's trace (warm-up + ``counted`` samples), its tables, the slots, and RecMG's checkpoint
    (trained on the warm-up: ``recmg train`` trains on the first half of the file it is given)."""
    from recmgd.app.replay import table_sizes
    from recmgd.models.train_config import too_few_steps
    from recmgd.trace import open_trace

    path = cfg.work / f"{label}.trace"
    samples = cut_trace(src, cfg.warmup + counted, path)
    if samples <= cfg.warmup:
        raise TraceError(f"trace {src}: {samples} samples, not more than the warm-up's {cfg.warmup}")
    tr = open_trace(path)
    unique = int(np.unique(np.asarray(tr.keys)).size)
    setup = TraceSetup(label, path, samples, table_sizes(tr), unique, capacity_for(cfg.fraction, unique))
    if train:
        half = cfg.work / f"{label}-train.trace"
        n_half = cut_trace(src, 2 * cfg.warmup, half)
        batch = train_batch(cfg)
        short = too_few_steps(str(src), -(-n_half // batch), batch)
        if short:  # `recmg train` would refuse it
            raise TraceError(f"{short} (RecMG trains on the first {n_half} samples, twice the warm-up)")
        setup.model_dir = cfg.work / f"model-{label}"
        cfg.progress(f"{label}: training RecMG on the {cfg.warmup} warm-up samples ({setup.model_dir.name})")
        _run([sys.executable, "-m", "recmgd.cli.recmg", "train", str(half), "--out", str(setup.model_dir),
              "--fraction", str(cfg.fraction), "--batch-size", str(batch), "--epochs",
              str(cfg.epochs), "--seed", str(cfg.seed), "--quiet"])
    return setup


def train_batch(cfg: E2EConfig) -> int:
    """Samples a step RecMG is trained with: half the server's largest batch, at least 1."""
    return max(1, cfg.max_batch // 2)


def _percent_load(load: float) -> str:
    return f"{load:.0%}"


def compare(cfg: E2EConfig, counted_for: Callable[[float], int] | None = None) -> dict[str, Any]:
    """Run every (trace, system, load); returns {"results": [...], "latencies": {(trace, system, load):
    path}, "max_qps": {trace: all-DRAM most}}."""
    bad = [s for s in cfg.systems if s not in SYSTEMS]
    if bad:
        raise ValueError(f"unknown systems {bad}: use {', '.join(SYSTEMS)}")
    cfg.work.mkdir(parents=True, exist_ok=True)
    cfg.work = cfg.work.resolve()  # the daemon's config names files in it
    results: list[dict[str, Any]] = []
    lat_files: dict[tuple[str, str, float], Path] = {}
    max_qps: dict[str, float] = {}
    for label, src in cfg.traces:
        # the all-DRAM server's most: every request queued at once
        probe = prepare(cfg, label, src, max(cfg.max_batch * 50, 2000), train=False)
        n_probe = probe.samples - cfg.warmup
        cfg.progress(f"{label}: all-DRAM server's most ({n_probe} requests queued at once)")
        top = run_server(cfg, probe, None, [0.0], [n_probe], False, None, cfg.work / "probe.npz")[0]
        max_qps[label] = float(top["throughput_qps"])
        rates = [load * max_qps[label] for load in cfg.loads]
        counts = [max(1, int(r * cfg.seconds)) for r in rates]
        if cfg.max_requests:
            counts = [min(c, cfg.max_requests) for c in counts]
        setup = prepare(cfg, label, src, sum(counts), train=any(s.startswith("recmg") for s in cfg.systems))
        if setup.samples < cfg.warmup + sum(counts):  # a short trace: the loads share what it holds
            scale = (setup.samples - cfg.warmup) / sum(counts)
            counts = [max(1, int(c * scale)) for c in counts]
        cfg.progress(f"{label}: {setup.samples} samples ({cfg.warmup} warm-up), {len(setup.sizes)} "
                     f"tables, {setup.unique} unique rows, fast tier {setup.slots} slots "
                     f"({cfg.fraction:.0%}); all-DRAM most {max_qps[label]:.0f} requests/s")
        for system in cfg.systems:
            policy = None if system in ("all-dram", "no-cache") else system.split("+")[0]
            lookahead = system.endswith("+lookahead")
            tag = f"{label}-{system.replace('+', '-')}"
            with contextlib.ExitStack() as scope:
                stack = None if system == "all-dram" else scope.enter_context(
                    Stack(tag, setup, cfg, policy, lookahead))
                lat = cfg.work / f"lat-{tag}.npz"
                pid = stack.daemon.pid if stack is not None and stack.daemon is not None else None
                name = stack.name if stack else None
                outs = run_server(cfg, setup, name, rates, counts, lookahead, pid, lat,
                                  stack.counters if stack is not None and stack.daemon is not None else None)
                for i, (load, rate, out) in enumerate(zip(cfg.loads, rates, outs, strict=True)):
                    row = {"trace": label, "system": system, "load": load, "offered_qps": round(rate, 1),
                           **{k: out[k] for k in ("p50_ms", "p95_ms", "p99_ms", "throughput_qps",
                                                  "on_demand_per_batch", "slow_mb_s", "mean_batch",
                                                  "requests", "batches", "lookups", "hits", "on_demand",
                                                  "slow_bytes", "hinted_rows", "daemon_cpu")},
                           "on_demand_per_request": round(out["on_demand"] / max(out["requests"], 1), 3),
                           "all_dram_max_qps": max_qps[label], "slots": setup.slots if policy else 0,
                           "daemon": out.get("daemon", {})}
                    results.append(row)
                    lat_files[(label, system, load)] = (lat, f"arr_{i}")
                    cfg.progress(f"  {system:<16} {_percent_load(load):>4} {rate:8.0f}/s  p50 "
                                 f"{row['p50_ms']:8.2f} p99 {row['p99_ms']:8.2f} ms  "
                                 f"{row['throughput_qps']:8.0f}/s  on-demand/batch "
                                 f"{row['on_demand_per_batch']:7.1f}  slow {row['slow_mb_s']:6.1f} MB/s  "
                                 f"daemon cpu {row['daemon_cpu']:.2f}")
    return {"results": results, "latencies": lat_files, "max_qps": max_qps}


def table(results: Sequence[dict[str, Any]]) -> str:
    """The latency table, one line a (trace, system, load)."""
    head = (f"{'trace':<14} {'system':<16} {'load':>5} {'offered/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'done/s':>8} {'on-demand/batch':>15} {'slow MB/s':>9} {'daemon cpu':>10}")
    lines = [head]
    for r in results:
        lines.append(f"{r['trace']:<14} {r['system']:<16} {_percent_load(r['load']):>5} "
                     f"{r['offered_qps']:>9.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                     f"{r['throughput_qps']:>8.0f} {r['on_demand_per_batch']:>15.1f} {r['slow_mb_s']:>9.1f} "
                     f"{r['daemon_cpu']:>10.2f}")
    return "\n".join(lines)


def targets(results: Sequence[dict[str, Any]], load: float = 0.5) -> list[str]:
    """The issue's targets, measured: one line each, with the ratio and whether it is met. "recmgd-driven
    configurations" are the systems a recmgd drives (LRU or RecMG, with or without lookahead)."""
    out = []
    by = {(r["trace"], r["system"], r["load"]): r for r in results}
    for trace in dict.fromkeys(r["trace"] for r in results):
        def get(system: str, trace: str = trace) -> dict[str, Any] | None:
            return by.get((trace, system, load))

        dram, lru = get("all-dram"), get("lru")
        driven = [r for s in ("lru", "recmg", "lru+lookahead", "recmg+lookahead") if (r := get(s))]
        if dram and driven:
            best = min(driven, key=lambda r: r["p99_ms"])
            ratio = best["p99_ms"] / dram["p99_ms"]
            verdict = "met" if ratio <= 1.25 else "missed"
            out.append(f"{trace}: best recmgd-driven configuration ({best['system']}) p99 "
                       f"{best['p99_ms']:.2f} ms = {ratio:.2f}x all-DRAM's {dram['p99_ms']:.2f} ms at "
                       f"{load:.0%} load [target <= 1.25x: {verdict}]")
        others = [r for r in driven if r["system"] != "lru"]
        if lru and others:
            best = min(others, key=lambda r: r["p50_ms"])
            cut = 1 - best["p50_ms"] / lru["p50_ms"]
            verdict = "met" if cut >= 0.43 else "missed"
            rel = f"{cut:.0%} below" if cut >= 0 else f"{-cut:.0%} above"
            out.append(f"{trace}: best recmgd-driven one but plain LRU ({best['system']}) p50 "
                       f"{best['p50_ms']:.2f} ms, {rel} LRU's {lru['p50_ms']:.2f} ms "
                       f"[target >= 43% below: {verdict}]")
        a, b = get("recmg+lookahead"), get("lru+lookahead")
        if a and b:
            verdict = "met" if a["p99_ms"] < b["p99_ms"] and a["slow_bytes"] < b["slow_bytes"] else "missed"
            out.append(f"{trace}: recmg+lookahead p99 {a['p99_ms']:.2f} ms, slow tier "
                       f"{a['slow_bytes'] / 1e6:.1f} MB; lru+lookahead {b['p99_ms']:.2f} ms, "
                       f"{b['slow_bytes'] / 1e6:.1f} MB [target: lower in both: {verdict}]")
    return out


def plot(run: dict[str, Any], path: Path, cdf_load: float | None = None) -> None:
    """The PNG: per trace, each system's latency CDF (at ``cdf_load``, default the lowest load) and its p99
    against the offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = run["results"]
    traces = list(dict.fromkeys(r["trace"] for r in results))
    loads = sorted({r["load"] for r in results})
    cdf_load = loads[0] if cdf_load is None else cdf_load
    fig, axes = plt.subplots(len(traces), 2, figsize=(12, 4.2 * len(traces)), squeeze=False)
    for i, trace in enumerate(traces):
        ax_cdf, ax_p99 = axes[i]
        systems = list(dict.fromkeys(r["system"] for r in results if r["trace"] == trace))
        for system in systems:
            f = run["latencies"].get((trace, system, cdf_load))
            if f is not None and Path(f[0]).exists():
                with np.load(f[0]) as z:
                    lat = np.sort(z[f[1]]) * 1e3
                ax_cdf.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=system)
            pts = sorted((r["offered_qps"], r["p99_ms"]) for r in results
                         if r["trace"] == trace and r["system"] == system)
            ax_p99.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
        ax_cdf.set_xscale("log")
        ax_cdf.set_xlabel("latency (ms, log)")
        ax_cdf.set_ylabel("share of requests")
        ax_cdf.set_title(f"{trace}: latency CDF at {cdf_load:.0%} load")
        ax_cdf.grid(True, alpha=0.3)
        ax_cdf.legend(fontsize=8)
        ax_p99.set_yscale("log")
        ax_p99.set_xlabel("offered load (requests/s)")
        ax_p99.set_ylabel("p99 latency (ms, log)")
        ax_p99.set_title(f"{trace}: p99 against offered load")
        ax_p99.grid(True, alpha=0.3)
        ax_p99.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
