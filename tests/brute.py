"""Independent brute-force references for the tests: textbook caches, one lookup at a time."""

from __future__ import annotations


def brute_opt(seq: list[int], cap: int) -> list[bool]:
    """Textbook Belady: per lookup, whether it missed. On a miss with a full cache, evict the resident
    key whose next use is farthest (never used again = infinitely far)."""
    cache: set[int] = set()
    miss = []
    for i, k in enumerate(seq):
        if k in cache:
            miss.append(False)
            continue
        miss.append(True)
        if len(cache) >= cap:
            def nxt(x: int, i: int = i) -> int:
                for j in range(i + 1, len(seq)):
                    if seq[j] == x:
                        return j
                return len(seq) + 1
            cache.remove(max(sorted(cache), key=nxt))
        cache.add(k)
    return miss
