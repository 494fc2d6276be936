"""Cost of the learned models in the daemon's shape (a step's batch of deduplicated rows at a time).

    .venv/bin/python tools/bench_models.py [--trace TRACE] [--train-lookups 300000] [--train-threads 2]
        [--model-dir DIR] [--skip-train]

Measures, on one core (torch and numpy inference single-threaded):
- caching model: features + forward pass (+ the history update) over each step's rows, in lookups/s
  (target >= 1M/s/core), in C (recmgd.models.fastinfer, what the policies run) and with the numpy
  reference; and the whole recmg-cache observe() (features, model, residency, eviction) in lookups/s;
- prefetch decision per step (candidates, features, representations, scores) at batch 16 (< 1 ms);
- training both models on the first --train-lookups deduplicated lookups with --train-threads threads
  (target < 5 min on 2 cores), and the Voyager baseline alone.

``--ablation``: the prefetching model's Chamfer set loss against plain cross-entropy. ``--ceiling``: the
caching policy against itself given the scored half's labels (what limits it: features or data).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inference on one core: numpy's BLAS too
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recmgd import policy as registry  # noqa: E402
from recmgd.keys import capacity_for  # noqa: E402
from recmgd.models.fastinfer import FastCacheNet  # noqa: E402
from recmgd.models.features import RowHistory  # noqa: E402
from recmgd.models.numpy_nets import NumpyCacheNet  # noqa: E402
from recmgd.models.train import TrainConfig, train_models  # noqa: E402
from recmgd.policy import StepView  # noqa: E402
from recmgd.trace import open_trace  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "amazon_video.trace"


def _pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--train-lookups", type=int, default=300_000)
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--model-dir", default=None,
                    help="the recmg policy's checkpoint: loaded when there, else trained and saved there")
    ap.add_argument("--ceiling", action="store_true",
                    help="how far the caching model's features go: recmg-cache as trained, then with its "
                         "hazard table and then its MLP fit on the labels of the whole trace (the scored "
                         "half's future included)")
    ap.add_argument("--ablation", action="store_true",
                    help="only the set-loss ablation: Chamfer vs cross-entropy, same model and seed")
    args = ap.parse_args()
    if args.ablation:
        return ablation(args)
    if args.ceiling:
        return ceiling(args)

    torch.set_num_threads(1)
    steps = open_trace(args.trace).steps(args.batch)
    lst = steps.as_list()
    half = len(lst) // 2
    uniq = len(np.unique(steps.keys))
    cap = capacity_for(args.fraction, uniq)
    print(f"trace {os.path.basename(args.trace)}: {len(lst)} steps of {args.batch} samples, "
          f"{steps.n_lookups:,} deduplicated lookups, {uniq:,} rows; capacity {cap} ({args.fraction})")
    print(f"cpu: {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.2f}")

    # one trained recmg policy (first half), then time the second half step by step
    t0 = time.perf_counter()
    model_dir = args.model_dir
    pol = registry.create("recmg", prefetch_budget=args.budget, epochs=args.epochs, threads=1,
                          model_dir=model_dir)
    loaded = pol.trained is not None
    pol.fit(lst[:half], cap)
    print(f"{'loaded' if loaded else 'fit'} recmg (cache + prefetch, 1 thread) on {half} steps: "
          f"{time.perf_counter() - t0:.1f} s")
    net = pol._np_cache
    assert isinstance(net, NumpyCacheNet)
    fast = FastCacheNet(net)
    print(f"C inference: AVX2/FMA forward pass {'on' if fast.simd else 'off (portable)'}")

    # caching model alone over each step's rows, with the history kept current (the whole trace):
    # reference numpy path vs the C path (recmgd.models.fastinfer), each on its own history
    t_ref = t_ref_upd = 0.0
    n_look = 0
    hist = RowHistory()
    for b, keys in enumerate(lst):
        ids = hist.ids(keys)
        t1 = time.perf_counter()
        net(hist.features(ids, b), hist.tables(ids))
        t2 = time.perf_counter()
        hist.update(ids, b)
        t3 = time.perf_counter()
        t_ref += t2 - t1
        t_ref_upd += t3 - t1
        n_look += len(ids)
    t_fast = t_fast_split = 0.0
    fh = RowHistory(native=True)  # one C call a step (features, MLP, then the update), as observe()
    for b, keys in enumerate(lst):
        ids = fh.ids(keys)
        t1 = time.perf_counter()
        fast(fh, ids, b, update=True)
        t_fast += time.perf_counter() - t1
    fh2 = RowHistory(native=True)  # scores, then the update, two C calls (observe() on its re-scoring steps)
    for b, keys in enumerate(lst):
        ids = fh2.ids(keys)
        t1 = time.perf_counter()
        fast(fh2, ids, b)
        fh2.update(ids, b)
        t_fast_split += time.perf_counter() - t1
    per = n_look / len(lst)
    print(f"caching model, one step's rows (batch {args.batch}, {per:.1f} rows a step), lookups/s/core:")
    print(f"  C (features + MLP + history update, one call, as in observe()): {n_look / t_fast:,.0f} "
          f"({t_fast / len(lst) * 1e6:.1f} us a step)")
    print(f"  C (scores, then the update: two calls): {n_look / t_fast_split:,.0f} "
          f"({t_fast_split / len(lst) * 1e6:.1f} us a step)")
    print(f"  numpy reference (features + MLP): {n_look / t_ref:,.0f} "
          f"({t_ref / len(lst) * 1e6:.1f} us a step); with the update: {n_look / t_ref_upd:,.0f} "
          f"({t_ref_upd / len(lst) * 1e6:.1f} us a step)")
    print(f"  C over numpy, both with the update: {t_ref_upd / t_fast:.1f}x")
    # larger batches, as when the daemon drains many steps from the ring at once (no update)
    ids = np.arange(len(hist))
    for n in (16, 256, 4096):
        sel = ids[:n]
        reps = max(3, 200_000 // n)
        t1 = time.perf_counter()
        for _ in range(reps):
            net(hist.features(sel, len(lst)), hist.tables(sel))
        dt = time.perf_counter() - t1
        t1 = time.perf_counter()
        for _ in range(reps):
            fast(fh, sel, len(lst))
        dtf = time.perf_counter() - t1
        print(f"caching model at batch {n}: numpy {n * reps / dt:,.0f}, "
              f"C {n * reps / dtf:,.0f} lookups/s/core")

    # whole policies, step by step (driver-side residency in a set, as the daemon's pool would be)
    # the whole step in C (the default), the Python step around the C caching model, the numpy reference
    runs = (("recmg-cache", True, True, "C step"), ("recmg-cache", True, False, "Python step"),
            ("recmg-cache", False, False, "numpy reference"), ("recmg", True, True, "C step"),
            ("recmg", True, False, "Python step"))
    for name, native, step_c, label in runs:
        p = registry.create(name, prefetch_budget=args.budget, threads=1, native_infer=native,
                            native_step=step_c)
        p._install(pol.trained)  # same trained models
        p.reset(cap)
        res: set[int] = set()
        times: list[float] = []
        pf_times: list[float] = []
        for b, keys in enumerate(lst):
            kl = keys.tolist()
            hit = np.fromiter((k in res for k in kl), bool, len(kl))
            t1 = time.perf_counter()
            d = p.observe(StepView(b, keys, hit))
            times.append(time.perf_counter() - t1)
            res.difference_update(d.evict.tolist())
            res.update(d.admit.tolist())
            res.update(d.prefetch.tolist())
            if name == "recmg" and not step_c and b >= half and b % 8 == 0:
                ids = p.hist.index.lookup(keys)
                t2 = time.perf_counter()
                p._prefetch_recmg(b, ids)
                pf_times.append(time.perf_counter() - t2)
        tt = np.asarray(times[half:])
        lk = sum(len(s) for s in lst[half:])
        what = f"{name} ({label})"
        print(f"{what} observe(): {lk / tt.sum():,.0f} lookups/s/core, "
              f"per step mean {tt.mean() * 1e3:.3f} ms, p99 {np.percentile(tt, 99) * 1e3:.3f} ms")
        if pf_times:
            print(f"prefetch decision per step (batch {args.batch}, budget {args.budget}): mean "
                  f"{np.mean(pf_times) * 1e3:.3f} ms, p50 {_pct(pf_times, 50) * 1e3:.3f} ms, "
                  f"p99 {_pct(pf_times, 99) * 1e3:.3f} ms")

    if args.skip_train:
        return 0
    # training cost on the first N deduplicated lookups
    ends = np.cumsum([len(s) for s in lst])
    n_steps = int(np.searchsorted(ends, args.train_lookups)) + 1
    sub = lst[:n_steps]
    torch.set_num_threads(args.train_threads)
    cfg = TrainConfig(epochs=args.epochs)
    t0 = time.perf_counter()
    train_models(sub, cap, cfg, which=("cache", "prefetch"))
    t_rm = time.perf_counter() - t0
    print(f"training cache + prefetch on {int(ends[n_steps - 1]):,} lookups ({n_steps} steps), "
          f"{args.train_threads} threads, {args.epochs} epochs: {t_rm:.1f} s")
    t0 = time.perf_counter()
    train_models(sub, cap, cfg, which=("voyager",))
    print(f"training voyager on the same, {cfg.voyager_epochs} epochs: {time.perf_counter() - t0:.1f} s")
    return 0


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    n1 = int(label.sum())
    n0 = len(label) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return float((r[label > 0].sum() - n1 * (n1 - 1) / 2) / (n1 * n0))


def ablation(args: argparse.Namespace) -> int:
    """Chamfer set loss vs plain cross-entropy for the prefetching model: held-out ranking quality of
    the stream candidates (labels: OPT misses within W steps) and the simulator's on-demand fetches of
    `recmg` with each, the caching model shared."""
    from recmgd.models.labels import opt_labels
    from recmgd.models.train import _masked_mean, prefetch_dataset, train_prefetch
    from recmgd.sim.driver import drive

    torch.set_num_threads(1)
    steps = open_trace(args.trace).steps(args.batch)
    lst = steps.as_list()
    half = len(lst) // 2
    cap = capacity_for(args.fraction, len(np.unique(steps.keys)))
    base = train_models(lst[:half], cap, TrainConfig(epochs=args.epochs), which=("cache",))
    _, miss_all = opt_labels(lst, cap)
    held = prefetch_dataset(lst, miss_all, TrainConfig(epochs=args.epochs))
    test = slice(len(held.label) // 2, None)
    print(f"ablation on {os.path.basename(args.trace)}, capacity {cap}, budget {args.budget}")
    print("| loss | held-out AUC | positives among candidates | top-1% precision | on_demand | pf_issued | "
          "pf_useful | seconds to train |")
    print("|---|---|---|---|---|---|---|---|")
    for loss in ("chamfer", "ce"):
        cfg = TrainConfig(epochs=args.epochs, prefetch_loss=loss)
        _, miss = opt_labels(lst[:half], cap)
        t0 = time.perf_counter()
        net = train_prefetch(prefetch_dataset(lst[:half], miss, cfg), cfg)
        dt = time.perf_counter() - t0
        # held-out: the model ids of the full-trace dataset differ from training's; map by key
        index = {k: i for i, k in enumerate(base_keys(lst[:half]).tolist())}
        T = {k: torch.from_numpy(np.ascontiguousarray(v[test]))
             for k, v in held.__dict__.items() if k != "keys"}
        remap = np.array([index.get(k, net.n_rows) for k in held.keys.tolist()] + [net.n_rows])
        for f in ("cand_ids", "now_ids", "past_ids"):
            T[f] = torch.from_numpy(remap[T[f].numpy()])
        with torch.no_grad():
            q = net.query(_masked_mean(net.rep(T["now_ids"], T["now_x"], T["now_t"]), T["now_m"]),
                          _masked_mean(net.rep(T["past_ids"], T["past_x"], T["past_t"]), T["past_m"]))
            sc = net.score(q, net.rep(T["cand_ids"], T["cand_x"], T["cand_t"]), T["cand_x"], T["cand_c"])
        cm = T["is_cand"].numpy() > 0
        lab, sc = T["label"].numpy()[cm], sc.numpy()[cm]
        top = sc >= np.quantile(sc, 0.99) if len(sc) else sc > 0
        tr = dataclass_replace(base, prefetch=net, prefetch_keys=base_keys(lst[:half]), config=cfg)
        pol = registry.create("recmg", prefetch_budget=args.budget, threads=1)
        pol._install(tr)
        c = drive(pol, steps, cap, half, path="python")
        prec = lab[top].mean() if top.any() else 0.0
        print(f"| {loss} | {_auc(sc, lab):.3f} | {lab.mean():.5f} | {prec:.4f} | "
              f"{c.on_demand:,} | {c.prefetch_issued:,} | {c.prefetch_useful:,} | {dt:.1f} |")
    return 0


def ceiling(args: argparse.Namespace) -> int:
    """recmg-cache as the simulator runs it (trained on the first half), against the same policy given
    what it could not know: its hazard table, then its MLP and table, fit on the whole trace's labels.
    Shows whether the features, not the training data, limit the caching model."""
    from recmgd.models.labels import opt_labels
    from recmgd.models.train import cache_dataset, fit_hazard, train_cache
    from recmgd.sim.driver import drive

    torch.set_num_threads(1)
    steps = open_trace(args.trace).steps(args.batch)
    lst = steps.as_list()
    half = len(lst) // 2
    cap = capacity_for(args.fraction, len(np.unique(steps.keys)))
    cfg = TrainConfig(epochs=args.epochs)
    print(f"ceiling on {os.path.basename(args.trace)}, fraction {args.fraction}, capacity {cap}")
    print("| run | on_demand | / lru | / opt | bound |")
    print("|---|---|---|---|---|")
    ref = {n: drive(registry.create(n), steps, cap, half) for n in ("lru", "opt")}

    def row(name: str, pol: object) -> None:
        c = drive(pol, steps, cap, half)  # type: ignore[arg-type]
        print(f"| {name} | {c.on_demand:,} | {c.on_demand / ref['lru'].on_demand:.3f} | "
              f"{c.on_demand / ref['opt'].on_demand:.3f} | {c.bound:,} |")

    for n in ("lru", "opt"):
        print(f"| {n} | {ref[n].on_demand:,} | | | {ref[n].bound:,} |")
    trained = train_models(lst[:half], cap, cfg, which=("cache",))
    pol = registry.create("recmg-cache", threads=1)
    pol._install(trained)
    row("recmg-cache (MLP and table fit on the first half)", pol)
    keep, _ = opt_labels(lst, cap)
    x, t, y = cache_dataset(lst, keep)
    stats = {"mean_step_len": trained.stats["mean_step_len"]}
    for name, net in (("table fit on the whole trace", trained.cache),
                      ("MLP and table fit on the whole trace", train_cache(x, t, y, cfg))):
        assert net is not None
        with torch.no_grad():
            scored = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        table, edges = fit_hazard(lst, scored, cap, stats, cfg)
        tr = dataclass_replace(trained, cache=net, hazard=table, hazard_edges=edges)
        pol = registry.create("recmg-cache", threads=1)
        pol._install(tr)
        row(name, pol)
    return 0


def base_keys(steps: list[np.ndarray]) -> np.ndarray:
    """Model ids of a training run are the rows in order of first sight."""
    from recmgd.models.features import KeyIndex

    idx = KeyIndex()
    for s in steps:
        idx.get_or_add(s)
    return idx.all_keys()


def dataclass_replace(obj: object, **kw: object) -> object:
    import dataclasses

    return dataclasses.replace(obj, **kw)  # type: ignore[type-var]


if __name__ == "__main__":
    raise SystemExit(main())
