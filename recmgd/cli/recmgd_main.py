"""`recmgd`: the tiered-memory daemon (run by systemd as recmgd.service, Type=notify).

It never forks: systemd (or the shell) supervises it. Exit status: 0 after a clean stop (SIGTERM,
SIGINT), 1 when it cannot start (the reason on one line of stderr; whatever it made for the start, its
control socket, is removed), 2 on a usage error. `--check-config` says so on stdout, or one line on stderr
when stdout cannot be written (exit 1; quietly when its reader has gone).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# The policies' models run on the daemon's own thread (policy option `threads` bounds torch); keep the
# BLAS and OpenMP pools of numpy and torch at one thread unless the service sets otherwise. This must
# happen before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from recmgd.cli.argtypes import OneLineParser  # noqa: E402
from recmgd.cli.output import guarded  # noqa: E402
from recmgd.daemon.config import DEFAULT_PATH, LOG_LEVELS  # noqa: E402
from recmgd.errors import RecmgError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="recmgd", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_version()
    p.add_argument("--config", metavar="PATH",
                   help=f"configuration file (default {DEFAULT_PATH}; built-in defaults if absent)")
    p.add_argument("--foreground", action="store_true",
                   help="log to stderr even when started by systemd (the daemon never forks either way)")
    p.add_argument("--step-mode", action="store_true",
                   help="deterministic step mode: apply decisions exactly once per app batch (tests)")
    p.add_argument("--log-level", choices=LOG_LEVELS,
                   help="override the configuration's log_level")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration (and its policies) and exit")
    return p


def _say(line: str) -> int:
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from recmgd.daemon import config as config_mod
    from recmgd.daemon.notify import setup_logging

    try:
        cfg = config_mod.load(args.config, missing_ok=args.config is None)
        if args.log_level:
            cfg = cfg.replace(log_level=args.log_level)
        setup_logging(cfg.log_level, force_stderr=args.foreground)
        config_mod.validate_policies(cfg)
    except RecmgError as exc:
        print(f"recmgd: error: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        try:  # and that every learned policy has a checkpoint that loads (the daemon would wait forever)
            config_mod.check_models(cfg)
        except RecmgError as exc:
            print(f"recmgd: error: {exc}", file=sys.stderr)
            return 1
        return guarded("recmgd", lambda: _say(f"recmgd: {cfg.path}: configuration is valid"))
    try:  # started anyway (a checkpoint may be installed later: pools are attached when it loads)
        config_mod.check_models(cfg, load=False)
    except RecmgError as exc:
        logging.getLogger("recmgd").warning("%s; its pools are not attached until it has one", exc)
    from recmgd.daemon.service import Daemon
    from recmgd.simcore import map_large_allocations

    # the policies' state grows by realloc for the life of the process: without this ~a third of it
    # stays in heap holes (recmgd.simcore.map_large_allocations)
    if not map_large_allocations():
        logging.getLogger("recmgd").info("the allocator is not glibc's: its policy for large blocks stands")
    daemon = Daemon(cfg, args.config, step_mode=args.step_mode)
    try:
        return daemon.run()
    except RecmgError as exc:
        print(f"recmgd: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
