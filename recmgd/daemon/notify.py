"""sd_notify (through systemd-python) and logging setup: journal under systemd, stderr otherwise."""

from __future__ import annotations

import logging
import os
import re
import sys
import time

log = logging.getLogger(__name__)


def under_systemd() -> bool:
    """True when systemd started us (it sets INVOCATION_ID, and JOURNAL_STREAM when stderr is the journal)."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str = "info", *, force_stderr: bool = False) -> None:
    """Log to the journal under systemd (systemd.journal.JournalHandler), to stderr otherwise."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_systemd() and not force_stderr:
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="recmgd")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:  # pragma: no cover - systemd-python is a dependency
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))


#: what a STATUS= text may not hold: a newline would start another field of the datagram (MAINPID=...),
#: a NUL cannot be sent at all; C0/C1 controls and the Unicode line separators are escaped too
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def status_text(status: str) -> str:
    """``status`` as one STATUS= field: every control character escaped (a newline as \\n)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], status)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1's MONOTONIC_USEC= wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """The daemon's side of the sd_notify protocol. A no-op when NOTIFY_SOCKET is not set."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notify = None
        if self.enabled:
            from systemd import daemon as sd_daemon

            self._notify = sd_daemon.notify
        self.watchdog_interval = self._watchdog_interval()
        self._last_watchdog = 0.0
        self._last_status = ""
        self._send_error = ""  # the last send failure, logged once

    @staticmethod
    def _watchdog_interval() -> float | None:
        """Half of WATCHDOG_USEC in seconds when the watchdog is on for this process, else None."""
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not os.environ.get("NOTIFY_SOCKET"):
            return None
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
            return None
        return value / 2e6 if value > 0 else None

    def send(self, message: str) -> None:
        """Send one datagram; a failure (the manager went away, a message it cannot carry) never leaves
        here: it is logged once a kind."""
        if self._notify is None:
            return
        try:
            self._notify(message)
        except Exception as exc:  # noqa: BLE001 - notifying must never take the daemon down
            why = f"{type(exc).__name__}: {exc}"
            if why != self._send_error:
                self._send_error = why
                log.warning("sd_notify failed: %s", status_text(why))

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status_text(status)}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status_text(status)}")

    def reloading(self) -> None:
        self.send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog if half its interval has passed; called from the loop only."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_watchdog < self.watchdog_interval:
            return False
        self._last_watchdog = now
        self.send("WATCHDOG=1")
        return True

    def next_watchdog_in(self, now: float) -> float | None:
        if self.watchdog_interval is None:
            return None
        return max(0.0, self._last_watchdog + self.watchdog_interval - now)
