"""Classical policies; importing this package registers every one with :func:`recmgd.policy.register`."""

from recmgd.policies.classic import LFU, LRU, OPT, S3FIFO, STMS, Bingo, Domino, OPTBypass
from recmgd.policies.native import IdMap, NativePolicy

__all__ = ["LFU", "LRU", "OPT", "S3FIFO", "STMS", "Bingo", "Domino", "IdMap", "NativePolicy", "OPTBypass"]
