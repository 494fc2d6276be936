"""How much memory `recmg train` will need, estimated before the heavy work (issue #13: a trace of 10^8+
lookups must be refused clearly, or sampled, rather than OOM-killed).

The estimate follows what recmgd.models.train holds at each stage (byte counts below, a margin for what
torch and the allocator add on top, calibrated against measured peaks in BENCHMARKS.md, "Training on a
hash sample of the rows"): the peak is the interpreter with torch, plus the larger of reading the trace
and training (what training itself adds, the trace's steps, held to the end, and the largest stage):

- reading: the trace itself (mapped or parsed: a key a lookup, an offset a sample) and the step builder's
  output, or with ``--sample`` one chunk's temporaries and the sampled steps twice (list and flat);
- OPT labels, the caching model's dataset and its training, the hazard fit: bytes per training access
  (the deduplicated lookups of the first half) and per row (the row history, the key map);
- the prefetching model: its fixed-size dataset (TrainConfig.max_samples steps) and an embedding row a
  row with its gradient and Adam's two moments.

With ``--sample R`` (SHARDS: a hash-chosen R of the rows) every per-access and per-row term scales by R;
the trace's own bytes do not (it is still read, chunk by chunk). The deduplicated lookups and the unique
rows are only known after a read; recmgd.cli.cmd_train.probe_size measures them on a hash sample of the
rows first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmgd.models.features import N_CAND_FEATURES, N_FEATURES, ROW_DTYPE
from recmgd.models.train_config import TrainConfig

log = logging.getLogger(__name__)

MB = 1 << 20
#: the interpreter with numpy, torch and recmgd imported (RSS after the imports: ~280 MB)
BASE_BYTES = 300 * MB
#: what training a model adds to that by itself (autograd, Adam, the threads' arenas): amazon_video
#: -b 256, whose arrays are ~30 MB, peaks at 460 MB
TRAINING_BYTES = 140 * MB
#: the trace while it is read: an int64 key a lookup (mapped, or parsed from text) and an offset a sample
TRACE_BYTES_PER_LOOKUP = 8
TRACE_BYTES_PER_SAMPLE = 8
#: lookups `recmg train --sample` reads at a time (recmgd.cli.cmd_train.read_sampled_steps), and the
#: bytes a lookup of such a chunk costs while it is cut into steps (keys, step bounds, builder output)
SAMPLE_CHUNK_LOOKUPS = 1 << 22
CHUNK_BYTES_PER_LOOKUP = 16
#: a deduplicated lookup of the flat steps (int64)
STEP_KEY_BYTES = 8
#: per training access, the largest stage: the caching dataset (13 float32 features, int64 table slot,
#: 2 float32 targets), the minibatch permutation (int64), the OPT miss mask; OPT's labels (next use,
#: next occurrence, sort temporaries, the C core's future) peak lower
CACHE_BYTES_PER_ACCESS = N_FEATURES * 4 + 8 + 2 * 4 + 8 + 1
#: per row in the caching stage: the history record and the row's table id (int64) with doubling growth
#: (up to twice the rows) and the key map (C hash map at load <= 1/2, id -> key array)
CACHE_BYTES_PER_ROW = 2 * (ROW_DTYPE.itemsize + 8) + 48
#: per row while the prefetching model trains: a ``dim``-wide float32 embedding row, its dense gradient,
#: Adam's two moments and the optimiser's temporaries (counted in embedding rows), and the id -> key array
PREFETCH_EMBEDDING_COPIES = 7
PREFETCH_BYTES_PER_ROW_EXTRA = 8
#: a margin over the arrays counted above for what torch's allocator and glibc's heap add (the counts
#: alone come within 5% of the measured peaks in BENCHMARKS.md)
OVERHEAD = 1.1


@dataclass(frozen=True)
class TraceSize:
    """What the estimate needs to know about a trace (at sample rate 1).

    ``dedup_lookups`` and ``train_rows`` default to their upper bounds (``lookups``, ``unique_rows``):
    the lookups after deduplication within each step, and the distinct rows of the training half."""

    lookups: int
    samples: int
    unique_rows: int
    dedup_lookups: int | None = None
    train_rows: int | None = None


def _prefetch_sample_bytes(cfg: TrainConfig) -> int:
    """Bytes of one sampled step of the prefetching dataset (recmgd.models.train.PrefetchData)."""
    m = cfg.max_cand + cfg.max_pos
    per_cand = 8 + N_FEATURES * 4 + N_CAND_FEATURES * 4 + 8 + 4 + 4 + 4  # ids x c t is_cand label weight
    per_ctx = 8 + N_FEATURES * 4 + 8 + 4  # ids x t mask
    return m * per_cand + (cfg.ctx_now + cfg.ctx_past) * per_ctx


def estimate_train_bytes(lookups: int, unique_rows: int, step_batch: int, sample: float = 1.0, *,
                         samples: int | None = None, dedup_lookups: int | None = None,
                         train_rows: int | None = None, cfg: TrainConfig | None = None) -> int:
    """Estimated peak bytes of `recmg train` on a trace of ``lookups`` lookups (``samples`` samples,
    default one a lookup) and ``unique_rows`` distinct rows, in steps of ``step_batch`` samples, on the
    hash sample of rate ``sample`` of the rows. ``dedup_lookups`` (after deduplication in each step,
    default ``lookups``) and ``train_rows`` (distinct rows of the first half, default ``unique_rows``)
    sharpen it where known."""
    if not 0.0 < sample <= 1.0:
        raise ValueError(f"sample rate must be in (0, 1], got {sample}")
    if step_batch < 1:
        raise ValueError(f"step batch must be >= 1, got {step_batch}")
    cfg = cfg or TrainConfig()
    n_samples = lookups if samples is None else samples
    dedup = lookups if dedup_lookups is None else min(dedup_lookups, lookups)
    rows = unique_rows if train_rows is None else min(train_rows, unique_rows)
    trace = TRACE_BYTES_PER_LOOKUP * lookups + TRACE_BYTES_PER_SAMPLE * n_samples
    if sample >= 1.0:
        # the step builder's output is as long as the trace (kept whole when over half of it is used)
        held = STEP_KEY_BYTES * lookups
        reading = trace + held
    else:
        held = STEP_KEY_BYTES * sample * dedup
        reading = trace + CHUNK_BYTES_PER_LOOKUP * min(lookups, SAMPLE_CHUNK_LOOKUPS) + 2 * held
    accesses = sample * dedup / 2  # the first half trains
    rows_r = sample * rows
    train_steps = -(-n_samples // step_batch) // 2
    pf_steps = min(cfg.max_samples, max(0, train_steps - cfg.past_steps - cfg.window))
    caching = CACHE_BYTES_PER_ACCESS * accesses + CACHE_BYTES_PER_ROW * rows_r
    prefetching = (pf_steps * _prefetch_sample_bytes(cfg)
                   + rows_r * (PREFETCH_EMBEDDING_COPIES * cfg.dim * 4 + PREFETCH_BYTES_PER_ROW_EXTRA))
    training = held + max(caching, prefetching)
    return int(BASE_BYTES + max(OVERHEAD * reading, TRAINING_BYTES + OVERHEAD * training))


def estimate_for(size: TraceSize, step_batch: int, sample: float = 1.0, cfg: TrainConfig | None = None
                 ) -> int:
    """:func:`estimate_train_bytes` of a :class:`TraceSize`."""
    return estimate_train_bytes(size.lookups, size.unique_rows, step_batch, sample, samples=size.samples,
                                dedup_lookups=size.dedup_lookups, train_rows=size.train_rows, cfg=cfg)


def fitting_rate(size: TraceSize, step_batch: int, limit_bytes: int, cfg: TrainConfig | None = None
                 ) -> float | None:
    """The largest sample rate, rounded down to two significant digits, whose estimate is within
    ``limit_bytes`` (1.0 when the whole trace fits), or None when not even the smallest rate fits."""
    if estimate_for(size, step_batch, 1.0, cfg) <= limit_bytes:
        return 1.0
    lo, hi = 0.0, 1.0  # estimate(hi) > limit throughout
    for _ in range(50):
        mid = (lo + hi) / 2
        if mid > 0 and estimate_for(size, step_batch, mid, cfg) <= limit_bytes:
            lo = mid
        else:
            hi = mid
    if lo <= 0.0:
        return None
    digits = 1 - int(np.floor(np.log10(lo)))  # two significant digits, rounded down
    rate = float(np.floor(lo * 10**digits) / 10**digits)
    return rate if rate > 0 and estimate_for(size, step_batch, rate, cfg) <= limit_bytes else None


def mem_available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where the kernel does not report it."""
    try:
        text = Path(meminfo).read_text()
    except OSError as exc:
        log.debug("no %s: %s", meminfo, exc)
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() else None
    return None


#: the share of MemAvailable `recmg train` allows itself by default (--memory-mb)
DEFAULT_AVAILABLE_SHARE = 0.8


def default_limit_bytes() -> int | None:
    """`recmg train`'s default memory limit: DEFAULT_AVAILABLE_SHARE of MemAvailable (None: unknown)."""
    avail = mem_available_bytes()
    return None if avail is None else int(avail * DEFAULT_AVAILABLE_SHARE)
