"""The classical policies, registered by name: caching (LRU, LFU, S3-FIFO, OPT, OPT with bypass) and
prefetchers on LRU (STMS, Domino, Bingo), all at row granularity, the table id standing in for the PC.

Factory options (from the drivers' common options): ``prefetch_budget`` (rows per step a prefetcher may
bring in, default 16), ``region`` (Bingo: rows per region, 1..64, default 8), ``seed``.
"""

from __future__ import annotations

from recmgd.policies.native import NativePolicy
from recmgd.policy import register


@register("lru")
class LRU(NativePolicy):
    """Least recently used; every missed row is admitted as most recent."""

    name = "lru"
    kind = "lru"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(prefetch_budget=0, seed=seed)


@register("lfu")
class LFU(NativePolicy):
    """Least frequently used (counts kept across evictions), ties broken by recency."""

    name = "lfu"
    kind = "lfu"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(prefetch_budget=0, seed=seed)


@register("s3fifo")
class S3FIFO(NativePolicy):
    """S3-FIFO: a small FIFO (10%), a main FIFO with reinsertion, and a ghost of the small one."""

    name = "s3fifo"
    kind = "s3fifo"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(prefetch_budget=0, seed=seed)


@register("opt")
class OPT(NativePolicy):
    """Belady on demand accesses: admits every miss, evicts the farthest next use. Needs the future."""

    name = "opt"
    kind = "opt"
    needs_future = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(prefetch_budget=0, seed=seed)


@register("opt-bypass")
class OPTBypass(NativePolicy):
    """Belady with bypass: keeps the capacity rows with the nearest next use. Needs the future."""

    name = "opt-bypass"
    kind = "opt-bypass"
    needs_future = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(prefetch_budget=0, seed=seed)


@register("stms")
class STMS(NativePolicy):
    """STMS on LRU: a global history of triggers (misses, first reads of prefetched rows) and an index;
    on a trigger, prefetch what followed its last occurrence."""

    name = "stms"
    kind = "stms"

    def __init__(self, prefetch_budget: int = 16, seed: int = 0) -> None:
        super().__init__(prefetch_budget=prefetch_budget, seed=seed)


@register("domino")
class Domino(NativePolicy):
    """Domino on LRU: the STMS history, indexed by the last two triggers (falling back to one)."""

    name = "domino"
    kind = "domino"

    def __init__(self, prefetch_budget: int = 16, seed: int = 0) -> None:
        super().__init__(prefetch_budget=prefetch_budget, seed=seed)


@register("bingo")
class Bingo(NativePolicy):
    """Bingo on LRU: footprints of regions of ``region`` consecutive rows of a table, predicted from
    the trigger event (table+row, then table+offset)."""

    name = "bingo"
    kind = "bingo"

    def __init__(self, prefetch_budget: int = 16, region: int = 8, seed: int = 0) -> None:
        super().__init__(prefetch_budget=prefetch_budget, region=region, seed=seed)
