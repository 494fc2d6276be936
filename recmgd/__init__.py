"""recmg: a tiered-memory daemon for DLRM inference, with learned caching and prefetching (RecMG)."""

from importlib import metadata as _metadata

try:  # (pyproject.toml is the version's one home; the installed package's metadata carries it)
    __version__ = _metadata.version("recmgd")
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown (not installed)"
