"""`recmgd`: not yet available (see the daemon issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("recmgd: not yet available", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
