"""`recmg`: offline work on traces and models. One module per subcommand (set_argparser + main)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import TextIO

from recmgd.cli import signals
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
    parser = argparse.ArgumentParser(
        prog="recmg", description="Offline work on traces and models: convert and inspect traces, simulate "
        "policies, train and score RecMG's models, run the demo."
    )
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


class _StdoutError(Exception):
    """A write to stdout failed (not a broken pipe): the output is lost; one line, exit 1."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))


class _Stdout:
    """sys.stdout, with a write error (a full disk, an I/O error) raised as _StdoutError, so that it is
    told from the OSErrors of the files a subcommand reads and writes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc) from None

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _drop_stdout() -> None:
    """Point fd 1 at /dev/null: what stdout still buffers goes nowhere at exit, with no second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """The CLI: a RecmgError is one line (exit 1), a write error on stdout one line (exit 1), Ctrl-C
    one line (exit 130), SIGTERM one line (exit 143), each with no output left half-written."""
    with signals.raised():
        try:
            return _main(argv)
        except KeyboardInterrupt:
            signals.landed()
            print("recmg: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        except signals.Terminated:
            signals.landed()
            print("recmg: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM


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
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)  # type: ignore[assignment]
    try:
        rc = int(mod.main(args) or 0)
        sys.stdout.flush()
        return rc
    except RecmgError as exc:
        print(f"recmg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except _StdoutError as exc:
        print(f"recmg: cannot write the output: {exc}", file=sys.stderr)
        _drop_stdout()
        return 1
    except BrokenPipeError:
        return 0
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
