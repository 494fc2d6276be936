"""The one interface every caching policy and prefetcher implements (docs/ARCHITECTURE.md: one policy,
two drivers).

A *driver* (the simulator, from a trace; the daemon, from the live access rings) owns the truth: which
keys are resident in the fast tier. It shows the policy each step's deduplicated accesses with the
residency it observed, and applies the policy's answer before the next step (``delay`` steps later in
the simulator). The policy never touches memory itself.

Contract, for every step ``b``:

1. The driver calls ``policy.observe(view)`` with the keys read in step ``b`` (deduplicated, in order
   of first appearance) and, for each, whether it was resident (``hit``) when read.
2. The policy returns a :class:`Decision`: keys to ``evict``, missed keys to ``admit``, and keys to
   ``prefetch`` (not read in this step, predicted to be read soon).
3. The driver applies it: first every eviction, then admissions, then prefetches, in the order given.
   Keys already resident are skipped. After applying, resident keys must not exceed ``capacity``: a
   decision that would overflow is a :class:`~recmgd.errors.PolicyError` in the simulator. The daemon
   may apply fewer insertions than asked (fill budget caps); it then calls ``policy.rejected(keys)``
   with the keys it did not insert, so the policy's own view of residency stays exact.
4. Early admission (the live daemon only, for policies with ``early_admission``): the daemon runs the
   policy's steps in a thread of their own and, as soon as it drains a step, fills its missed rows
   itself, evicting rows the policy named in ``early_victims`` (it says so through ``evicted`` before
   the next ``observe``); the step is then shown with those rows ``hit``. Decisions still follow,
   without the rows a later step already read (that step's view decides them). So a slow policy step
   delays its own evictions and prefetches, never the fills of the rows the apps just read.

Keys are int64 values from :mod:`recmgd.keys` (table in the high bits, row in the low 40 bits).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recmgd.simcore import IdMap

EMPTY_KEYS = np.zeros(0, dtype=np.int64)

#: Bingo's most rows a region (a region's footprint is a 64-bit mask): its option's bound, for the
#: simulator's flag and the daemon's config alike
MAX_REGION = 64


@dataclass(frozen=True)
class StepView:
    """What the driver saw in one step."""

    step: int
    keys: np.ndarray  # int64, deduplicated, first-appearance order
    hit: np.ndarray  # bool, same length: resident when read
    hints: np.ndarray = field(default_factory=lambda: EMPTY_KEYS)  # int64 keys an app announced
    #: int64 keys of the next L steps (lookahead, deduplicated, step by step): the driver fills them
    #: itself within its budget and never evicts them before their step; a policy may use them
    announced: np.ndarray = field(default_factory=lambda: EMPTY_KEYS)


@dataclass
class Decision:
    """What the policy wants done before the next step."""

    evict: np.ndarray = field(default_factory=lambda: EMPTY_KEYS)
    admit: np.ndarray = field(default_factory=lambda: EMPTY_KEYS)
    prefetch: np.ndarray = field(default_factory=lambda: EMPTY_KEYS)


class Policy(ABC):
    """A caching policy, optionally with a prefetcher; driven step by step."""

    #: registry name, as used by ``recmg sim --policies`` and the daemon config
    name: str = ""
    #: True for policies that must be trained (``fit``) before they are scored
    learned: bool = False
    #: True for policies that need the whole future (OPT): the simulator only
    needs_future: bool = False

    @abstractmethod
    def reset(self, capacity: int) -> None:
        """Forget all state and start with an empty fast tier of ``capacity`` rows."""

    @abstractmethod
    def observe(self, view: StepView) -> Decision:
        """Take one step's accesses; return what to evict, admit and prefetch."""

    #: True for policies whose step is slow next to LRU's (the learned ones): the live daemon runs their
    #: steps in a thread of their own and fills each step's missed rows itself (early admission)
    early_admission: bool = False

    def rejected(self, keys: np.ndarray) -> None:  # noqa: B027 - optional hook
        """The driver did not insert these keys (budget); policies that track residency forget them."""

    def early_victims(self, n: int, reading: np.ndarray) -> np.ndarray:
        """Up to ``n`` resident keys to evict first, as of the last step, none of them in ``reading``
        (asked of policies with ``early_admission``; the driver says what it evicted by :meth:`evicted`)."""
        return EMPTY_KEYS

    def evicted(self, keys: np.ndarray) -> None:
        """The driver evicted these resident keys itself (early admission); by default as
        :meth:`rejected`: policies that track residency forget them."""
        self.rejected(keys)

    def step_by_step(self) -> None:  # noqa: B027 - optional hook
        """The driver will drive this policy only one step at a time, through :meth:`observe`,
        :meth:`rejected` and :meth:`evicted` (the daemon), never by a whole-trace loop that shares its
        state: from the next :meth:`reset` on, a policy may forget the rows it holds no state for (the
        classical C policies give their ids back), so its memory follows the fast tier, not every row
        ever seen. Decisions must not change."""

    def shared_key_map(self) -> IdMap | None:
        """A key map the daemon's mirror may share (:meth:`recmgd.simcore.IdMap.share`, holder
        :data:`~recmgd.simcore.HOLDER_MOVER`), or None (the default: the policy keeps no such map, or
        steps in another thread). Asked after :meth:`reset`; the map is the policy's until its next reset."""
        return None

    def state_bytes(self) -> int:
        """Bytes the policy's own state holds allocated, where it counts them (the C policies and the
        learned C step do); 0 otherwise."""
        return 0

    def counters(self) -> dict[str, int]:
        """What the policy counts of itself, for the daemon's stats and metrics (flat, integer values;
        names the daemon's own counters do not use); none by default. The learned policies report their
        guard here (``guard_*``)."""
        return {}

    def fit(self, steps: Sequence[np.ndarray], capacity: int) -> None:  # noqa: B027 - optional hook
        """Train on a list of steps (each an int64 array of deduplicated keys). Learned policies only."""

    def set_future(self, steps: Sequence[np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Give a future-knowing policy (OPT) the whole sequence of steps it will be driven through."""


PolicyFactory = Callable[..., Policy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    """Class decorator: make a policy available by name to the simulator and the daemon."""

    def deco(factory: PolicyFactory) -> PolicyFactory:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


_BUILTIN_MODULES = ("recmgd.policies", "recmgd.models.policies")


def _load_builtin(wanted: Iterable[str] | None = None) -> None:
    """Import the policy modules (importing registers them), lazily: the learned policies pull in
    torch, so they are imported only when a wanted name is not among the classical ones (or when
    every name is asked for)."""
    import importlib

    for mod in _BUILTIN_MODULES:
        if wanted is not None and all(w in _REGISTRY for w in wanted):
            return
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name is None or not mod.startswith(exc.name):
                raise


def available() -> list[str]:
    """Names of every registered policy."""
    _load_builtin()
    return sorted(_REGISTRY)


def is_learned(name: str) -> bool:
    """Whether the policy registered as ``name`` is a learned one (it loads trained models from a
    ``model_dir``); False for an unknown name."""
    _load_builtin([name])
    return bool(getattr(_REGISTRY.get(name), "learned", False))


def unknown(names: Iterable[str]) -> list[str]:
    """The names in ``names`` that no policy is registered under (loads only what it must)."""
    names = list(names)
    _load_builtin(names)
    return [n for n in names if n not in _REGISTRY]


def create(name: str, **options: object) -> Policy:
    """Build a policy by registry name.

    ``options`` are offered to the factory; those its signature does not take are dropped, so a driver
    can pass one set of options (``prefetch_budget``, ``seed``, ``model_dir``, ``threads``, ...) to every
    policy. An unknown name is a ValueError that lists the known ones.
    """
    _load_builtin([name])
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return factory(**options)


def as_keys(values: Iterable[int] | np.ndarray) -> np.ndarray:
    """Any iterable of keys as a contiguous int64 array."""
    return np.ascontiguousarray(np.fromiter(values, dtype=np.int64) if not isinstance(values, np.ndarray)
                                else values.astype(np.int64, copy=False))
