"""The policy's side of a step: building a policy for a pool, and running a slow one in a thread.

:func:`create_policy` builds a registered policy for a pool (refusing what cannot run live: a policy
that needs the future, a learned one without trained models or with a checkpoint of the other
granularity). :class:`StepWorker` runs a slow policy's steps in a thread of its own (early admission:
the driver keeps draining the rings and filling missed rows while the policy thinks; see
recmgd.daemon.loop).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from recmgd import policy as policy_mod
from recmgd.errors import ModelError, PolicyError
from recmgd.keys import PAGE_BYTES
from recmgd.models.granularity import Granularity
from recmgd.policy import EMPTY_KEYS, Decision, Policy, StepView, as_keys

log = logging.getLogger(__name__)

#: early victims the step worker lists after each step (at most the capacity)
EARLY_VICTIMS = 1024


class StepWorker:
    """Runs a slow policy's steps in a thread of its own (early admission, see the module doc).

    ``submit`` hands over (step number, view, notices); the thread tells the policy the notices
    (``("evicted" | "rejected", keys)``, in the order the driver acted), runs ``observe``, and
    publishes the decision in ``done`` and a fresh list of early victims in ``victims``. A view of
    None carries notices only. An exception in the policy stops the worker and is raised to the loop
    by :meth:`raise_error`.
    """

    def __init__(self, policy: Policy, n_victims: int, name: str) -> None:
        self.policy = policy
        self.n_victims = n_victims
        self.victims = as_keys(policy.early_victims(n_victims, EMPTY_KEYS))
        self.done: deque[tuple[int, Decision]] = deque()  # appended by the thread, popped by the loop
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._in: queue.SimpleQueue[tuple[int, StepView | None, list[tuple[str, np.ndarray]]] | None] = \
            queue.SimpleQueue()
        self._submitted = 0
        self._finished = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"recmgd-step-{name}", daemon=True)
        self._thread.start()

    def submit(self, seq: int, view: StepView | None, notices: list[tuple[str, np.ndarray]]) -> None:
        self._submitted += 1
        self._in.put((seq, view, notices))

    def _run(self) -> None:
        while True:
            item = self._in.get()
            if item is None:
                return
            seq, view, notices = item
            if self.error is None:
                try:
                    t0 = time.perf_counter()
                    for kind, keys in notices:
                        (self.policy.evicted if kind == "evicted" else self.policy.rejected)(keys)
                    if view is not None:
                        dec = self.policy.observe(view)
                        self.victims = as_keys(self.policy.early_victims(self.n_victims, EMPTY_KEYS))
                        self.done.append((seq, dec))
                    self.seconds += time.perf_counter() - t0
                except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
                    self.error = exc
            with self._idle:
                self._finished += 1
                self._idle.notify_all()

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait until every step handed over is finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._finished >= self._submitted, timeout)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after the steps handed over (a daemon thread: a hung policy step does not
        keep the process from exiting)."""
        self._in.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("policy step thread %s did not stop in %.0f s", self._thread.name, timeout)



def _os_reason(exc: OSError) -> str:
    """One line for an OSError met while a policy loaded its checkpoint."""
    what = f"{exc.filename}: " if exc.filename else ""
    return f"{what}cannot read the checkpoint ({exc.strerror or type(exc).__name__})"


def create_policy(name: str, options: dict[str, object], *, pool: str | None = None,
                  mode: str = "rows") -> Policy:
    """Build a policy through the registry; an unknown name or a failing factory is a RecmgError.

    ``mode`` is what the pool's driver moves ("rows" or "pages"): a learned policy is given that
    granularity, so that a checkpoint trained on the other one is refused (a PolicyError naming
    ``pool``, the model dir and both granularities)."""
    if policy_mod.is_learned(name):
        gran = Granularity.pages(PAGE_BYTES) if mode == "pages" else Granularity.rows()
        options = {**options, "granularity": gran}
    try:
        pol = policy_mod.create(name, **options)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    except (ModelError, OSError) as exc:  # (OSError: a checkpoint's file unreadable past its checks)
        where = f"pool {pool} ({'page' if mode == 'pages' else 'row'} mode): " if pool else ""
        msg = str(exc) if isinstance(exc, ModelError) else _os_reason(exc)
        raise PolicyError(f"{where}{msg}") from None
    if pol.needs_future:
        raise PolicyError(f"policy {name!r} needs the future (OPT) and cannot run live")
    if pol.learned and getattr(pol, "trained", None) is None:
        where = options.get("model_dir")
        if where:  # (model_dir in the configuration, or recmgctl policy --model)
            raise PolicyError(f"policy {name!r} needs trained models: {where} holds no checkpoint (make one "
                              "with `recmg train`)")
        raise PolicyError(f"policy {name!r} needs trained models: set model_dir (or recmgctl policy --model) "
                          "to a checkpoint made by `recmg train`")
    return pol
