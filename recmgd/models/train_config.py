"""What training is configured by and what it produces, without torch (a policy loaded from a checkpoint
reads these and never imports torch; recmgd.models.train trains)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recmgd.errors import TraceError
from recmgd.models import hazard

if TYPE_CHECKING:
    from recmgd.models.nets import CacheNet, PrefetchNet
    from recmgd.models.voyager_net import VoyagerNet


#: the fewest steps the models train on (`recmg train` and the simulator train on the first half of a
#: trace's steps, so a trace needs twice as many)
MIN_TRAIN_STEPS = 1


class TrainStepsError(TraceError):
    """Too few steps to train on, or no lookups in them."""


def check_train_steps(n_steps: int, n_lookups: int) -> None:
    """TrainStepsError when ``n_steps`` steps of ``n_lookups`` lookups in all cannot be trained on."""
    if n_steps < MIN_TRAIN_STEPS:
        raise TrainStepsError(f"{n_steps} steps to train on; training needs at least {MIN_TRAIN_STEPS}")
    if n_lookups < 1:
        raise TrainStepsError(f"no lookups in the {n_steps} steps to train on")


def too_few_steps(trace: str, n_steps: int, batch: int) -> str | None:
    """The one line for a trace of ``n_steps`` steps of ``batch`` samples whose first half is too short
    to train on; None when it is long enough."""
    if n_steps // 2 >= MIN_TRAIN_STEPS:
        return None
    return f"trace {trace}: {n_steps} steps of {batch} samples; training needs at least {2 * MIN_TRAIN_STEPS}"


@dataclass
class TrainConfig:
    epochs: int = 4
    batch: int = 256
    seed: int = 0
    window: int = 4  # prefetch lookahead W (steps)
    prefetch_loss: str = "chamfer"  # or "ce"
    dim: int = 16
    queries: int = 4
    max_pos: int = 32
    max_cand: int = 128
    depth: int = 8
    ctx_now: int = 48
    ctx_past: int = 96
    past_steps: int = 3
    max_samples: int = 4000
    voyager_epochs: int = 2
    voyager_seq: int = 64
    voyager_hidden: int = 64
    voyager_vocab: int = 16384
    # the hazard table's label: used again within this many steps (0: half the cache's turnover time,
    # capacity / rows a step / 2: on amazon_video a wide range around it did about equally well in
    # development runs, while obd_random, every row used every few steps, needs 1)
    hazard_horizon: int = 0
    hazard_p_classes: int = hazard.P_CLASSES
    hazard_reuse_classes: int = hazard.REUSE_CLASSES
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Trained:
    cache: CacheNet | None = None
    prefetch: PrefetchNet | None = None
    prefetch_keys: np.ndarray | None = None
    voyager: VoyagerNet | None = None
    voyager_keys: np.ndarray | None = None
    hazard: np.ndarray | None = None  # (classes x age buckets), recmgd.models.hazard
    hazard_edges: tuple[np.ndarray, np.ndarray] | None = None  # class edges: keep-probability, reuse
    capacity: int = 0
    config: TrainConfig = field(default_factory=TrainConfig)
    stats: dict[str, float] = field(default_factory=dict)
