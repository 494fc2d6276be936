"""What a learned policy's keys are: rows, or pages of the slow tier (page mode, ``recmg sim --pages``).

A checkpoint trained on row keys means nothing on page keys and the other way round (the prefetching
model's embeddings belong to the keys it was trained on; the caching model's features are a key's
history of reuse, which differs between a row and a page of unrelated rows). ``recmg train`` records
the granularity in the checkpoint's config.json (``"granularity"``); a checkpoint without it (made
before page mode) is a row checkpoint. The daemon in page mode, and ``recmg sim --pages``, load page
checkpoints only; row mode and ``recmg sim --policies`` load row checkpoints only.

No torch here: the daemon and the simulator check a checkpoint's granularity before they load it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recmgd.errors import ModelError
from recmgd.models import ckfiles

ROWS = "rows"
PAGES = "pages"
#: a checkpoint directory's config (recmgd.models.checkpoint): there, it is a checkpoint
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Granularity:
    """Rows, or pages of ``page_bytes`` holding rows of ``row_bytes`` (0: not known here, e.g. the
    daemon, whose tables may each have their own row size)."""

    unit: str = ROWS
    page_bytes: int = 0
    row_bytes: int = 0

    @classmethod
    def rows(cls) -> Granularity:
        return cls(ROWS)

    @classmethod
    def pages(cls, page_bytes: int, row_bytes: int = 0) -> Granularity:
        if page_bytes < 1 or row_bytes < 0 or row_bytes > page_bytes:
            raise ValueError(f"pages of {page_bytes} bytes with rows of {row_bytes} bytes: need "
                             "0 < row bytes <= page bytes")
        return cls(PAGES, int(page_bytes), int(row_bytes))

    @property
    def is_pages(self) -> bool:
        return self.unit == PAGES

    def describe(self) -> str:
        """``rows``, ``pages of 4096 bytes`` or ``pages of 4096 bytes with rows of 256 bytes``."""
        if not self.is_pages:
            return "rows"
        rows = f" with rows of {self.row_bytes} bytes" if self.row_bytes else ""
        return f"pages of {self.page_bytes} bytes{rows}"

    def train_args(self) -> str:
        """The `recmg train` options that make a checkpoint of this granularity (`` --page-bytes 4096``)."""
        if not self.is_pages:
            return ""
        rows = f" --row-bytes {self.row_bytes}" if self.row_bytes else ""
        return f" --page-bytes {self.page_bytes}{rows}"

    def matches(self, other: Granularity) -> bool:
        """Same unit and page size, and the same row size where both know it."""
        if self.unit != other.unit:
            return False
        if not self.is_pages:
            return True
        if self.page_bytes != other.page_bytes:
            return False
        return not (self.row_bytes and other.row_bytes and self.row_bytes != other.row_bytes)

    def as_dict(self) -> dict[str, Any]:
        """The ``granularity`` field of a checkpoint's config.json."""
        if not self.is_pages:
            return {"unit": ROWS}
        return {"unit": PAGES, "page_bytes": self.page_bytes, "row_bytes": self.row_bytes}


def from_config(cfg: dict[str, Any], where: str) -> Granularity:
    """The granularity a checkpoint's config records (rows when it has none: older checkpoints);
    ModelError naming ``where`` when the field is malformed."""
    g = cfg.get("granularity")
    if g is None:
        return Granularity.rows()
    if not isinstance(g, dict) or g.get("unit") not in (ROWS, PAGES):
        raise ModelError(f"{where}: granularity {g!r}: not rows or pages")
    if g["unit"] == ROWS:
        return Granularity.rows()
    pb, rb = g.get("page_bytes"), g.get("row_bytes", 0)
    if not isinstance(pb, int) or not isinstance(rb, int) or isinstance(pb, bool) or isinstance(rb, bool):
        raise ModelError(f"{where}: granularity {g!r}: page_bytes and row_bytes must be integers")
    try:
        return Granularity.pages(pb, rb)
    except ValueError as exc:
        raise ModelError(f"{where}: granularity: {exc}") from None


def checkpoint_config(model_dir: str | os.PathLike[str]) -> Path | None:
    """The config.json of the checkpoint in ``model_dir``; None when ``model_dir`` is missing or an empty
    directory (a policy trains there and saves a checkpoint); ModelError (one line) for anything else
    (not a directory, a config.json that is not a regular file such as a FIFO, or files without a
    config.json: a new checkpoint would overwrite them)."""
    d = Path(model_dir)
    f = d / CONFIG_FILE
    try:
        st = os.stat(f)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise ModelError(f"{d}: not a directory") from None
    except OSError as exc:
        raise ModelError(f"{f}: cannot read ({exc.strerror})") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{f}: not a regular file")
        return f
    if not d.exists():
        return None
    if not d.is_dir():
        raise ModelError(f"{d}: not a directory")
    try:
        empty = next(os.scandir(d), None) is None
    except OSError as exc:
        raise ModelError(f"{d}: cannot read ({exc.strerror})") from None
    if not empty:
        raise ModelError(f"{d}: not a recmg checkpoint (no {CONFIG_FILE}) and not empty: a new checkpoint "
                         "is trained and saved only into an empty or new directory")
    return None


def of_checkpoint(model_dir: str | os.PathLike[str]) -> Granularity | None:
    """The granularity of the checkpoint in ``model_dir``, or None when there is none yet (an empty or
    missing directory: :func:`checkpoint_config`, whose ModelError it raises for anything else; the full
    checks of the checkpoint are :func:`recmgd.models.checkpoint.read_config`'s)."""
    f = checkpoint_config(model_dir)
    if f is None:
        return None
    cfg = ckfiles.read_json(f)  # (a regular file of at most 1 MB; JSON nested too deep refused)
    if not isinstance(cfg, dict):
        raise ModelError(f"{f}: not a recmg model checkpoint")
    return from_config(cfg, str(f))


def mismatch(model_dir: str | os.PathLike[str], have: Granularity, want: Granularity, who: str) -> str | None:
    """One line saying that the checkpoint in ``model_dir`` (of granularity ``have``) does not fit
    ``who``, which runs on ``want``; None when it fits."""
    if have.matches(want):
        return None
    return (f"{model_dir}: checkpoint trained on {have.describe()}, but {who} runs on {want.describe()}; "
            f"train one with `recmg train TRACE --out DIR{want.train_args()}`")


def check(model_dir: str | os.PathLike[str], want: Granularity, who: str) -> None:
    """ModelError (one line: the model dir, both granularities) when the checkpoint in ``model_dir``
    is of another granularity than ``want``; nothing when it fits or there is no checkpoint."""
    have = of_checkpoint(model_dir)
    if have is None:
        return
    msg = mismatch(model_dir, have, want, who)
    if msg:
        raise ModelError(msg)
