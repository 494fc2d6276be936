"""A free TCP port on the loopback address, for tests that start a metrics endpoint."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the kernel picks it; there is a small window before use)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port
