"""`recmg candidate WINDOW --policy NAME --capacity N --out DIR --result FILE`: train a candidate model
on a window of a pool's recorded stream and score it against the current one (recmgd's retraining).

The window is a recording (one sample per app batch, so one step per sample). Its last
``--score-part`` of the steps is held out: the candidate is trained afresh on the steps before it,
then the candidate, the current model (``--current DIR``, a checkpoint, only read; without it, LRU,
what the daemon runs while it has no checkpoint) and LRU are each run by the simulator over the whole
window, warming on the earlier steps and counting the on-demand fetches of the held-out ones. The
candidate is then saved to ``--out`` (a new or empty directory, or an earlier candidate's checkpoint,
replaced whole; a directory of other files is refused). The result is one JSON object written to
``--result`` (atomically); the daemon reads it and switches only when the candidate fetched less. The
two go together: a result that cannot be written leaves no new checkpoint (and an earlier one in
``--out`` as it was), and the error line says so; only a result that was written but could not be put
in place after the save keeps a new checkpoint that replaced an earlier one (the line says so too).
``--out``, ``--result``, ``--current`` and ``--options`` are checked before anything is trained. Runs
at ``--nice`` with ``--threads`` torch threads: recmgd starts it as a separate, low-priority process,
so its loop never waits for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from recmgd.cli.argtypes import EPOCHS, THREADS, check_output_dir, check_output_file, integer, number
from recmgd.daemon.retrain import TRAINER_NICE
from recmgd.errors import ModelError, RecmgError
from recmgd.fileout import missing_dirs, remove_dirs, whole_file, write_reason
from recmgd.keys import MAX_CAPACITY

log = logging.getLogger(__name__)


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("window", metavar="WINDOW", help="the recorded window (a recmg binary trace)")
    parser.add_argument("--policy", required=True, help="the learned policy (recmg, recmg-cache, ...)")
    parser.add_argument("--capacity", type=integer(1, MAX_CAPACITY), required=True,
                        help="the pool's policy capacity in rows")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the candidate checkpoint goes: a new or empty directory, or a "
                             "checkpoint (an earlier candidate), which is replaced by the one trained now; "
                             "always trained afresh")
    parser.add_argument("--result", required=True, metavar="FILE", help="the JSON result to write")
    parser.add_argument("--current", default="", metavar="DIR",
                        help="the current checkpoint, only read (none: LRU)")
    parser.add_argument("--score-part", type=number(0.0, 1.0, lo_open=True, hi_open=True), default=0.25,
                        help="the most recent part of the window the models are scored on (default 0.25)")
    parser.add_argument("--options", default="{}",
                        help="the pool's policy options (JSON object; the keys of recmgd.toml's "
                             "[policy.options])")
    parser.add_argument("--threads", type=THREADS, default=1, help="torch threads (default 1)")
    parser.add_argument("--epochs", type=EPOCHS, default=4, help="training epochs (default 4)")
    parser.add_argument("--nice", type=integer(0, 19), default=TRAINER_NICE,
                        help=f"added to the process's nice value (default {TRAINER_NICE})")


def parse_options(text: str) -> dict[str, Any]:
    """The policy options of ``--options``: a JSON object whose keys and values are those the daemon's
    configuration allows (recmgd.daemon.config.POLICY_OPTIONS, the one home of them); ValueError (one
    line) naming the key and what it takes."""
    from recmgd.daemon.config import POLICY_OPTIONS

    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError(f"not a JSON object: {text[:60]!r}")
    for key, value in options.items():
        if key not in POLICY_OPTIONS:
            raise ValueError(f"unknown option {key[:60]!r} (known: {', '.join(sorted(POLICY_OPTIONS))})")
        typ, lo, hi = POLICY_OPTIONS[key]
        ok = isinstance(value, (int, float) if typ is float else int) and not isinstance(value, bool)
        if ok and typ is float:
            ok = lo <= value <= (float("inf") if hi is None else hi)  # NaN fails both
        elif ok:
            ok = lo <= value and (hi is None or value <= hi)
        if not ok:
            kind = "a number" if typ is float else "an integer"
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:35] + "[...]"
            lo_s, hi_s = (f"{lo:g}", f"{hi:g}") if typ is float else (str(int(lo)), str(hi))
            raise ValueError(f"{key}: {shown} is not {kind} in {lo_s}..{'' if hi is None else hi_s}")
    return options


def _score(pol: object, steps: object, capacity: int, warm: int) -> int:
    from recmgd.sim import drive

    return int(drive(pol, steps, capacity, warm).on_demand)  # type: ignore[arg-type]


def _check_paths(args: argparse.Namespace) -> None:
    """--current, --out and --result, before anything is read or trained (RecmgError, one line); nothing
    is made in --current, not even the probe of a writable folder."""
    from recmgd.models import checkpoint

    if args.current:
        try:
            checkpoint.read_config(args.current)
        except ModelError as exc:
            raise ModelError(f"--current {exc}") from None
        cur = Path(args.current).resolve()
        for flag, path in (("--out", args.out), ("--result", args.result)):
            p = Path(path).resolve()
            if p == cur or cur in p.parents:
                raise RecmgError(f"{flag} {path} is in --current {args.current}, which is only read: the "
                                 "candidate's files go elsewhere")
    check_output_file(args.result, "--result")
    check_output_dir(args.out, "--out")
    try:
        checkpoint.check_save_dir(args.out)  # an earlier candidate is replaced; other files never are
    except ModelError as exc:
        raise RecmgError(f"--out {exc}") from None


def _unsave(out: Path, made: list[Path]) -> bool:
    """Remove a checkpoint saved into ``out`` and the folders ``made`` for it (innermost first); whether
    nothing of it is left."""
    from recmgd.models.checkpoint import CONFIG_FILE, INFERENCE_FILE, KEYS_FILE, WEIGHTS_FILE

    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE, KEYS_FILE, INFERENCE_FILE):  # config.json first
            (out / name).unlink(missing_ok=True)
    except OSError as exc:
        log.debug("%s: not removed (%s)", out, exc.strerror)
        return False
    return remove_dirs(made)


def _save_with_result(args: argparse.Namespace, trained: Any, granularity: Any,
                      result: dict[str, Any]) -> None:
    """Save the candidate to --out and write --result, both or (as far as can be) neither: the result
    goes to its temporary first (a full disk there: nothing saved, an earlier checkpoint in --out not
    replaced), then the checkpoint is saved, then the result is put in place. Should that last step
    fail, the checkpoint this run saved into a new or empty --out is removed again (an earlier one it
    replaced is gone: the line then says the new one was kept). ModelError, one line."""
    from recmgd.models import checkpoint

    out = Path(args.out)
    made = missing_dirs(out)
    fresh = bool(made) or not any(out.iterdir())  # a new or empty folder: nothing in it to lose
    saved = False
    try:
        with whole_file(args.result) as tmp:
            with open(tmp, "w") as fh:
                json.dump(result, fh)
                fh.flush()
                os.fsync(fh.fileno())
            checkpoint.save(trained, out, granularity=granularity)
            saved = True
    except OSError as exc:
        what = "no checkpoint was saved"
        if saved:
            if fresh and _unsave(out, made):
                what = f"the checkpoint saved in {args.out} was removed"
            else:
                what = f"the new checkpoint in {args.out} was kept"
        raise ModelError(f"{args.result}: cannot write the result ({write_reason(exc)}); {what}") from None


def main(args: argparse.Namespace) -> int:
    from recmgd import policy as policy_mod

    if not policy_mod.is_learned(args.policy):
        print(f"recmg candidate: {args.policy!r} is not a learned policy", file=sys.stderr)
        return 2
    try:
        options = parse_options(args.options)
    except ValueError as exc:
        print(f"recmg candidate: --options: {exc}", file=sys.stderr)
        return 2
    _check_paths(args)
    if args.nice:
        os.nice(args.nice)
    import torch

    from recmgd.trace import open_trace

    torch.set_num_threads(max(1, args.threads))
    options["threads"] = max(1, args.threads)
    options.setdefault("epochs", args.epochs)
    # the current checkpoint, loaded (and so checked whole) before the candidate is trained; only read
    current_pol = (policy_mod.create(args.policy, **options, model_dir=args.current) if args.current
                   else None)
    steps = open_trace(args.window).steps(1)
    n = len(steps)
    score = max(1, int(args.score_part * n))
    warm = n - score
    if warm < 2:
        print(f"recmg candidate: {args.window}: {n} steps, too few to train and score", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    # the candidate: trained afresh on the warm steps (never loaded from --out), scored on the rest
    cand_pol = policy_mod.create(args.policy, **options)
    candidate = _score(cand_pol, steps, args.capacity, warm)
    train_s = time.perf_counter() - t0
    current = _score(current_pol, steps, args.capacity, warm) if current_pol is not None else None
    lru = _score(policy_mod.create("lru"), steps, args.capacity, warm)
    trained = getattr(cand_pol, "trained", None)
    if trained is None:
        raise ModelError(f"policy {args.policy!r} trained no models")
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
    _save_with_result(args, trained, getattr(cand_pol, "granularity", None), result)
    log.info("candidate %d, current %d, lru %d on-demand fetches on the last %d steps", candidate,
             result["current_on_demand"], lru, score)
    return 0
