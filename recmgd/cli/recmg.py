"""`recmg`: offline work on traces and models. One module per subcommand (set_argparser + main)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from recmgd.cli import output, signals
from recmgd.cli.argtypes import OneLineParser
from recmgd.errors import RecmgError

# subcommand -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "trace": ("recmgd.cli.cmd_trace", "convert, inspect and synthesize traces"),
    "sim": ("recmgd.cli.cmd_sim", "simulate policies on a trace"),
    "train": ("recmgd.cli.cmd_train", "train the RecMG caching and prefetching models"),
    "candidate": ("recmgd.cli.cmd_candidate", "train a candidate model on a recorded window and score it "
                  "against the current one (recmgd's retraining)"),
    "demo": ("recmgd.cli.cmd_demo", "TorchRec DLRM server on recmg vs all-DRAM, in short"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    """The parser; only the chosen subcommand's module is imported (some pull in torch)."""
    parser = OneLineParser(
        prog="recmg", description="Offline work on traces and models: convert and inspect traces, simulate "
        "policies, train and score RecMG's models, run the demo."
    )
    parser.add_version()
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (modname, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if name != chosen:
            continue
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        module.set_argparser(sp)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """The CLI: a RecmgError is one line (exit 1), a write error on stdout one line (exit 1), Ctrl-C
    one line (exit 130), SIGTERM one line (exit 143; SIGHUP: 129), each with no output left half-written."""
    with signals.raised():
        try:
            return _main(argv)
        except KeyboardInterrupt:
            signals.landed()
            print("recmg: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        except signals.Terminated as exc:
            signals.landed()
            print(f"recmg: {exc}", file=sys.stderr)
            return exc.status


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, mod = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    if mod is None:
        print(f"recmg {args.command}: not yet available", file=sys.stderr)
        return 2

    def run() -> int:
        try:
            return int(mod.main(args) or 0)
        except RecmgError as exc:
            print(f"recmg {args.command}: error: {exc}", file=sys.stderr)
            return 1

    return output.guarded("recmg", run)


if __name__ == "__main__":
    sys.exit(main())
