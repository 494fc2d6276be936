"""Training labels from Belady OPT under the simulator's protocol (a thin adapter over recmgd.oracle)."""

from __future__ import annotations

import numpy as np

from recmgd.oracle import StepsLike, belady
from recmgd.trace.steps import as_steps


def opt_labels(steps: StepsLike, capacity: int, *, keep_bypass: bool = True
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per step, two bool arrays aligned with the step's keys.

    ``keep[b][i]``: OPT with ``capacity`` rows still holds ``steps[b][i]`` at its next use (False when
    there is none): the caching label (from OPT with bypass by default, so that rows OPT would not even
    admit are labelled 0 and the model learns admission too). ``miss[b][i]``: demand OPT (the ``opt``
    reference) misses this lookup: the prefetching model's targets.
    """
    s = as_steps(steps)
    cap = max(1, int(capacity))
    miss = belady(s, cap, bypass=False).miss
    keep = belady(s, cap, bypass=True).held_at_next_use if keep_bypass else belady(s, cap).held_at_next_use
    bounds = s.offsets[1:-1] - s.offsets[0]
    return list(np.split(keep, bounds)), list(np.split(miss, bounds))
