"""recmg: a tiered-memory daemon for DLRM inference, with learned caching and prefetching (RecMG)."""

__version__ = "0.1.0"
