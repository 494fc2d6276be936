"""An open-loop DLRM inference server over a trace: ``python -m recmgd.app.serve``.

Requests are the trace's samples, in order; they arrive open-loop (a Poisson process at ``--rate``
requests/s, independent of the server; ``--rate 0``: all at once, which measures the most the server
does), are batched (up to ``--max-batch`` requests; a batch leaves when full or when its first request
has waited ``--max-wait-ms``), and run through TorchRec's DLRM. A request's latency is its batch's
completion time minus its arrival time. Dense features are generated (seeded); the sparse ids are the
trace's.

The model is TorchRec's ``torchrec.models.dlrm.DLRM`` over TorchRec's own EmbeddingBagCollection with
every row in DRAM (``--all-dram``), or the same DLRM with the collection swapped for recmg's
``TieredEmbeddingBagCollection`` over a pool (``--pool NAME``, which holds the weights: ``--write-weights``
writes them, otherwise whoever created the pool did). With ``--lookahead`` the server announces the rows
of queued requests (``collection.prefetch``: hint records) so a daemon can fetch them before their batch
runs: ``--lookahead-batches L`` announces a batch's rows when it is L batches from running
(when batch i starts, the queued requests up to the end of batch i+L, counting full batches; a request
that arrives within that window is announced at once), so a long queue does not flood the daemon's hint
reserve with rows needed much later; the daemon should pin hinted rows L+1 batches
(``hint_pin_batches``, recmgd.app.e2e does). ``--lookahead-batches 0``: every request's rows at arrival.

The arrival clock is virtual and the loop single-threaded: at any moment the queue holds every request
whose arrival time has passed; the server sleeps only when it has nothing to do. This is what a real
front end with a receive queue sees, without a client process to perturb the timing.

Several rates (``--rate 2000,3600``) are served one after the other after one warm-up, each on the next
requests of the trace. For each: a line ``{"phase": "measure", "load": i}`` when it starts, then one JSON
object (latency percentiles, throughput, on-demand fetches per batch, slow-tier bytes).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from recmgd.app.e2e import LOOKAHEAD_BATCHES, MAX_BATCH, MAX_WAIT_MS
from recmgd.app.replay import table_sizes
from recmgd.app.trec_model import DENSE_FEATURES, Requests, dram_dlrm, pool_dlrm
from recmgd.app.weights import write_weights
from recmgd.cli.argtypes import check_output_file, integer, number
from recmgd.errors import RecmgError
from recmgd.fileout import whole_file, write_reason
from recmgd.pool import Pool
from recmgd.trace import open_trace

log = logging.getLogger("recmgd.app.serve")


@dataclass
class ServeResult:
    """What one run of the server measured (latencies in ms)."""

    requests: int
    batches: int
    offered_qps: float
    throughput_qps: float
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    mean_batch: float
    lookups: int = 0
    hits: int = 0
    on_demand: int = 0
    on_demand_per_batch: float = 0.0
    slow_bytes: int = 0
    slow_mb_s: float = 0.0
    hinted_rows: int = 0
    checked: int = 0
    max_abs_error: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def arrivals(n: int, rate: float, seed: int) -> np.ndarray:
    """Arrival offsets (s) of n requests: a Poisson process at ``rate``/s; all zero when rate is 0."""
    if rate < 0:
        raise ValueError(f"rate must be >= 0 requests/s, got {rate}")
    if rate == 0:
        return np.zeros(n)
    gaps = np.random.default_rng([seed, 1]).exponential(1.0 / rate, size=n)
    return np.cumsum(gaps) - gaps[0]


def _counters(pool: Pool | None) -> dict[str, int]:
    return dict(pool.stats()["process"]) if pool is not None else {}


def warm_up(model: torch.nn.Module, requests: Requests, lo: int, hi: int, max_batch: int) -> None:
    """Samples lo..hi-1 back to back in full batches (not timed): the caches' history."""
    gen = torch.Generator().manual_seed(hi)
    with torch.inference_mode():
        for s in range(lo, hi, max_batch):
            e = min(hi, s + max_batch)
            model(torch.randn(e - s, DENSE_FEATURES, generator=gen), requests.kjt(s, e))


def announce_end(admitted: int, after: int, lookahead_batches: int, max_batch: int) -> int:
    """How far (request index, exclusive) the rows of queued requests are announced: the ``admitted``
    requests (arrived so far), at most ``lookahead_batches`` full batches after request ``after`` (the end
    of the batch starting now, or the head of the queue while the server waits); 0 batches: all of
    them."""
    if lookahead_batches <= 0:
        return admitted
    return min(admitted, after + lookahead_batches * max_batch)


def serve(model: torch.nn.Module, requests: Requests, start: int, n: int, rate: float, max_batch: int,
          max_wait: float, seed: int, collection: Any = None, lookahead: bool = False,
          reference: torch.nn.Module | None = None, pool: Pool | None = None,
          lookahead_batches: int = LOOKAHEAD_BATCHES) -> tuple[ServeResult, np.ndarray]:
    """Serve requests start..start+n-1 arriving at ``rate``; returns the summary and every latency (s).

    ``collection``: recmg's collection, for ``lookahead``: announce the rows of queued requests up to
    ``lookahead_batches`` batches ahead of the one running (:func:`announce_end`; 0: at arrival).
    ``reference``: a model every batch's output is compared with (the largest difference is reported).
    """
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    if max_wait < 0:
        raise ValueError(f"max wait must be >= 0 s, got {max_wait}")
    if lookahead_batches < 0:
        raise ValueError(f"lookahead batches must be >= 0, got {lookahead_batches}")
    if lookahead and collection is None:
        raise ValueError("lookahead needs recmg's collection (a pool), not the all-DRAM model")
    if not 0 <= start or start + n > requests.n:
        raise ValueError(f"requests {start}..{start + n - 1}: the trace has {requests.n} samples")
    dense = torch.randn(n, DENSE_FEATURES, generator=torch.Generator().manual_seed(seed))
    arrive = arrivals(n, rate, seed)
    done = np.zeros(n)
    c0 = _counters(pool)
    worst = 0.0
    checked = hinted = batches = 0
    head = admitted = announced = 0  # next request to serve; requests arrived; requests announced
    t0 = time.perf_counter()

    def announce(after: int) -> None:
        nonlocal announced, hinted
        end = announce_end(admitted, after, lookahead_batches, max_batch)
        if announced < end:
            hinted += collection.prefetch(requests.kjt(start + announced, start + end))
            announced = end

    with torch.inference_mode():
        while head < n:
            now = time.perf_counter() - t0
            admitted = int(np.searchsorted(arrive, now, side="right"))
            if lookahead:
                announce(head)
            if head == admitted:  # nothing queued: wait for the next arrival
                time.sleep(max(0.0, arrive[head] - now))
                continue
            queued = admitted - head
            due = arrive[head] + max_wait
            if queued < max_batch and now < due:
                nxt = arrive[admitted] if admitted < n else due
                time.sleep(max(0.0, min(due, nxt) - now))
                continue
            e = head + min(queued, max_batch)
            if lookahead:
                announce(e)  # batch i starts: the rows of batch i+L
            kjt = requests.kjt(start + head, start + e)
            out = model(dense[head:e], kjt)
            done[head:e] = time.perf_counter() - t0
            if reference is not None:
                worst = max(worst, float((out - reference(dense[head:e], kjt)).abs().max()))
                checked += e - head
            batches += 1
            head = e
    lat = done - arrive
    span = float(done[-1] - arrive[0]) if n else 0.0
    c1 = _counters(pool)
    d = {k: c1.get(k, 0) - c0.get(k, 0) for k in ("lookups", "hits", "on_demand", "slow_bytes")}
    ms = [round(float(np.percentile(lat, q)) * 1e3, 3) if n else 0.0 for q in (50, 95, 99)]
    res = ServeResult(
        requests=n, batches=batches, offered_qps=float(rate),
        throughput_qps=round(n / span, 1) if span > 0 else 0.0, seconds=round(span, 3),
        p50_ms=ms[0], p95_ms=ms[1], p99_ms=ms[2], mean_ms=round(float(lat.mean()) * 1e3, 3) if n else 0.0,
        mean_batch=round(n / max(batches, 1), 2), lookups=d["lookups"], hits=d["hits"],
        on_demand=d["on_demand"],
        on_demand_per_batch=round(d["on_demand"] / max(batches, 1), 2), slow_bytes=d["slow_bytes"],
        slow_mb_s=round(d["slow_bytes"] / span / 1e6, 3) if span > 0 else 0.0, hinted_rows=hinted,
        checked=checked, max_abs_error=worst if reference is not None else None)
    return res, lat


def _fail(message: str) -> int:
    sys.stderr.write(message + "\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recmgd.app.serve", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pool", help="attach this recmg pool (recmg's collection)")
    src.add_argument("--all-dram", action="store_true", help="TorchRec's own collection, every row in DRAM")
    p.add_argument("--trace", required=True, help="the requests' sparse ids (one request a sample)")
    p.add_argument("--dim", type=int, default=32, help="embedding dim (default %(default)s)")
    p.add_argument("--seed", type=integer(0, (1 << 63) - 1), default=0,
                   help="weights, dense features and arrivals")
    p.add_argument("--warmup", type=int, default=0, help="samples served back to back first, not counted")
    p.add_argument("--requests", default="0",
                   help="requests counted at each rate, comma-separated or one for all (0: the rest)")
    p.add_argument("--rate", default="0",
                   help="offered requests/s, Poisson (0: all at once); comma-separated: one load after "
                        "the other, each on the next requests of the trace")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH)
    p.add_argument("--max-wait-ms", type=number(0), default=MAX_WAIT_MS)
    p.add_argument("--lookahead", action="store_true",
                   help="announce queued requests' rows ahead of their batch")
    p.add_argument("--lookahead-batches", type=int, default=LOOKAHEAD_BATCHES, metavar="L",
                   help="with --lookahead: announce a batch's rows when it is L batches from running "
                        "(0: each request's at arrival); the daemon should pin hints L+1 batches "
                        "(default %(default)s)")
    p.add_argument("--write-weights", action="store_true", help="write the seeded weights into the pool")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and the pool's) (default 1)")
    p.add_argument("--check", action="store_true",
                   help="compare every batch's output with the all-DRAM model (same weights)")
    p.add_argument("--latencies", help="write every request's latency (s) to this .npz (an array a rate)")
    p.add_argument("--json", help="also write the results (a list, one a rate) to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name, v, low in (("--dim", args.dim, 1), ("--max-batch", args.max_batch, 1),
                         ("--threads", args.threads, 1), ("--warmup", args.warmup, 0),
                         ("--lookahead-batches", args.lookahead_batches, 0)):
        if v < low:
            p.error(f"{name} must be >= {low}, got {v}")
    try:
        rates = [float(x) for x in args.rate.split(",")]
        counts = [int(x) for x in args.requests.split(",")]
    except ValueError:
        p.error(f"--rate and --requests: comma-separated numbers, got {args.rate!r} and {args.requests!r}")
    if len(counts) == 1:
        counts *= len(rates)
    if len(counts) != len(rates):
        p.error(f"--requests: one count, or one for each of the {len(rates)} rates")
    if any(not math.isfinite(r) or r < 0 for r in rates) or any(c < 0 for c in counts):
        p.error("--rate and --requests must be finite and >= 0")
    try:  # before any work: results are not lost to an output that cannot be written
        for flag, path in (("--latencies", args.latencies), ("--json", args.json)):
            if path:
                check_output_file(path, flag)
    except RecmgError as e:
        p.error(str(e))
    if args.lookahead and args.all_dram:
        p.error("--lookahead needs --pool (the all-DRAM model has nothing to prefetch)")
    torch.set_num_threads(args.threads)
    try:
        trace = open_trace(args.trace)
    except (OSError, ValueError, RecmgError) as e:
        return _fail(f"serve: cannot read trace {args.trace}: {e}")
    sizes = table_sizes(trace)
    requests = Requests(trace, len(sizes))
    if len(rates) > 1 and 0 in counts:
        return _fail("serve: several rates need a request count each (not 0)")
    if args.warmup > requests.n:
        return _fail(f"serve: warm-up {args.warmup} > the trace's {requests.n} samples")
    counts = [c or requests.n - args.warmup for c in counts]
    if args.warmup + sum(counts) > requests.n:
        return _fail(f"serve: warm-up {args.warmup} + {sum(counts)} requests > the trace's {requests.n} "
                     "samples")
    pool = collection = None
    try:
        if args.pool:
            try:
                pool = Pool.attach(args.pool, threads=args.threads)
            except RecmgError as e:
                return _fail(f"serve: cannot attach pool {args.pool}: {e}")
            got = [t.rows for t in pool.tables]
            if len(got) < len(sizes) or any(g < s for g, s in zip(got, sizes, strict=False)):
                return _fail(f"serve: pool {args.pool}'s tables {got} do not hold the trace's {sizes}")
            try:  # (the pool is checked against the model before a row is written)
                model, collection = pool_dlrm(pool, args.dim, args.seed)
                if args.write_weights:
                    write_weights(pool, got, args.dim, args.seed)
            except (ValueError, RecmgError) as e:
                return _fail(f"serve: {e}")
            requests.n_tables = len(got)
            requests.names = [f"f{t}" for t in range(len(got))]
            sizes = got
        else:
            model = dram_dlrm(sizes, args.dim, args.seed)
        reference = dram_dlrm(sizes, args.dim, args.seed) if args.check else None
        t0 = time.perf_counter()
        warm_up(model, requests, 0, args.warmup, args.max_batch)
        warm_s = time.perf_counter() - t0
        results, lats = [], []
        start = args.warmup
        for i, (rate, n) in enumerate(zip(rates, counts, strict=True)):
            # a harness may sample the daemon from here to the result line
            sys.stdout.write(json.dumps({"phase": "measure", "load": i}) + "\n")
            sys.stdout.flush()
            res, lat = serve(model, requests, start, n, rate, args.max_batch, args.max_wait_ms / 1e3,
                             args.seed + i, collection=collection, lookahead=args.lookahead,
                             reference=reference, pool=pool, lookahead_batches=args.lookahead_batches)
            res.extra = {"warmup_requests": args.warmup, "warmup_s": round(warm_s, 3), "first": start,
                         "system": "all-dram" if args.all_dram else "recmg", "lookahead": args.lookahead,
                         "lookahead_batches": args.lookahead_batches if args.lookahead else None,
                         "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
            start += n
            results.append(asdict(res))
            lats.append(lat)
            sys.stdout.write(json.dumps(results[-1]) + "\n")
            sys.stdout.flush()
    finally:
        if pool is not None:
            pool.close()
    try:
        if args.latencies:
            with whole_file(args.latencies) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, *lats)
        if args.json:
            with whole_file(args.json) as tmp:
                tmp.write_text(json.dumps(results) + "\n")
    except OSError as e:
        return _fail(f"serve: cannot write {e.filename or 'the results'}: {write_reason(e)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
