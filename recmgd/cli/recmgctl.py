"""`recmgctl`: talk to a running recmgd over its control socket.

Exit status: 0 on success (also when stdout's reader has gone: `| head`), 1 when the daemon answered
with an error or the output cannot be written (one line: "recmgctl: cannot write the output: ..."), 2 on
a usage error, 3 when the daemon cannot be reached (not running, or no permission on the socket).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import textwrap
import time
from typing import Any, TextIO

from recmgd.cli import signals
from recmgd.cli.argtypes import OneLineParser, count, number
from recmgd.cli.output import StdoutError, drop_stdout, guarded
from recmgd.daemon.config import DEFAULT_SOCKET
from recmgd.daemon.control import (
    MAX_REQUEST_SECONDS,
    RECORD_LEASE_S,
    CommandError,
    ControlBusy,
    ControlUnavailable,
    request,
)
from recmgd.daemon.table_counters import TABLE_METRICS
from recmgd.fileout import whole_fd, write_reason
from recmgd.shm import SHM_DIR

MAX_SECONDS = 86400.0  # --timeout and --watch: a day at most
MAX_RECORD_MB = 1e9  # --max-mb: a petabyte at most

TABLE_COLUMNS = (
    ("table", "table"), ("lookups", "lookups"), ("unique", "unique"), ("hits", "fast hits"),
    ("on_demand", "on-demand"), ("hit_rate", "hit %"), ("prefetch_issued", "pf issued"),
    ("prefetch_useful", "pf useful"), ("prefetch_late", "pf late"), ("hint_fetched", "hints"),
    ("evictions", "evictions"), ("fills", "fills"), ("slow_bytes", "fill MB"),
)


def columns_help() -> str:
    """What the columns of the stats table mean (``stats --help``), in the metrics' words."""
    meaning = {key: text for key, _, text in TABLE_METRICS}
    meaning["table"] = "the table's index in the pool; all: the pool's sums"
    meaning["hit_rate"] = "fast hits over unique, in %"
    lines = ["Each pool's table counts what the daemon drained from the apps' rings:"]
    for key, head in TABLE_COLUMNS:
        lines += textwrap.wrap(meaning[key], 96, initial_indent=f"  {head:>9}  ", subsequent_indent=" " * 13)
    lines += textwrap.wrap("The line \"apps' own count\" is the pool's own counters, kept by the apps' "
                           "library: distinct rows per lookup call, and the bytes read from the slow tier "
                           "by lookups and by the daemon's fills.", 96)
    return "\n".join(lines)


def byte_size(n: float) -> str:
    """A size for people: MB with one decimal from 0.1 MB, KB below (a small state showed as 0.0 MB)."""
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


class _DaemonCapHelp(str):
    """--max-mb's help, whose ``%(daemon_cap)s`` becomes the daemon's default cap
    (recmgd.daemon.record.DEFAULT_MAX_BYTES, in GiB) when argparse expands the help with ``%``: only
    when a help is shown, since importing recmgd.daemon.record (and the trace package) at every start
    would make each recmgctl command about 30 ms slower."""

    def __mod__(self, params: object) -> str:
        from recmgd.daemon.record import DEFAULT_MAX_BYTES

        cap = f"{DEFAULT_MAX_BYTES / (1 << 30):g} GiB"
        return str(self).replace("%(daemon_cap)s", cap) % params


def record_cap_mb(text: str) -> float:
    """--max-mb: MB (10^6 bytes) > 0 that hold a trace of one lookup at least
    (recmgd.daemon.record.MIN_MAX_BYTES; imported only when the option is given)."""
    value = number(0, MAX_RECORD_MB, lo_open=True)(text)
    from recmgd.daemon.record import MIN_MAX_BYTES

    if _max_bytes(value) < MIN_MAX_BYTES:  # no batch fits: refused before the daemon is asked
        raise argparse.ArgumentTypeError(f"{value:g} MB holds no batch (the smallest cap is "
                                         f"{MIN_MAX_BYTES / 1e6:.6f} MB, {MIN_MAX_BYTES} bytes: a trace of "
                                         "one lookup)")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 (for --timeout and --watch)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds > 0 and <= {MAX_SECONDS:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="recmgctl", description="Query and steer a running recmgd.")
    p.add_argument("--socket", metavar="PATH", default=os.environ.get("RECMGD_SOCKET", DEFAULT_SOCKET),
                   help=f"the daemon's control socket (default {DEFAULT_SOCKET}, or $RECMGD_SOCKET)")
    p.add_argument("--timeout", type=positive_seconds, default=10.0,
                   help="seconds to wait for an answer (default %(default)s)")
    p.add_version()
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, what: str) -> argparse.ArgumentParser:
        """A subcommand whose --help starts with the line the command list shows."""
        return sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")

    s = command("stats", "counters per pool and table")
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    s.epilog = columns_help()
    s.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    s.add_argument("--watch", type=positive_seconds, metavar="SECONDS",
                   help="repeat every SECONDS until interrupted (a daemon gone or restarting is said, "
                        "and watched for)")
    s = command("pools", "the pools the daemon drives")
    s.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    command("reload", "re-read the configuration (like SIGHUP)")
    pool_help = "the pool's name (as `recmgctl pools` lists it)"
    s = command("pause", "stop moving rows for a pool (its rings are still drained)")
    s.add_argument("pool", help=pool_help)
    s = command("resume", "resume a paused pool")
    s.add_argument("pool", help=pool_help)
    s = command("policy", "switch a pool's policy (until the next reload)")
    s.add_argument("pool", help=pool_help)
    s.add_argument("name", help="the policy: a name as the configuration's `name` takes (lru, recmg, ...)")
    s.add_argument("--model", metavar="DIR", help="the checkpoint a learned policy loads (`recmg train`)")
    s = command("record", "write a pool's live access stream to a trace file (recmg binary format; one "
                "sample per app batch)")
    s.add_argument("pool", help=pool_help)
    s.add_argument("file", nargs="?", help="the trace to write (a temporary file beside it until it is "
                   "complete; a device or FIFO gets the whole trace at the end)")
    s.add_argument("--stop", action="store_true",
                   help="stop the pool's recording (another recmgctl's, without FILE): its recmgctl puts the "
                        "file in place; one whose recmgctl is gone stays in that recmgctl's temporary file, "
                        "complete")
    s.add_argument("--seconds", type=number(0, MAX_REQUEST_SECONDS, hi_open=True), default=0.0,
                   help="stop this long after the recording starts, whether or not the apps have started "
                        "(an app started after it spends part of it starting; --lookups counts only what "
                        "the apps do) (default: no limit)")
    s.add_argument("--lookups", type=count(0), default=0,
                   help="stop at the first batch end after this many lookups (default: no limit)")
    s.add_argument("--max-mb", type=record_cap_mb, default=None,
                   help=_DaemonCapHelp("size cap of the file in MB (10^6 bytes; default: the daemon's, "
                                       "%(daemon_cap)s)"))
    s.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    s = command("retrain", "retrain a pool's learned policy now (pools with retrain_every)")
    s.add_argument("pool", help=pool_help)
    s.add_argument("--wait", action="store_true", help="wait for the result and print both scores")
    return p


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def format_guard(p: dict[str, Any]) -> str:
    """A learned policy's guard in a line: the order it holds the cache in now, and how it got there."""
    now = ("LRU order now: the model's shadow missed more than LRU's lately (a model trained on this "
           "workload may fit it better)") if p["guard_lru_order"] else "the model's order now"
    return (f"guard: {now}; {p['guard_lru_steps']} of {p['steps']} steps in LRU order, shadow misses "
            f"LRU {p['guard_lru_misses']} / model {p['guard_model_misses']}, "
            f"{p['guard_stamp_only']} uses not scored")


def format_stats(stats: dict[str, Any]) -> str:
    """The stats answer as tables, one per pool."""
    d = stats.get("daemon", {})
    lines = [f"recmgd pid {d.get('pid')}  up {d.get('uptime_s', 0):.0f} s  "
             f"{d.get('lookups_per_s', 0) / 1e6:.2f}M lookups/s  "
             f"loop lag {1e3 * d.get('loop_lag_s', 0):.1f} ms"
             f"{'  step mode' if d.get('step_mode') else ''}"
             f"{f'  {SHM_DIR} huge=' + d['shm_huge'] if d.get('shm_huge') else ''}"]
    if d.get("waiting_for"):
        lines.append("waiting for pools: " + ", ".join(d["waiting_for"]))
    errors = d.get("attach_errors") or {}
    for name in sorted(errors):  # (stuck and skipped pools have lines of their own below)
        if name not in (d.get("stuck") or {}) and name not in (d.get("skipped") or {}):
            lines.append(f"pool {name}: not attached: {errors[name]}")
    if d.get("last_reload_error"):
        lines.append("last reload failed: " + d["last_reload_error"])
    for name, st in sorted((d.get("stuck") or {}).items()):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["since"]))
        lines.append(f"pool {name}: stuck since {since} ({st['for_s']:.0f} s, {st['tries']} tries): "
                     f"{st['error']}; skipped, tried again every few seconds")
    for name, why in sorted((d.get("skipped") or {}).items()):
        lines.append(f"pool {name}: skipped: {why}")
    pools = stats.get("pools", {})
    if not pools:
        lines.append("no pools attached")
    for name, p in pools.items():
        lines.append("")
        pages = p.get("pages")
        held = (f"page mode, {p['resident']}/{p['n_slots']} pages promoted" if pages
                else f"{p['resident']}/{p['n_slots']} slots resident")
        cut = f"batches cut {p['cut_batches']}, " if p.get("cut_batches") else ""
        lines.append(f"pool {name}: policy {p['policy']}{' (paused)' if p.get('paused') else ''}, "
                     f"{held}, {p['apps']} apps, "
                     f"ring drops {p['ring_drops']}, backlog {p['backlog_records']}, {cut}"
                     f"model time {p['policy_time_s']:.3f} s, steps {p['steps']}"
                     f"{', state ' + byte_size(p['state_bytes']) if 'state_bytes' in p else ''}")
        if pages:
            lines.extend(format_pages(pages))
        if "guard_lru_order" in p:
            lines.append(format_guard(p))
        if p.get("retrain"):
            lines.append(format_retrain(p["retrain"]))
        rec = p.get("recording")
        if rec:
            lines.append(f"recording: {rec['state']} {rec['reason'] or ''}, {rec['lookups']} lookups, "
                         f"{rec['batches']} batches"
                         + (f" ({rec['cut_batches']} cut)" if rec.get("cut_batches") else "")
                         + f", {rec['bytes'] / 1e6:.1f} MB"
                         + (f", {rec['error']}" if rec.get("error") else ""))
        app = p.get("app") or {}
        if app.get("unique"):
            hit = 100.0 * (1 - app["on_demand"] / app["unique"])
            mb = app["slow_bytes"] / 1e6
            lines.append(f"apps' own count: {app['lookups']} lookups, {app['on_demand']} on-demand of "
                         f"{app['unique']} unique ({hit:.1f}% hit); slow tier read {mb:.1f} MB "
                         "(their lookups and the daemon's fills)")
        rows = []
        for t in p.get("tables", []) + [dict(p, table="all")]:
            r = dict(t)
            r["hit_rate"] = 100.0 * r["hits"] / r["unique"] if r.get("unique") else 0.0
            r["slow_bytes"] = r.get("slow_bytes", 0) / 1e6
            rows.append([_fmt(r.get(k, 0)) for k, _ in TABLE_COLUMNS])
        header = [h for _, h in TABLE_COLUMNS]
        widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
        lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for r in rows:
            lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def format_pages(pg: dict[str, Any]) -> list[str]:
    """Page mode's lines of a pool (the table below it then counts pages, not rows)."""
    cap = f"{pg['mb_per_s']:g} MB/s" if pg.get("mb_per_s") else "no cap"
    lines = [f"page mode: fast node {pg['fast_node']}, slow node {pg['slow_node']}; promoted "
             f"{pg['promoted_pages']}/{pg['budget_pages']} pages ({pg['promoted_bytes'] / 1e6:.1f}/"
             f"{pg['budget_bytes'] / 1e6:.1f} MB); cap {cap}, batch {pg['batch']}"
             f"{'' if pg.get('move_all', True) else '; no CAP_SYS_NICE (MPOL_MF_MOVE)'}"]
    failed = ", ".join(f"{k} {v}" for k, v in sorted((pg.get("failed") or {}).items()))
    lines.append(f"move_pages: {pg['move_calls']} calls, {pg['pages_requested']} pages requested, "
                 f"{pg['pages_moved']} moved, {pg['pages_failed']} failed{f' ({failed})' if failed else ''}, "
                 f"{pg['busy_retries']} busy retries; {pg['promotions']} promotions, "
                 f"{pg['demotions']} demotions")
    nodes = ", ".join(f"node{k} {v / 1e6:.1f} MB" for k, v in sorted((pg.get("node_bytes") or {}).items(),
                                                                      key=lambda kv: int(kv[0])))
    how = "exact" if pg.get("node_bytes_exact") else f"from {pg.get('node_pages_sampled', 0)} sampled pages"
    lines.append(f"bytes per node ({how}): {nodes or 'none placed'}; counts below are in pages")
    return lines


def format_pools(pools: list[dict[str, Any]]) -> str:
    if not pools:
        return "no pools"
    lines = []
    for p in pools:
        if p.get("waiting"):
            err = f" ({p['error']})" if p.get("error") else ""
            lines.append(f"{p['name']}: waiting for the pool{err}")
            continue
        apps = ", ".join(str(a["pid"]) for a in p["apps"]) or "none"
        unit = "pages" if p.get("mode") == "pages" else "slots"
        mode = ", page mode" if p.get("mode") == "pages" else ""
        lines.append(f"{p['name']}: policy {p['policy']}{' (paused)' if p['paused'] else ''}{mode}, "
                     f"{len(p['tables'])} tables, {p['resident']}/{p['n_slots']} {unit} "
                     f"(policy capacity {p['capacity']}, hint {unit} {p['hint_slots']}), apps: {apps}")
    return "\n".join(lines)


def _max_bytes(max_mb: float) -> int:
    """--max-mb in bytes (MB of 10^6 bytes)."""
    return int(round(max_mb * 1e6))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with signals.raised():
        try:  # stdout that cannot be written: one line, exit 1; a closed pipe: a quiet end
            return guarded("recmgctl", lambda: _run(args))
        except ControlUnavailable as exc:
            print(f"recmgctl: {exc}", file=sys.stderr)
            return 3
        except CommandError as exc:
            print(f"recmgctl: {args.command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            signals.landed()
            return 130
        except signals.Terminated as exc:
            signals.landed()
            return exc.status


def _run(args: argparse.Namespace) -> int:
    sock, timeout = args.socket, args.timeout
    if args.command == "stats":
        told = ""  # (--watch) the outage already said
        while True:
            try:
                stats = request(sock, "stats", timeout=timeout)
            except ControlUnavailable as exc:  # (--watch goes on until interrupted: a daemon restarting)
                if not args.watch:
                    raise
                if str(exc) != told:
                    print(f"recmgctl: {exc}; still watching", file=sys.stderr, flush=True)
                    told = str(exc)
                time.sleep(max(0.05, args.watch))
                continue
            told = ""
            if args.json:
                print(json.dumps(stats, indent=None if args.watch else 2, sort_keys=True), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")
                print(format_stats(stats), flush=True)
                if args.watch:
                    print(flush=True)
            if not args.watch:
                return 0
            time.sleep(max(0.05, args.watch))
    if args.command == "pools":
        pools = request(sock, "pools", timeout=timeout)
        print(json.dumps(pools, indent=2) if args.json else format_pools(pools))
        return 0
    if args.command == "reload":
        res = request(sock, "reload", timeout=timeout)
        print(f"reloaded {res['config']}")
        return 0
    if args.command in ("pause", "resume"):
        res = request(sock, args.command, {"pool": args.pool}, timeout=timeout)
        print(f"pool {res['pool']} {'paused' if res['paused'] else 'resumed'}")
        return 0
    if args.command == "policy":
        pargs = {"pool": args.pool, "name": args.name}
        if args.model:
            pargs["model_dir"] = os.path.abspath(args.model)
        res = request(sock, "policy", pargs, timeout=timeout)
        print(f"pool {res['pool']}: policy {res['policy']}"
              + (f" (model {pargs['model_dir']})" if args.model else ""))
        return 0
    if args.command == "record":
        return record(args)
    if args.command == "retrain":
        return retrain(args)
    raise AssertionError(args.command)


class _NoFile(Exception):
    """Raised in the recording's block so that its temporary is removed (its one line printed); args:
    the exit status."""


def record(args: argparse.Namespace) -> int:
    """Make a temporary file for FILE (fileout.whole_fd), pass its descriptor to the daemon, which
    writes and fsyncs the trace, follow the recording, and put the file in place once complete: renamed
    over FILE, or copied into a device or FIFO. A failed recording leaves no file and FILE as it was.
    With --stop (no FILE): stop the pool's recording."""
    if args.stop or args.file is None:
        if not args.stop or args.file is not None:
            print("recmgctl: record: give FILE to record into, or --stop without FILE", file=sys.stderr)
            return 2
        st = request(args.socket, "record", {"pool": args.pool, "action": "stop"}, timeout=args.timeout)
        if not st.get("was_recording", True):
            print(f"recmgctl: record: pool {args.pool}: no recording under way (the last one is "
                  f"{st['state']})", file=sys.stderr)
            return 1
        print(f"stopped the recording of {args.pool}: {st['lookups']} lookups in {st['batches']} batches so "
              f"far, state {st['state']}")
        return 0
    path = os.path.abspath(args.file)
    to_stdout = _same_file(path, sys.stdout)
    out = contextlib.ExitStack()
    try:  # before the daemon is asked: a directory, a folder that is not there, no permission
        fd, tmp = out.enter_context(whole_fd(path))
    except OSError as exc:
        print(f"recmgctl: record: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        with out:
            done = _record_into(args, path, fd, str(tmp))
    except _NoFile as exc:
        return int(exc.args[0])
    except OSError as exc:  # putting it in place (a full device, a FIFO's reader gone)
        print(f"recmgctl: record: {args.file}: {write_reason(exc)}; the recording was not kept",
              file=sys.stderr)
        return 1
    try:
        print(done, file=sys.stderr if to_stdout else sys.stdout)
    except (OSError, StdoutError):
        if not getattr(args, "hung_up", False):  # (a terminal gone after SIGHUP: the trace is in place,
            raise  # only its summary has nowhere to go)
        drop_stdout()  # (nor what stdout still buffers, at exit)
    return 0


def _progress(text: str) -> bool:
    """Write a progress line (or its end) to stderr; False when it cannot be written (a terminal gone
    after a hang-up fails every write: the recording goes on and its file is kept all the same)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:
        return False
    return True


def _record_into(args: argparse.Namespace, path: str, fd: int, tmp: str) -> str:
    """Start the recording into fd and follow it to its end: the line to print once the file is in
    place; _NoFile (its line printed) when there is no whole trace to keep."""
    sock, timeout = args.socket, args.timeout
    rargs: dict[str, Any] = {"pool": args.pool, "action": "start", "lookups": args.lookups,
                             "seconds": args.seconds, "path": path, "lease": RECORD_LEASE_S}
    if args.max_mb is not None:
        rargs["max_bytes"] = _max_bytes(args.max_mb)
    request(sock, "record", rargs, timeout=timeout, fds=(fd,))
    status: dict[str, Any] = {}
    interrupted = stop_sent = busy_told = False
    pause = 0.2  # between status requests; none right after ^C
    show = sys.stderr.isatty() and not args.quiet
    try:
        while True:
            try:
                time.sleep(pause)
                pause = 0.2
                if interrupted and not stop_sent:
                    request(sock, "record", {"pool": args.pool, "action": "stop"}, timeout=timeout)
                    stop_sent = True
                status = request(sock, "record", {"pool": args.pool, "action": "status"}, timeout=timeout)
                if status["state"] != "recording":
                    break
                if show:
                    show = _progress(f"\rrecording {args.pool}: {status['lookups']:,} lookups, "
                                     f"{status['batches']:,} batches, {status['bytes'] / 1e6:.1f} MB, "
                                     f"{status['seconds']:.0f} s ")
            except ControlBusy as exc:  # the daemon is alive and still writes the file: ask again
                if not busy_told and not args.quiet:
                    _progress(f"recmgctl: record: {exc}; still following the recording\n")
                busy_told = True
            except (KeyboardInterrupt, signals.Terminated) as exc:  # ^C, SIGTERM, SIGHUP: stop; file kept
                signals.landed()
                if isinstance(exc, signals.Terminated) and exc.signum == signal.SIGHUP:
                    args.hung_up, show = True, False  # (its terminal is gone: nothing more written to it)
                if interrupted:  # a second one: give up on the file
                    raise _NoFile(exc.status if isinstance(exc, signals.Terminated) else 130) from None
                interrupted, pause = True, 0.0
    except CommandError as exc:  # the pool went away: the daemon completed the file first
        return _record_cut_short(args, tmp, str(exc), 1)
    except ControlUnavailable as exc:  # the daemon stopped: it completed the file first
        return _record_cut_short(args, tmp, str(exc), 3)
    finally:
        if show:
            _progress("\n")
    if status["state"] != "done":
        _progress(f"recmgctl: record: {status.get('error') or 'the recording failed'}; no file was kept\n")
        raise _NoFile(1)
    drops = status["ring_drops"]
    drops = f"; the apps dropped {drops} ring records meanwhile" if drops else ""
    return (f"recorded {status['lookups']} lookups in {status['batches']} batches ({status['reason']}, "
            f"{status['seconds']:.1f} s{_first_batch(status)}) to {args.file}, "
            f"{status['bytes'] / 1e6:.1f} MB{drops}")


def _first_batch(status: dict[str, Any]) -> str:
    """When the recording's first batch came (its window may have begun before any app ran), or that no
    app ended a batch in it: the summary's words for a recording that holds little or nothing."""
    if not status["batches"]:
        return "; no app ended a batch in it"
    first = status.get("first_batch_s")
    return "" if first is None else f"; the first batch {first:.1f} s in"


def _record_cut_short(args: argparse.Namespace, tmp: str, why: str, fail: int) -> str:
    """The daemon no longer knows the recording (its pool was detached, or it stopped: either completes
    the file): keep the file if it is a complete trace, else _NoFile(fail)."""
    from recmgd.errors import TraceError
    from recmgd.trace.binary import read_binary

    try:
        tr = read_binary(tmp)
        n_lookups, n_batches = tr.n_lookups, tr.n_samples
        del tr
    except TraceError:
        print(f"recmgctl: record: {why}; the recording is incomplete, no file was kept", file=sys.stderr)
        raise _NoFile(fail) from None
    return f"recorded {n_lookups} lookups in {n_batches} batches to {args.file} (cut short: {why})"


def _same_file(path: str, stream: TextIO) -> bool:
    """Whether path is the file stream writes to (``/dev/stdout``, or a name of the same pipe)."""
    try:
        a, b = os.stat(path), os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def retrain(args: argparse.Namespace) -> int:
    res = request(args.socket, "retrain", {"pool": args.pool}, timeout=args.timeout)
    print(f"pool {res['pool']}: retrain {res['retrain']} started on {res['lookups']} lookups "
          f"({res['batches']} batches)", flush=True)
    if not args.wait:
        return 0
    while True:
        time.sleep(0.5)
        rt = request(args.socket, "stats", timeout=args.timeout)["pools"].get(args.pool, {}).get("retrain")
        if rt is None:
            raise CommandError(f"pool {args.pool} is gone")
        if not rt["running"]:
            break
    last = rt.get("last") or {}
    if last.get("retrain") != res["retrain"]:
        print(f"recmgctl: retrain: failed, the model is unchanged: {rt.get('last_error')}", file=sys.stderr)
        return 1
    print(format_retrain(rt))
    return 0 if not rt.get("last_error") else 1


def format_retrain(rt: dict[str, Any]) -> str:
    """A pool's retraining in one line."""
    last = rt.get("last") or {}
    age = rt.get("model_age_s")
    full = " (full)" if rt.get("window_full") else ""  # (whole batches: it may stay a few under the target)
    line = (f"retraining: every {rt['every_s']:g} s, window {rt['window_lookups']}/{rt['window_target']} "
            f"lookups{full}, {rt['retrains']} retrains, {rt['switches']} switches, "
            f"{rt['failures']} failures; model {rt.get('model_dir') or 'none (lru)'}")
    if age is not None:
        line += f", {age:.0f} s old"
    if last:
        line += (f"; last: candidate {last['candidate_on_demand']} vs current {last['current_on_demand']} "
                 f"on-demand fetches ({'switched' if last.get('switched') else 'kept'})")
    if rt.get("running"):
        line += f"; running (trainer pid {rt.get('trainer_pid')})"
    if rt.get("last_error"):
        line += f"; last error: {rt['last_error']}"
    return line


if __name__ == "__main__":
    sys.exit(main())
