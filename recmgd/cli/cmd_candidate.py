"""`recmg candidate WINDOW --policy NAME --capacity N --out DIR --result FILE`: train a candidate model
on a window of a pool's recorded stream and score it against the current one (recmgd's retraining).

The window is a recording (one sample per app batch, so one step per sample). Its last
``--score-part`` of the steps is held out: the candidate is trained (and saved to ``--out``) on the
steps before it, then the candidate, the current model (``--current DIR``; without it, LRU, what the
daemon runs while it has no checkpoint) and LRU are each run by the simulator over the whole window,
warming on the earlier steps and counting the on-demand fetches of the held-out ones. The result is one
JSON object written to ``--result`` (atomically); the daemon reads it and switches only when the
candidate fetched less. Runs at ``--nice`` with ``--threads`` torch threads: recmgd starts it as a
separate, low-priority process, so its loop never waits for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from recmgd.errors import ModelError
from recmgd.fileout import whole_file, write_reason

log = logging.getLogger(__name__)


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("window", metavar="WINDOW", help="the recorded window (a recmg binary trace)")
    parser.add_argument("--policy", required=True, help="the learned policy (recmg, recmg-cache, ...)")
    parser.add_argument("--capacity", type=int, required=True, help="the pool's policy capacity in rows")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the candidate checkpoint goes")
    parser.add_argument("--result", required=True, metavar="FILE", help="the JSON result to write")
    parser.add_argument("--current", default="", metavar="DIR", help="the current checkpoint (none: LRU)")
    parser.add_argument("--score-part", type=float, default=0.25,
                        help="the most recent part of the window the models are scored on (default 0.25)")
    parser.add_argument("--options", default="{}", help="the pool's policy options (JSON object)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--nice", type=int, default=10, help="added to the process's nice value (default 10)")


def _score(name: str, options: dict[str, object], steps: object, capacity: int, warm: int) -> int:
    from recmgd import policy as policy_mod
    from recmgd.sim import drive

    pol = policy_mod.create(name, **options)
    return int(drive(pol, steps, capacity, warm).on_demand)  # type: ignore[arg-type]


def main(args: argparse.Namespace) -> int:
    if args.nice:
        os.nice(args.nice)
    import torch

    from recmgd import policy as policy_mod
    from recmgd.trace import open_trace

    torch.set_num_threads(max(1, args.threads))
    if not 0 < args.score_part < 1:
        print("recmg candidate: --score-part must be in (0, 1)", file=sys.stderr)
        return 2
    if not policy_mod.is_learned(args.policy):
        print(f"recmg candidate: {args.policy!r} is not a learned policy", file=sys.stderr)
        return 2
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        print(f"recmg candidate: --options: {exc}", file=sys.stderr)
        return 2
    options = {k: v for k, v in options.items() if k != "model_dir"}
    options["threads"] = max(1, args.threads)
    options.setdefault("epochs", args.epochs)
    steps = open_trace(args.window).steps(1)
    n = len(steps)
    score = max(1, int(args.score_part * n))
    warm = n - score
    if warm < 2:
        print(f"recmg candidate: {args.window}: {n} steps, too few to train and score", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    # the candidate: trained on the warm steps (fit saves it to --out), scored on the rest
    candidate = _score(args.policy, {**options, "model_dir": args.out}, steps, args.capacity, warm)
    train_s = time.perf_counter() - t0
    if args.current:
        current = _score(args.policy, {**options, "model_dir": args.current}, steps, args.capacity, warm)
    else:
        current = None
    lru = _score("lru", {}, steps, args.capacity, warm)
    result = {
        "candidate_on_demand": candidate,
        "current_on_demand": lru if current is None else current,
        "current": args.current or "lru",
        "lru_on_demand": lru,
        "lookups": int(steps.offsets[-1] - steps.offsets[0]),
        "steps": n, "train_steps": warm, "score_steps": score,
        "capacity": args.capacity, "train_s": round(train_s, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    try:
        with whole_file(args.result) as tmp, open(tmp, "w") as fh:
            json.dump(result, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ModelError(f"{args.result}: cannot write the result ({write_reason(exc)})") from None
    log.info("candidate %d, current %d, lru %d on-demand fetches on the last %d steps", candidate,
             result["current_on_demand"], lru, score)
    return 0
