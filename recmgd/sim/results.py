"""One simulation result per (trace, policy, fraction), and the table that shows them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from recmgd.sim.driver import Counters


@dataclass
class SimResult:
    """The metrics of one scored run (docs/ARCHITECTURE.md, "The simulator's protocol")."""

    trace: str
    policy: str
    fraction: float
    capacity: int
    steps: int
    lookups: int
    on_demand: int
    hits: int
    hit_rate: float
    prefetch_issued: int
    prefetch_useful: int
    accuracy: float | None
    coverage: float | None
    slow_bytes: int
    seconds: float
    floor: int
    bound: int = 0
    gap_closed: float | None = None
    batch: int = 16
    delay: int = 1
    lookahead: int = 0  # L: the next L steps' rows were known (recmgd.sim.lookahead)
    lookahead_fills: int = 0  # announced rows fetched ahead
    lookahead_useful: int = 0  # of those, read when their step ran
    first_use_ahead: int = 0  # first uses that were hits (fetched ahead): below the floor
    pin_refused: int = 0  # evictions of announced rows the driver refused
    #: what the policy counted of itself over the whole run, warm-up included (Policy.counters: a
    #: learned policy's guard, guard_*); empty for the others
    counters: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, trace: str, policy: str, fraction: float, capacity: int, c: Counters,
                      row_bytes: int, batch: int, delay: int) -> SimResult:
        useful = c.prefetch_useful
        la = {k: int(getattr(c, k, 0)) for k in ("lookahead", "lookahead_fills", "lookahead_useful",
                                                  "first_use_ahead", "pin_refused")}
        return cls(trace=trace, policy=policy, fraction=fraction, capacity=capacity, steps=c.steps,
                   lookups=c.lookups, on_demand=c.on_demand, hits=c.hits,
                   hit_rate=c.hits / c.lookups if c.lookups else 0.0,
                   prefetch_issued=c.prefetch_issued, prefetch_useful=useful,
                   accuracy=useful / c.prefetch_issued if c.prefetch_issued else None,
                   coverage=useful / (useful + c.on_demand) if useful + c.on_demand else None,
                   slow_bytes=row_bytes * (c.on_demand + c.prefetch_issued + la["lookahead_fills"]),
                   seconds=c.seconds, floor=c.floor, bound=c.bound, batch=batch, delay=delay, **la)

    def set_gap(self, lru_on_demand: int) -> None:
        """gap_closed = (LRU - policy) / (LRU - floor), None when LRU is at the floor."""
        den = lru_on_demand - self.floor
        self.gap_closed = (lru_on_demand - self.on_demand) / den if den > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the numeric fields of a result: what --pivot can show in its cells
METRICS = tuple(f.name for f in fields(SimResult) if f.type in ("int", "float", "float | None"))


COLUMNS = [("trace", "trace", "{}"), ("policy", "policy", "{}"), ("fraction", "frac", "{:.2f}"),
           ("capacity", "capacity", "{:,}"), ("lookups", "lookups", "{:,}"),
           ("on_demand", "on_demand", "{:,}"), ("hit_rate", "hit_rate", "{:.4f}"),
           ("prefetch_issued", "pf_issued", "{:,}"), ("prefetch_useful", "pf_useful", "{:,}"),
           ("accuracy", "accuracy", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("floor", "floor", "{:,}"), ("bound", "bound", "{:,}"), ("gap_closed", "gap_closed", "{:+.3f}"),
           ("seconds", "seconds", "{:.3f}")]


#: shown when a result has lookahead
LOOKAHEAD_COLUMNS = [("lookahead_fills", "la_fills", "{:,}"), ("first_use_ahead", "first_ahead", "{:,}"),
                     ("pin_refused", "pin_refused", "{:,}")]


def format_table(results: list[SimResult], markdown: bool = False) -> str:
    """A readable table (aligned text, or GitHub markdown) of results."""
    cols = COLUMNS[:-1] + LOOKAHEAD_COLUMNS + COLUMNS[-1:] if any(r.lookahead for r in results) else COLUMNS
    head = [h for _, h, _ in cols]
    rows = []
    for r in results:
        d = r.as_dict()
        rows.append(["-" if d[k] is None else fmt.format(d[k]) for k, _, fmt in cols])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    out = []
    for r in [head, *rows]:
        out.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def format_pivot(results: list[SimResult], metric: str = "on_demand", markdown: bool = False) -> str:
    """One row per (trace, fraction, capacity), one column per policy, cells = ``metric`` (one of
    METRICS; ValueError for another)."""
    if metric not in METRICS:
        raise ValueError(f"not a metric: {metric!r} (known: {', '.join(METRICS)})")
    policies: list[str] = []
    rows: dict[tuple[str, float, int], dict[str, Any]] = {}
    for r in results:
        if r.policy not in policies:
            policies.append(r.policy)
        rows.setdefault((r.trace, r.fraction, r.capacity), {})[r.policy] = r.as_dict()[metric]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:,}" if isinstance(v, int) else f"{v:.4f}"

    head = ["trace", "frac", "capacity", *policies]
    body = [[t, f"{f:.2f}", f"{c:,}", *(cell(v.get(p)) for p in policies)] for (t, f, c), v in rows.items()]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths, strict=True))) for r in [head, *body])
