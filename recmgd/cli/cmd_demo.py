"""`recmg demo`: the end-to-end comparison in short, with real parts.

A TorchRec DLRM inference server (``python -m recmgd.app.serve``, requests arriving open-loop, Poisson)
on the same trace and loads under each system: all-DRAM TorchRec EmbeddingBagCollection; recmg's
collection over a pool with no fast tier; LRU and RecMG, each a real ``recmgd`` child (READY over the
systemd notify protocol) driving a fast tier of 10% of the trace's rows, with and without lookahead (the
server announcing a batch's rows ``--lookahead-batches`` batches before it runs, the daemon pinning them
one batch more). The slow tier is a file in the work dir (O_DIRECT,
io_uring). Prints the latency table and the targets, and writes the plot (latency CDF per system, p99
against offered load). ``tools/bench_e2e.py`` is the full benchmark; recmgd.app.e2e holds both.

The default trace is a synthetic one with 26 tables whose reuse distances straddle the fast tier, so the
policies differ (``recmgd.app.e2e.synthetic_26``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from recmgd.app.e2e import (
    LOOKAHEAD_BATCHES,
    MAX_BATCH,
    MAX_WAIT_MS,
    SYNTH_26,
    SYSTEMS,
    E2EConfig,
    synth_trace,
    synthetic_26,
)
from recmgd.cli.argtypes import EPOCHS, SEED, check_output_dir, check_output_file, integer, number
from recmgd.errors import OutputError
from recmgd.fileout import whole_file, write_reason

_synth_trace = synth_trace  # tests/test_models_guard.py makes its trace with it (its name before)


def set_argparser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", help=f"trace to replay (default: {SYNTH_26}, which the demo generates)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated (default: all six)")
    p.add_argument("--loads", default="0.5,0.9", help="offered loads, shares of the all-DRAM server's most")
    p.add_argument("--seconds", type=number(0.0, 86400.0, lo_open=True), default=1.0,
                   help="counted seconds a load (default %(default)s)")
    p.add_argument("--warmup", type=integer(1, 1 << 30), default=3000,
                   help="warm-up samples (default %(default)s)")
    p.add_argument("--fraction", type=number(0.0, 1.0, lo_open=True, hi_open=True), default=0.1,
                   help="fast tier, share of unique rows")
    p.add_argument("--dim", type=integer(1, 1 << 16), default=64, help="embedding dim")
    p.add_argument("--max-batch", type=integer(1, 1 << 20), default=MAX_BATCH,
                   help="requests a batch at most")
    p.add_argument("--max-wait-ms", type=number(0.0, 1e6), default=MAX_WAIT_MS,
                   help="a batch leaves after this wait")
    p.add_argument("--epochs", type=EPOCHS, default=1, help="RecMG training epochs")
    p.add_argument("--png", default="recmg-demo.png", help="the plot (default %(default)s)")
    p.add_argument("--json", help="also write one object per (trace, system, load) here")
    p.add_argument("--workdir", help="where the slow-tier files, traces and models go (default: a temp dir "
                                     "under ./build, or . without one: the slow tier's file needs O_DIRECT)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--lookahead-batches", type=integer(0, 1 << 20), default=LOOKAHEAD_BATCHES, metavar="L",
                   help="+lookahead systems: announce a batch's rows L batches ahead (0: at arrival); the "
                        "daemon pins hints L+1 batches (default %(default)s)")
    p.add_argument("--seed", type=SEED, default=0)


def _fail(msg: str) -> int:
    print(f"recmg demo: {msg}", file=sys.stderr)
    return 2


def _write(path: str, write: Callable[[Path], object]) -> None:
    """An output of the demo, whole or not at all (recmgd.fileout); a failure is one line."""
    try:
        with whole_file(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({write_reason(exc)}); the results are above") from None


#: what the demo imports beyond the package's own requirements (pyproject.toml's torchrec extra)
DEMO_MODULES = ("torchrec", "fbgemm_gpu", "matplotlib")


def missing_modules() -> list[str]:
    """The modules of DEMO_MODULES this Python cannot import (found, not imported: ~3 s for torchrec)."""
    import importlib.util

    missing = []
    for m in DEMO_MODULES:
        try:
            if importlib.util.find_spec(m) is None:
                missing.append(m)
        except (ImportError, ValueError):
            missing.append(m)
    return missing


def main(args: argparse.Namespace) -> int:
    from recmgd.app.e2e import compare, plot, table, targets

    missing = missing_modules()
    if missing:  # (an installed daemon's venv has no torchrec: its server would fail with a traceback)
        return _fail(f"needs {', '.join(missing)}: torchrec==1.8.0 (installed with --no-deps) and the "
                     "package's torchrec extra (pyproject.toml), which `make demo` installs in a checkout's "
                     ".venv; an installed recmgd has neither")

    try:
        loads = [float(x) for x in args.loads.split(",") if x]
    except ValueError:
        return _fail(f"--loads: numbers, got {args.loads!r}")
    if not loads or any(not 0 < x <= 2 for x in loads):
        return _fail("--loads: shares in (0, 2]")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems:
        return _fail(f"--systems: no system named; use one or more of {', '.join(SYSTEMS)}")
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        return _fail(f"--systems: unknown {', '.join(bad)}; use {', '.join(SYSTEMS)}")
    if args.trace and not Path(args.trace).is_file():
        return _fail(f"--trace: no file {args.trace}")
    # the outputs, before anything runs (RecmgError, one line)
    check_output_file(args.png, "--png")
    if args.json:
        check_output_file(args.json, "--json")
    if args.workdir:
        check_output_dir(args.workdir, "--workdir")
    # on a disk, not tmpfs (the slow tier's file needs O_DIRECT): under build/ where there is one
    parent = "build" if Path("build").is_dir() else "."
    try:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="recmg-demo-", dir=parent))
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--workdir {args.workdir or parent}: cannot make the work dir "
                          f"({write_reason(exc)})") from None
    t0 = time.monotonic()
    try:
        if args.trace:
            label, src = Path(args.trace).name.split(".")[0], Path(args.trace)
        else:
            label, src = SYNTH_26, work / f"{SYNTH_26}.src.trace"
            samples = args.warmup + max(args.warmup, int(args.seconds * 12000))
            print(f"generating {SYNTH_26}: {samples} samples x 26 tables (Meta 2021 reuse statistics)",
                  flush=True)
            synthetic_26(src, samples, args.seed)
        cfg = E2EConfig(traces=[(label, src)], work=work, systems=systems, loads=loads, seconds=args.seconds,
                        warmup=args.warmup, fraction=args.fraction, dim=args.dim, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, epochs=args.epochs, seed=args.seed,
                        lookahead_batches=args.lookahead_batches,
                        progress=lambda s: print(s, flush=True))
        run = compare(cfg)
        print()
        print(table(run["results"]))
        print()
        for line in targets(run["results"], load=min(loads)):
            print(line)
        _write(args.png, lambda tmp: plot(run, tmp))
        if args.json:
            _write(args.json, lambda tmp: tmp.write_text(json.dumps(run["results"], indent=2) + "\n"))
        print(f"\nplot: {args.png}; {time.monotonic() - t0:.0f} s in all")
        return 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
