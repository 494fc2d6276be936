"""Run a function as the nobody user, for the tests of what an unprivileged user may do (they need root
to switch to it). A forked child, not a new interpreter: the venv's python may not be nobody's to run."""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Callable


def as_nobody(fn: Callable[[], str | None], timeout: float = 60.0) -> str:
    """fn's answer (a string; None counts as ""), run in a forked child under the nobody user (no
    supplementary groups). Fails (AssertionError) if fn raised or the child did not end within
    timeout seconds (it is then killed)."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(w, (fn() or "").encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        deadline = time.monotonic() + timeout
        while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"no answer within {timeout} s (the child hung)")
            time.sleep(0.02)
        status = done[1]
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child failed: status {status}"
        return f.read().decode()
