"""`recmg trace`: convert, inspect and synthesize traces.

    recmg trace convert IN OUT [--to binary|text|dlrm] [--table-size N]
    recmg trace stats FILE [--batch 16] [--no-sim] [--json]
    recmg trace synth OUT [--lookups N] [--tables T] [--pooling P] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from recmgd.cli.argtypes import SEED, STEP_BATCH, TABLE_SIZE, count, number
from recmgd.errors import TraceError
from recmgd.fileout import write_reason
from recmgd.keys import MAX_TABLES
from recmgd.trace import open_trace, save_trace
from recmgd.trace.csvlog import DEFAULT_TABLE_SIZE
from recmgd.trace.stats import trace_stats
from recmgd.trace.synth import MAX_BLOCK_ROWS, MAX_LOOKUPS, MAX_POOLING, SynthConfig, write_synth

log = logging.getLogger(__name__)


def set_argparser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trace_command", metavar="ACTION")

    def action(name: str, what: str) -> argparse.ArgumentParser:
        """An action whose --help starts with the line the action list shows."""
        return sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")

    conv = action("convert", "convert a trace (text, binary, DLRM, Criteo/Avazu CSV)")
    conv.add_argument("input", help="the trace to read (any of the four formats, recognised by content)")
    conv.add_argument("output", help="the trace to write")
    conv.add_argument("--to", choices=["binary", "text", "dlrm"], default=None,
                      help="output format (default: from the name; .trace/.txt text, .pt dlrm, else binary)")
    conv.add_argument("--table-size", type=TABLE_SIZE, default=DEFAULT_TABLE_SIZE,
                      help="CSV logs: rows per table that values hash to (default %(default)s)")
    st = action("stats", "lookups, tables, unique rows, reuse histogram, LRU/OPT hit rates")
    st.add_argument("file", help="the trace (any of the four formats, recognised by content)")
    st.add_argument("--batch", type=STEP_BATCH, default=16, help="samples per step for the hit rates")
    st.add_argument("--no-sim", action="store_true", help="skip the LRU/OPT hit rates")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--table-size", type=TABLE_SIZE, default=DEFAULT_TABLE_SIZE,
                    help="CSV logs: rows per table that values hash to (default %(default)s)")
    sy = action("synth", "write a synthetic trace calibrated to Meta's 2021 statistics")
    sy.add_argument("output", help="binary trace to write")
    defaults = SynthConfig()
    sy.add_argument("--lookups", type=count(0, MAX_LOOKUPS), default=defaults.lookups,
                    help="(default %(default)s; e.g. 1e9)")
    sy.add_argument("--tables", type=count(1, MAX_TABLES), default=defaults.tables,
                    help="(default %(default)s; e.g. 856)")
    sy.add_argument("--pooling", type=count(1, MAX_POOLING), default=defaults.pooling,
                    help="lookups per table per sample (default %(default)s)")
    sy.add_argument("--block-rows", type=count(1, MAX_BLOCK_ROWS), default=defaults.block_rows,
                    help="rows generated at a time; bounds memory (default %(default)s)")
    sy.add_argument("--gap", type=number(0.0, lo_open=True), default=defaults.gap,
                    help="median gap between a row's uses, lookups (default %(default)s)")
    sy.add_argument("--sigma", type=number(0.0), default=defaults.sigma,
                    help="log-normal spread of the gaps (default %(default)s)")
    sy.add_argument("--seed", type=SEED, default=0, help="the generator's seed (default %(default)s)")
    parser.set_defaults(_trace_parser=parser)


def main(args: argparse.Namespace) -> int:
    action = getattr(args, "trace_command", None)
    if action == "convert":
        tr = open_trace(args.input, table_size=args.table_size)
        fmt = save_trace(tr, args.output, args.to)
        print(f"{args.output}: {tr.n_lookups:,} lookups, {tr.n_samples:,} samples ({fmt})")
        return 0
    if action == "stats":
        return _stats(args)
    if action == "synth":
        cfg = SynthConfig(lookups=args.lookups, tables=args.tables, pooling=args.pooling,
                          block_rows=args.block_rows, gap=args.gap, sigma=args.sigma,
                          seed=args.seed)
        try:
            n = write_synth(cfg, args.output)
        except OSError as exc:
            raise TraceError(f"{args.output}: cannot write ({write_reason(exc)}); nothing was written"
                             ) from None
        print(f"{args.output}: {n:,} lookups, {cfg.tables} tables, {cfg.lookups_per_sample} lookups a sample")
        return 0
    args._trace_parser.print_help(sys.stderr)
    return 2


def _stats(args: argparse.Namespace) -> int:
    tr = open_trace(args.file, table_size=args.table_size)
    st = trace_stats(tr)
    out: dict[str, object] = st.as_dict()
    rates: list[tuple[str, float, float]] = []
    if not args.no_sim:
        from recmgd.sim import simulate

        for r in simulate(tr, ["lru", "opt"], [0.05, 0.1, 0.2], batch=args.batch):
            rates.append((r.policy, r.fraction, r.hit_rate))
        out["hit_rates"] = [{"policy": p, "fraction": f, "hit_rate": h, "batch": args.batch}
                            for p, f, h in rates]
    if args.json:
        print(json.dumps(out))
        return 0
    print(st.format())
    if rates:
        print(f"Hit rate, batch {args.batch}, scored on the second half:")
        for p, f, h in rates:
            print(f"  {p:4s} at {f:.0%}: {h:.4f}")
    return 0
