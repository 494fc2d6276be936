"""`recmg train TRACE --out DIR`: train the RecMG caching and prefetching models on the first half of a
trace (and the Voyager baseline with --voyager) and write a versioned checkpoint directory.

With ``--page-bytes P [--row-bytes R]`` the models are trained on page keys instead (for recmgd's page
mode and ``recmg sim --pages``): each step's rows become the pages of P bytes that hold them, as
``recmg sim --pages`` sees them (recmgd.sim.pages.to_pages, rows of R bytes, by default
recmgd.sim.runner.DEFAULT_ROW_BYTES as in ``recmg sim``), and the capacity is the pages that the DRAM of
the row-slot tier holds (fraction x unique rows x R // P, at least 1). The checkpoint records its
granularity (config.json ``granularity``), and the daemon and the simulator refuse it where the other
granularity is run.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time

import numpy as np

from recmgd.cli.argtypes import (
    BYTES,
    EPOCHS,
    FRACTION,
    SEED,
    STEP_BATCH,
    THREADS,
    check_output_dir,
    integer,
)
from recmgd.errors import ModelError, TraceError
from recmgd.keys import capacity_for
from recmgd.models.train_config import TrainConfig, too_few_steps
from recmgd.models.train_memory import MB, TraceSize, default_limit_bytes, estimate_for, fitting_rate
from recmgd.sim.runner import DEFAULT_ROW_BYTES
from recmgd.trace.steps import Steps

log = logging.getLogger(__name__)


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE",
                        help="the trace to train on (any of the four formats, recognised by content)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="checkpoint directory to write: a new or empty one, or a checkpoint, which is "
                             "replaced when training is done")
    parser.add_argument("--fraction", type=FRACTION, default=0.1,
                        help="fast-tier capacity as a fraction of the trace's unique rows (default 0.1)")
    parser.add_argument("--batch-size", "-b", type=STEP_BATCH, default=16, dest="step_batch",
                        help="samples per step (default 16)")
    parser.add_argument("--epochs", type=EPOCHS, default=4, help="training epochs (default 4)")
    parser.add_argument("--batch", type=integer(1, 1 << 24), default=256,
                        help="training minibatch (default 256)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=THREADS, default=1, help="torch threads (default 1)")
    parser.add_argument("--loss", choices=("chamfer", "ce"), default="chamfer",
                        help="prefetching model's loss: the Chamfer set loss or plain cross-entropy")
    parser.add_argument("--voyager", action="store_true", help="also train the Voyager baseline")
    parser.add_argument("--page-bytes", type=BYTES, default=None, metavar="P",
                        help="train on page keys: pages of P bytes of the slow tier (recmgd's page mode: "
                             "4096), for page mode and `recmg sim --pages`")
    parser.add_argument("--row-bytes", type=BYTES, default=None, metavar="R",
                        help=f"with --page-bytes: bytes a row (default {DEFAULT_ROW_BYTES}, as `recmg sim`)")
    parser.add_argument("--sample", type=float, default=1.0, metavar="RATE",
                        help="train on a hash-chosen RATE of the rows with the capacity scaled alike "
                             "(SHARDS), read chunk by chunk: memory bounded by RATE x the trace (default 1)")
    parser.add_argument("--memory-mb", type=float, default=None, metavar="MB",
                        help="refuse (exit 2, naming the --sample rate that would fit) when the estimated "
                             "peak memory exceeds MB (default: 80%% of MemAvailable; 0: no check)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar and no output but warnings and errors")


def read_steps(path: str, batch: int) -> Steps:
    """The protocol's steps of a trace file (any format the trace package reads)."""
    from recmgd.trace import open_trace

    trace = open_trace(path)
    if trace.n_lookups == 0:
        raise TraceError(f"{path}: no lookups to train on")
    return trace.steps(batch)


def read_sampled_steps(path: str, batch: int, rate: float, chunk_lookups: int = 1 << 22) -> list[np.ndarray]:
    """The protocol's steps of a trace file, each cut to the rows of the hash sample of ``rate``
    (recmgd.models.sampling), read about ``chunk_lookups`` at a time (never the whole trace's steps)."""
    from recmgd.models.sampling import sampled
    from recmgd.trace import open_trace

    tr = open_trace(path)
    n_steps = tr.n_steps(batch)
    chunk_steps = max(1, chunk_lookups * n_steps // max(tr.n_lookups, 1))
    out: list[np.ndarray] = []
    for _, chunk in tr.iter_steps(batch, chunk_steps):
        keep = sampled(chunk.keys, rate)
        offs = chunk.offsets - chunk.offsets[0]
        kept = np.concatenate([[0], np.cumsum(keep)])[offs]  # sampled keys before each step's start
        keys = np.asarray(chunk.keys)[keep]
        out.extend(keys[kept[i]:kept[i + 1]].copy() for i in range(len(offs) - 1))
    return out


#: lookups the memory probe reads (a hash sample of the rows of about this many lookups)
PROBE_LOOKUPS = 1 << 20


def probe_size(path: str, batch: int) -> TraceSize:
    """The trace's lookups and samples, and its deduplicated lookups, unique rows and the training half's
    rows, measured on a hash sample of about PROBE_LOOKUPS lookups and scaled up (SHARDS)."""
    from recmgd.trace import open_trace

    tr = open_trace(path)
    n, n_samples = tr.n_lookups, tr.n_samples
    del tr
    rate = min(1.0, PROBE_LOOKUPS / max(n, 1))
    steps = read_sampled_steps(path, batch, rate)
    half = len(steps) // 2
    flat = np.concatenate(steps) if steps else np.zeros(0, np.int64)
    first = int(sum(len(x) for x in steps[:half]))
    return TraceSize(lookups=n, samples=n_samples, unique_rows=round(len(np.unique(flat)) / rate),
                     dedup_lookups=round(len(flat) / rate),
                     train_rows=round(len(np.unique(flat[:first])) / rate))


def check_memory(path: str, batch: int, sample: float, limit_bytes: int, cfg: TrainConfig,
                 can_sample: bool = True) -> tuple[int, str | None, bool]:
    """The estimated peak bytes of training ``path``; None when that fits in ``limit_bytes``, else
    the one-line refusal (the estimate, the limit, the --sample rate that would fit, where
    ``can_sample``); and whether the estimate is only the upper bound. Upper bounds first (every lookup
    a distinct row): only a trace that might not fit is probed."""
    from recmgd.trace import open_trace

    tr = open_trace(path)
    size = TraceSize(lookups=tr.n_lookups, samples=tr.n_samples, unique_rows=tr.n_lookups)
    del tr
    est = estimate_for(size, batch, sample, cfg)
    bound = est <= limit_bytes
    if not bound:
        size = probe_size(path, batch)
        est = estimate_for(size, batch, sample, cfg)
    log.debug("%s: estimated peak %.0f MB (limit %.0f MB; %s)", path, est / MB, limit_bytes / MB, size)
    if est <= limit_bytes:
        return est, None, bound
    if not can_sample:
        hint = "--sample (row keys only) does not apply"
    elif (rate := fitting_rate(size, batch, limit_bytes, cfg)) is not None:
        hint = f"--sample {rate:g} would fit"
    else:
        least = estimate_for(size, batch, 1e-9, cfg)
        hint = f"no --sample rate fits (at the smallest, about {least / MB:,.0f} MB)"
    return est, (f"recmg train: {path}: needs about {est / MB:,.0f} MB by estimate at --sample {sample:g}, "
            f"over the limit of {limit_bytes / MB:,.0f} MB (--memory-mb); {hint}"), False


class _Bar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int, loss: float, rate: float) -> None:
        if not self.enabled:
            return
        if stage != self.stage and self.stage:
            sys.stderr.write("\n")
        self.stage = stage
        width = 30
        fill = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{stage:9s} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} "
                         f"loss {loss:.4f} {rate:,.0f} lookups/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.stage:
            sys.stderr.write("\n")


def main(args: argparse.Namespace) -> int:
    from recmgd.models import checkpoint
    from recmgd.models.granularity import Granularity
    from recmgd.models.train import train_models

    if args.row_bytes is not None and args.page_bytes is None:
        print("recmg train: --row-bytes goes with --page-bytes (rows are trained on as they are)",
              file=sys.stderr)
        return 2
    granularity = Granularity.rows()
    if args.page_bytes is not None:
        row_bytes = DEFAULT_ROW_BYTES if args.row_bytes is None else args.row_bytes
        try:
            granularity = Granularity.pages(args.page_bytes, row_bytes)
        except ValueError as exc:
            print(f"recmg train: --page-bytes, --row-bytes: {exc}", file=sys.stderr)
            return 2
    if not 0.0 < args.sample <= 1.0:
        print(f"recmg train: --sample: a rate in (0, 1], got {args.sample}", file=sys.stderr)
        return 2
    if args.sample < 1.0 and granularity.is_pages:
        print("recmg train: --sample goes with row keys, not --page-bytes", file=sys.stderr)
        return 2
    if args.memory_mb is not None and not (math.isfinite(args.memory_mb) and args.memory_mb >= 0):
        print(f"recmg train: --memory-mb: MB >= 0 (0: no check), got {args.memory_mb}", file=sys.stderr)
        return 2
    if args.memory_mb is not None and args.memory_mb > 0 and int(args.memory_mb * MB) == 0:
        # (a limit under one byte would read as 0, "no check": the opposite of what was asked)
        print(f"recmg train: --memory-mb: {args.memory_mb:g} MB is less than a byte; give 0 for no check "
              "or a limit of at least one byte", file=sys.stderr)
        return 2
    # --out: a new directory, an empty one, or a checkpoint (replaced whole when training is done); never
    # files of another kind, nor another program's config.json, which the checkpoint's would overwrite
    check_output_dir(args.out, "--out")
    try:
        checkpoint.check_save_dir(args.out)
    except ModelError as exc:
        raise ModelError(f"--out {exc}") from None
    cfg = TrainConfig(epochs=args.epochs, batch=args.batch, seed=args.seed, prefetch_loss=args.loss)
    limit = default_limit_bytes() if args.memory_mb is None else int(args.memory_mb * MB)
    memory = ""
    if limit:  # before the trace is read whole or any model trained; nothing is written on refusal
        est, refusal, bound = check_memory(args.trace, args.step_batch, args.sample, limit, cfg,
                                           can_sample=not granularity.is_pages)
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 2
        memory = (f", peak memory at most {est / MB:,.0f} MB (an upper bound: every lookup taken as a "
                  f"distinct row; limit {limit / MB:,.0f} MB)" if bound else
                  f", peak memory about {est / MB:,.0f} MB by estimate (limit {limit / MB:,.0f} MB)")
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.sample < 1.0:
        steps = Steps.from_list(read_sampled_steps(args.trace, args.step_batch, args.sample))
    else:
        steps = read_steps(args.trace, args.step_batch)
    half = len(steps) // 2
    short = too_few_steps(args.trace, len(steps), args.step_batch)
    if short:
        raise TraceError(short)
    if steps.offsets[half] == steps.offsets[0]:
        kept = (f" (--sample {args.sample:g} kept none of their rows; a larger rate keeps some)"
                if args.sample < 1.0 else "")
        raise TraceError(f"trace {args.trace}: no lookups in the first {half} steps, which the models train "
                         f"on{kept}")
    n_unique = len(np.unique(steps.keys[steps.offsets[0]:steps.offsets[-1]]))
    try:
        capacity = capacity_for(args.fraction, n_unique)
    except ValueError as exc:
        print(f"recmg train: --fraction: {exc}", file=sys.stderr)
        return 2
    unit = "rows"
    meta_pages: dict[str, object] = {}
    if granularity.is_pages:
        from recmgd.sim.pages import to_pages

        steps, _ = to_pages(steps, granularity.row_bytes, granularity.page_bytes)  # same halves, of pages
        # the pages the DRAM of `capacity` row slots holds, as `recmg sim --pages` gives them
        capacity = max(1, capacity * granularity.row_bytes // granularity.page_bytes)
        unit = "pages"
        meta_pages = {"unique_pages": len(np.unique(steps.keys[steps.offsets[0]:steps.offsets[-1]]))}
    which = ["cache", "prefetch"] + (["voyager"] if args.voyager else [])
    if args.quiet:  # nothing but warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
    bar = _Bar(sys.stderr.isatty() and not args.quiet)
    if not args.quiet:
        print(f"training {', '.join(which)} on {half} of {len(steps)} steps "
              f"({int(steps.offsets[half] - steps.offsets[0]):,} lookups), capacity {capacity} {unit}"
              + (f" ({granularity.describe()})" if granularity.is_pages else "") + memory, flush=True)
    t0 = time.perf_counter()
    trained = train_models(steps.slice(0, half), capacity, cfg, which=which, progress=bar)
    bar.close()
    if args.sample < 1.0:
        # the models saw 1/rate fewer rows a step and a tier 1/rate smaller: record the whole trace's
        # (the hazard table's horizon, capacity / rows a step, is the same either way)
        trained.stats["mean_step_len"] /= args.sample
        trained.stats["sample_rate"] = args.sample
        trained.capacity = max(1, round(capacity / args.sample))
    meta = {"trace": args.trace, "fraction": args.fraction, "step_batch": args.step_batch,
            "train_steps": half, "unique_rows": n_unique, "sample": args.sample, **meta_pages}
    out = checkpoint.save(trained, args.out, meta=meta, granularity=granularity)
    if not args.quiet:
        print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0
