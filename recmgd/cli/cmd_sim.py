"""`recmg sim TRACE`: simulate policies on a trace under the protocol of DESIGN.md.

    recmg sim TRACE [TRACE ...] --policies lru,opt,stms --fractions 0.05,0.1,0.2 --batch 16 --delay 1 \\
        [--prefetch-budget N] [--region R] [--seed S] [--model DIR] [--row-bytes R]
        [--pages lru,opt --page-bytes 4096] [--lookahead 0,1,2,4] [--json | --markdown] [--pivot on_demand]

``--pages`` adds page-granular runs of the named policies (kernel tiering, DAMON, memtierd and
recmgd's page mode keep whole pages on the fast node) with the same DRAM bytes, as ``NAME@page``.
``--lookahead L[,L...]`` runs every policy also with the next L steps' rows known ahead (a serving
queue; DESIGN.md, "Lookahead L"): the driver fills them within ``--prefetch-budget`` rows a step and
never evicts them before their step; results as ``NAME+LL``. The reference for it is ``belady``
(Belady's order with the same window and budget; at L = 0, OPT).
A learned policy's ``--model`` must be a checkpoint of the granularity it runs at: rows for
``--policies``, pages of ``--page-bytes`` with rows of ``--row-bytes`` for ``--pages`` (``recmg train
--page-bytes``); another is refused before the traces are read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from recmgd.cli.argtypes import (
    BYTES,
    EPOCHS,
    LOOKAHEAD,
    SEED,
    STEP_BATCH,
    TABLE_SIZE,
    THREADS,
    integer,
    number,
    policy_option,
)
from recmgd.errors import TraceError
from recmgd.models.train_config import TrainStepsError, too_few_steps
from recmgd.policy import MAX_REGION
from recmgd.sim import format_table, simulate
from recmgd.sim.pages import DEFAULT_PAGE_BYTES, simulate_pages
from recmgd.sim.results import METRICS, format_pivot
from recmgd.sim.runner import DEFAULT_FRACTIONS, DEFAULT_ROW_BYTES, check_policies, policy_names, unique_rows
from recmgd.trace import open_trace
from recmgd.trace.csvlog import DEFAULT_TABLE_SIZE

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not out or any(not 0 < f <= 1 for f in out):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1]: {text!r}")
    return out


def _lookaheads(text: str) -> list[int]:
    """A comma-separated list of LOOKAHEAD values (each one's error names it and the range)."""
    out = [LOOKAHEAD(x) for x in text.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}")
    return out


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", nargs="+",
                        help="trace file(s) (text, recmg binary, DLRM .pt, Criteo/Avazu CSV)")
    parser.add_argument("--policies", default="lru,opt",
                        help=f"comma-separated policy names, of {', '.join(policy_names())} "
                             "(default %(default)s)")
    parser.add_argument("--fractions", type=_floats, default=list(DEFAULT_FRACTIONS),
                        help="fast-tier capacity as fractions of the trace's unique rows (default "
                             f"{','.join(f'{f:g}' for f in DEFAULT_FRACTIONS)})")
    parser.add_argument("--batch", type=STEP_BATCH, default=16, help="samples per step (default %(default)s)")
    parser.add_argument("--delay", type=int, choices=[0, 1], default=1,
                        help="1: decisions apply before the next step; 0: the textbook cache")
    parser.add_argument("--prefetch-budget", type=policy_option("prefetch_budget"), default=16,
                        help="rows per step a prefetcher may fetch (default %(default)s)")
    parser.add_argument("--prefetch-min-accuracy", type=number(0.0, 1.0), default=None, metavar="A",
                        help="recmg's prefetcher is throttled while fewer than this share of its prefetches "
                             "are read (default 0.25; 0: never)")
    parser.add_argument("--lookahead", type=_lookaheads, default=[0], metavar="L[,L...]",
                        help="steps whose rows are known ahead (a serving queue); the driver fills them "
                             "within --prefetch-budget rows a step (default 0)")
    parser.add_argument("--region", type=integer(1, MAX_REGION), default=8,
                        help=f"Bingo: rows per region (1..{MAX_REGION})")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--model", default=None,
                        help="model directory for the learned policies (a row checkpoint for --policies, "
                             "a page one, `recmg train --page-bytes`, for --pages; a new or empty one: "
                             "trained and saved there; one of other files is refused)")
    parser.add_argument("--threads", type=THREADS, default=1, help="threads a learned policy may use")
    parser.add_argument("--epochs", type=EPOCHS, default=None, help="training epochs for learned policies")
    parser.add_argument("--row-bytes", type=BYTES, default=DEFAULT_ROW_BYTES,
                        help="bytes a row (for slow_bytes)")
    parser.add_argument("--pages", default="", metavar="POLICIES",
                        help="also run these policies on whole pages of the slow tier, with the same "
                             "DRAM bytes (results as NAME@page)")
    parser.add_argument("--page-bytes", type=BYTES, default=DEFAULT_PAGE_BYTES,
                        help="page size for --pages (default %(default)s)")
    parser.add_argument("--table-size", type=TABLE_SIZE, default=DEFAULT_TABLE_SIZE,
                        help="CSV logs: rows a table")
    parser.add_argument("--path", choices=["auto", "native", "python"], default="auto",
                        help="driver: C whole-trace loop where possible, or observe() per step")
    parser.add_argument("--json", action="store_true", help="one JSON object a line per (policy, fraction)")
    parser.add_argument("--markdown", action="store_true", help="tables in markdown")
    parser.add_argument("--pivot", metavar="METRIC", default=None,
                        help="one row per (trace, fraction), one column per policy, cells METRIC "
                             "(e.g. on_demand, hit_rate, gap_closed)")


def _model_problem(model_dir: str | None, names: list[str], page_names: list[str], page_bytes: int,
                   row_bytes: int) -> str | None:
    """Why ``--model`` cannot serve the learned policies asked for (one line), or None; ModelError when
    it is no checkpoint and cannot take one (recmgd.models.granularity.checkpoint_config), or a corrupt
    one (recmgd.models.checkpoint.read_config): before any trace is read."""
    from recmgd.models import checkpoint
    from recmgd.models.granularity import Granularity, checkpoint_config, from_config, mismatch
    from recmgd.policy import is_learned

    if model_dir is None:
        return None
    rows = [n for n in names if is_learned(n)]
    pages = [n for n in page_names if is_learned(n)]
    if rows and pages:
        return (f"{model_dir}: one checkpoint is trained on rows or on pages, not both: the learned "
                f"policies {', '.join(rows)} (--policies) and {', '.join(pages)} (--pages) need one each")
    if not (rows or pages):
        return None
    f = checkpoint_config(model_dir)
    if f is None:
        return None  # no checkpoint yet: the learned policies train and save one of their granularity
    have = from_config(checkpoint.read_config(model_dir), str(f))
    if pages:
        return mismatch(model_dir, have, Granularity.pages(page_bytes, row_bytes),
                        f"--pages {','.join(pages)}")
    return mismatch(model_dir, have, Granularity.rows(), f"--policies {','.join(rows)}")


def main(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if args.pivot and args.pivot not in METRICS:
        print(f"recmg sim: --pivot {args.pivot}: not a numeric metric (known: {', '.join(METRICS)})",
              file=sys.stderr)
        return 2
    page_names = [n.strip() for n in args.pages.split(",") if n.strip()]
    if args.lookahead != [0] and args.delay != 1:
        print("recmg sim: --lookahead runs with --delay 1 only", file=sys.stderr)
        return 2
    if page_names and args.delay != 1:
        print("recmg sim: --pages runs with --delay 1 only (pages move after the step that read them)",
              file=sys.stderr)
        return 2
    if page_names and not 0 < args.row_bytes <= args.page_bytes:
        print(f"recmg sim: --pages needs 0 < --row-bytes <= --page-bytes, got {args.row_bytes} and "
              f"{args.page_bytes}", file=sys.stderr)
        return 2
    if not names and not page_names:
        print(f"recmg sim: --policies: no policy named; give a comma-separated list of "
              f"{', '.join(policy_names())} (or --pages)", file=sys.stderr)
        return 2
    if "belady" in page_names:
        print("recmg sim: --pages belady: the lookahead reference runs on rows only", file=sys.stderr)
        return 2
    try:
        check_policies(names + page_names)
    except ValueError as exc:
        print(f"recmg sim: {exc}", file=sys.stderr)
        return 2
    problem = _model_problem(args.model, names, page_names, args.page_bytes, args.row_bytes)
    if problem:
        print(f"recmg sim: --model {problem}", file=sys.stderr)
        return 2
    options: dict[str, object] = {"prefetch_budget": args.prefetch_budget, "region": args.region,
                                  "seed": args.seed, "model_dir": args.model, "threads": args.threads}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    if args.prefetch_min_accuracy is not None:
        options["prefetch_min_accuracy"] = args.prefetch_min_accuracy
    results = []
    for path in args.trace:
        trace = open_trace(path, table_size=args.table_size)
        try:
            if names:
                results += simulate(trace, names, args.fractions, batch=args.batch, delay=args.delay,
                                    row_bytes=args.row_bytes, options=options, path=args.path,
                                    lookahead=args.lookahead, budget=args.prefetch_budget)
            if page_names:
                steps = trace.steps(args.batch)
                results += simulate_pages(os.path.basename(trace.path) or "trace", steps, page_names,
                                          args.fractions, unique_rows(steps), row_bytes=args.row_bytes,
                                          page_bytes=args.page_bytes, batch=args.batch, options=options)
        except TrainStepsError as exc:  # a learned policy with no checkpoint, on the first half of the steps
            n_steps = trace.n_steps(args.batch)
            raise TraceError(too_few_steps(path, n_steps, args.batch) or f"trace {path}: {exc}") from None
    if args.json:
        for r in results:
            print(json.dumps(r.as_dict()))
    elif args.pivot:
        print(format_pivot(results, args.pivot, markdown=args.markdown))
    else:
        print(format_table(results, markdown=args.markdown))
    return 0
