"""Versioned checkpoint directories: ``config.json`` (format and feature versions, model shapes, training
config, granularity) + ``weights.pt`` (state dicts) + ``keys.npz`` (the keys the learned embeddings
belong to: rows, or pages for a checkpoint trained on page keys) + ``inference.npz`` (the caching and
prefetching models' numpy inference arrays, recmgd.models.numpy_nets: what :func:`load_inference` reads
without torch; checkpoints written before it have none and are read through torch).

``granularity`` (recmgd.models.granularity) says which: ``{"unit": "rows"}`` or ``{"unit": "pages",
"page_bytes": 4096, "row_bytes": 256}``. It was added without a format version bump: a checkpoint
without it is a row checkpoint, as every checkpoint before it was.

A checkpoint folder is untrusted input (users copy it between machines): its files are read as
recmgd.models.ckfiles reads them (regular files only, no symbolic link, a FIFO never opened to wait,
config.json at most 1 MB, of an npz only the arrays needed, each array's header checked before its
data), every array is checked against config.json and the others (ndim, shape, dtype, finite values:
the C inference reads them at the sizes the shapes say), and anything wrong is one ModelError line.
Each save has a generation id, in config.json (``generation``), in each npz (``__generation__``) and in
weights.pt's dict: a loader that finds files of two saves (a save cut short, files mixed by hand)
refuses them. Checkpoints written before it hold none anywhere, and load as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recmgd.errors import ModelError
from recmgd.fileout import PartlyReplaced, make_dirs, remove_dirs, whole_files, write_reason
from recmgd.models import ckfiles, hazard
from recmgd.models.ckfiles import GENERATION, Npz
from recmgd.models.features import FEATURE_NAMES, FEATURE_VERSION
from recmgd.models.granularity import CONFIG_FILE, Granularity, checkpoint_config, from_config
from recmgd.models.numpy_nets import NumpyCacheNet, NumpyPrefetchNet
from recmgd.models.train_config import TrainConfig, Trained

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = "recmg-models"
FORMAT_VERSION = 1
#: the numpy inference arrays (read without torch)
INFERENCE_FILE = "inference.npz"
#: the keys the models' embeddings belong to, and the hazard table
KEYS_FILE = "keys.npz"
#: the torch modules' state dicts
WEIGHTS_FILE = "weights.pt"
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)


def save(trained: Trained, out: str | os.PathLike[str], meta: dict[str, object] | None = None,
         granularity: Granularity | None = None) -> Path:
    """Write a checkpoint directory (created if missing; its four files are replaced all together, or,
    on an error, none of them: ModelError); ``granularity`` is what the models were trained on (default:
    rows)."""
    import torch

    d = Path(out)
    gen = secrets.token_hex(8)  # this save's generation id, in every file (see the module's docstring)
    models: dict[str, dict[str, object]] = {}
    weights: dict[str, Any] = {GENERATION: gen}
    keys: dict[str, np.ndarray] = {}
    if trained.cache is not None:
        models["cache"] = {"hidden": trained.cache.hidden}
        weights["cache"] = trained.cache.state_dict()
        if trained.hazard is not None and trained.hazard_edges is not None:
            models["cache"]["hazard_classes"] = int(trained.hazard.shape[0])
            keys["hazard"] = trained.hazard
            keys["hazard_p_edges"], keys["hazard_reuse_edges"] = trained.hazard_edges
    if trained.prefetch is not None and trained.prefetch_keys is not None:
        p = trained.prefetch
        models["prefetch"] = {"n_rows": p.n_rows, "dim": p.dim, "queries": p.queries,
                              "loss": trained.config.prefetch_loss, "window": trained.config.window}
        weights["prefetch"] = p.state_dict()
        keys["prefetch"] = trained.prefetch_keys
    if trained.voyager is not None and trained.voyager_keys is not None:
        v = trained.voyager
        models["voyager"] = {"n_rows": v.n_rows, "hidden": v.hidden}
        weights["voyager"] = v.state_dict()
        keys["voyager"] = trained.voyager_keys
        keys["voyager_out"] = v.out_ids
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "generation": gen,
        "feature_version": FEATURE_VERSION, "features": list(FEATURE_NAMES),
        "capacity": trained.capacity, "models": models,
        "granularity": (granularity or Granularity.rows()).as_dict(),
        "train": dataclasses.asdict(trained.config), "stats": trained.stats, "meta": meta or {},
    }
    infer: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if trained.cache is not None:
            infer.update({f"cache.{k}": v for k, v in NumpyCacheNet(trained.cache).arrays().items()})
        if trained.prefetch is not None:
            infer.update({f"prefetch.{k}": v for k, v in NumpyPrefetchNet(trained.prefetch).arrays().items()})
    _check_finite(d, weights, keys, infer)
    keys[GENERATION] = infer[GENERATION] = np.asarray(gen)
    made = _make_dirs(d)
    # all four files or none: a checkpoint cut short (a full disk) must not leave new weights beside an
    # old config, nor a half-written file; config.json is put in place last. The folder's files are the
    # checkpoint's own: a symbolic link there is replaced, never written through to a file outside it.
    # On any failure the folders this save made are removed again (one that was there is left as it was)
    files = [WEIGHTS_FILE, KEYS_FILE, INFERENCE_FILE, CONFIG_FILE]
    saved = False
    try:
        with whole_files([d / f for f in files], replace_entries=True) as (w_pt, k_npz, i_npz, c_json):
            with open(w_pt, "wb") as fh:  # a file object: torch then reports the OSError behind a failure
                torch.save(weights, fh)
            with open(k_npz, "wb") as fh:
                np.savez(fh, **keys)
            with open(i_npz, "wb") as fh:
                np.savez(fh, **infer)
            c_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        saved = True
    except PartlyReplaced as exc:
        raise ModelError(f"{d}: cannot write the checkpoint ({write_reason(exc)}); some of its files are new "
                         "and could not be put back, so it is refused until it is saved again") from None
    except (OSError, RuntimeError) as exc:
        _unmake(made)
        made = []
        what = "nothing was kept" if not d.exists() else "nothing in it was replaced"
        raise ModelError(f"{d}: cannot write the checkpoint ({write_reason(exc)}); {what}") from None
    finally:
        if not saved:  # (Ctrl-C, SIGTERM: recmgd.cli.signals raises them here too)
            _unmake(made)
    log.info("saved checkpoint %s (%s, trained on %s)", d, ", ".join(models),
             (granularity or Granularity.rows()).describe())
    return d


def _make_dirs(d: Path) -> list[Path]:
    """Make checkpoint folder ``d`` and its missing parents; the folders this call made, innermost first
    (for :func:`_unmake`). ModelError (one line) when one cannot be made, the ones made removed."""
    try:
        return make_dirs(d)
    except OSError as exc:
        raise ModelError(f"{d}: cannot make the checkpoint directory ({write_reason(exc)})") from None


def _unmake(made: list[Path]) -> None:
    """Remove the folders a failed save made (innermost first), each only if empty."""
    if not remove_dirs(made):
        log.debug("%s: not all removed", made)


def _check_finite(d: Path, weights: dict[str, Any], keys: dict[str, np.ndarray],
                  infer: dict[str, np.ndarray]) -> None:
    """ModelError before anything is written when a model to save holds NaN or infinite values (training
    diverged): a loader refuses such a checkpoint."""
    import torch

    named: list[tuple[str, Any]] = [(f"{m}.{k}", v) for m, sd in weights.items() if isinstance(sd, dict)
                                    for k, v in sd.items()]
    for name, v in named:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelError(f"{d}: not saved: {name} holds NaN or infinite values (training diverged)")
    for name, a in [*keys.items(), *infer.items()]:
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ModelError(f"{d}: not saved: {name} holds NaN or infinite values (training diverged)")


def read_config(path: str | os.PathLike[str]) -> dict[str, object]:
    """The checked config of a checkpoint directory; ModelError (one line, naming the file and the
    field) on anything missing, malformed or mismatched."""
    d = Path(path)
    f = d / CONFIG_FILE
    cfg = ckfiles.read_json(f, missing=f"{d}: not a recmg checkpoint (no {CONFIG_FILE})")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ModelError(f"{f}: not a recmg model checkpoint (format {got!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{f}: checkpoint format version {cfg.get('format_version')} but this recmg reads "
                         f"version {FORMAT_VERSION}; retrain with `recmg train`")
    if cfg.get("feature_version") != FEATURE_VERSION or cfg.get("features") != list(FEATURE_NAMES):
        raise ModelError(f"{f}: checkpoint feature version {cfg.get('feature_version')} but this recmg "
                         f"computes feature version {FEATURE_VERSION}; retrain with `recmg train`")
    from_config(cfg, str(f))  # a malformed granularity is an error here too
    _check_fields(cfg, str(f))
    return cfg


def check_save_dir(path: str | os.PathLike[str]) -> None:
    """ModelError (one line) unless a checkpoint may be saved into ``path``: a missing or empty directory,
    or one holding a recmg checkpoint (of any format version: :func:`save` replaces its files whole).
    Never a directory of other files, nor one whose config.json is another program's (not JSON, or JSON
    with no ``"format": "recmg-models"``): the save would overwrite it. Nothing is written."""
    f = checkpoint_config(path)  # (None: missing or empty; ModelError: files and no config.json)
    if f is None:
        return
    keep = ("it is not overwritten: a checkpoint is saved only into a new or empty directory or over a "
            "checkpoint")
    try:
        cfg = ckfiles.read_json(f)
    except ModelError as exc:
        raise ModelError(f"{exc}; not a recmg checkpoint's, so {keep}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ModelError(f"{f}: not a recmg model checkpoint (format {got!r}); {keep}")


#: the integer fields of each model in config.json's "models" (each >= 1); other fields are not read
MODEL_FIELDS = {"cache": ("hidden",), "prefetch": ("n_rows", "dim", "queries"),
                "voyager": ("n_rows", "hidden")}
#: TrainConfig's integer fields that may exceed the C step's int32 parameters (the training seed)
_WIDE_INTS = {"seed"}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad(where: str, field: str, value: object, want: str) -> ModelError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:55] + "[...]"
    return ModelError(f"{where}: {field} {shown}: {want}")


def _check_fields(cfg: dict[str, object], where: str) -> None:
    """The fields read from config.json (capacity, models, train, stats) of the types they are read as:
    else a ModelError naming ``where`` and the field."""
    cap = cfg.get("capacity", 0)
    if not _is_int(cap) or not 0 <= cap < 1 << 62:  # type: ignore[operator]
        raise _bad(where, "capacity", cap, "not an integer >= 0")
    gen = cfg.get("generation")
    if gen is not None and not ckfiles.valid_generation(gen):
        raise _bad(where, "generation", gen, "not a save's generation id")
    if "models" not in cfg:
        raise ModelError(f"{where}: no models field")
    models = cfg["models"]
    if not isinstance(models, dict):
        raise _bad(where, "models", models, "not an object of models")
    for name, fields in MODEL_FIELDS.items():
        if name not in models:
            continue
        m = models[name]
        if not isinstance(m, dict):
            raise _bad(where, f"models.{name}", m, "not an object")
        for k in fields:
            v = m.get(k)
            if not _is_int(v) or not 1 <= v < 1 << 31:  # type: ignore[operator]
                raise _bad(where, f"models.{name}.{k}", v, "not an integer >= 1")
        classes = m.get("hazard_classes", 1)
        if not _is_int(classes) or not 1 <= classes < 1 << 31:  # type: ignore[operator]
            raise _bad(where, f"models.{name}.hazard_classes", classes, "not an integer >= 1")
    train = cfg.get("train") or {}
    if not isinstance(train, dict):
        raise _bad(where, "train", train, "not an object")
    for fld in dataclasses.fields(TrainConfig):
        if fld.name not in train:
            continue
        v, default = train[fld.name], getattr(TrainConfig(), fld.name)
        if _is_int(default):
            hi = (1 << 63) if fld.name in _WIDE_INTS else (1 << 31)
            if not _is_int(v) or not 0 <= v < hi:
                raise _bad(where, f"train.{fld.name}", v, "not an integer >= 0")
        elif not isinstance(v, type(default)):
            raise _bad(where, f"train.{fld.name}", v, f"not a {type(default).__name__}")
    st = cfg.get("stats") or {}
    if not isinstance(st, dict):
        raise _bad(where, "stats", st, "not an object")
    for k, v in st.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(where, f"stats.{k}", v, "not a finite number")
    step_len = st.get("mean_step_len", 1.0)
    if step_len <= 0:
        raise _bad(where, "stats.mean_step_len", step_len, "not a number > 0")


def granularity(path: str | os.PathLike[str]) -> Granularity:
    """What the checkpoint in ``path`` was trained on (rows for checkpoints that do not say)."""
    return from_config(read_config(path), str(Path(path) / "config.json"))


def _header(d: Path, cfg: dict[str, object]) -> Trained:
    """The Trained of a checkpoint's config, without its models."""
    tc = TrainConfig(**{k: v for k, v in dict(cfg.get("train") or {}).items()
                        if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    return Trained(capacity=int(cfg.get("capacity", 0)), config=tc,
                   stats={k: float(v) for k, v in dict(cfg.get("stats") or {}).items()})


def _same_save(d: Path, cfg: dict[str, object], name: str, got: object) -> None:
    """ModelError unless file ``name``'s generation id is config.json's (both None: a checkpoint saved
    before generation ids)."""
    want = cfg.get("generation")
    if got != want:
        raise ModelError(f"{d}: {name} and {CONFIG_FILE} are of different saves (a save cut short, or files "
                         "mixed from two checkpoints); save or copy the whole checkpoint again")


def _hazard(out: Trained, keys: Npz, m: dict[str, Any]) -> None:
    if "hazard" not in keys:  # checkpoints before the age-aware table have none (level order)
        return
    classes = m.get("hazard_classes")
    table = keys.array("hazard", (classes, hazard.AGE_BUCKETS), "f", finite=True)
    edges = [keys.array(f"hazard_{e}_edges", (None,), "f", finite=True) if f"hazard_{e}_edges" in keys
             else None for e in ("p", "reuse")]
    try:
        out.hazard, *e = hazard.check_table(table, edges[0], edges[1])
    except ValueError as exc:
        raise ModelError(f"{keys.where}: {exc}") from None
    out.hazard_edges = (e[0], e[1])


def _model_keys(keys: Npz, name: str, n_rows: int) -> np.ndarray:
    """Model ``name``'s keys: n_rows distinct int64 keys (its embedding ``i`` is key ``i``'s)."""
    if name not in keys:
        raise ModelError(f"{keys.where}: no {name} keys, which config.json's {name} model needs")
    k = keys.array(name, (n_rows,), "i", exact=_I64)
    if len(np.unique(k)) != len(k):
        raise ModelError(f"{keys.where}: the {name} keys are not distinct")
    return k


def _voyager_keys(keys: Npz, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The Voyager model's keys (n_rows) and output classes (model ids in [0, n_rows))."""
    k = _model_keys(keys, "voyager", n_rows)
    if "voyager_out" not in keys:
        raise ModelError(f"{keys.where}: no voyager_out, which config.json's voyager model needs")
    out_ids = keys.array("voyager_out", (None,), "i", exact=_I64)
    if len(out_ids) and (out_ids.min() < 0 or out_ids.max() >= n_rows):
        raise ModelError(f"{keys.where}: voyager_out holds ids outside [0, {n_rows}), the voyager "
                         "model's rows")
    return k, out_ids


def _cache_arrays(arr: Npz, hidden: int) -> NumpyCacheNet:
    want = NumpyCacheNet.shapes(hidden)
    return NumpyCacheNet({n: arr.array(f"cache.{n}", want[n], "f", exact=_F32, finite=True)
                          for n in NumpyCacheNet.ARRAYS})


def _prefetch_arrays(arr: Npz, m: dict[str, Any]) -> NumpyPrefetchNet:
    n_rows, dim, queries = int(m["n_rows"]), int(m["dim"]), int(m["queries"])
    shape, _ = arr.header("prefetch.f1w")  # the hidden units: f1w's columns (not in config.json)
    if len(shape) != 2 or shape[1] < 1:
        raise ModelError(f"{arr.where}: array 'prefetch.f1w' has shape {shape}, expected (features, hidden)")
    a: dict[str, Any] = {}
    for name, expected in (("unknown", n_rows), ("queries", queries), ("dim", dim)):
        v = arr.scalar(f"prefetch.{name}", "iu")
        if v != expected:
            raise ModelError(f"{arr.where}: prefetch.{name} is {v}, but config.json says {expected}")
        a[name] = np.asarray(v)
    for name in ("p2b", "temp"):
        a[name] = np.asarray(arr.scalar(f"prefetch.{name}", "f"))
    want = NumpyPrefetchNet.shapes(n_rows, dim, queries, shape[1])
    a.update({n: arr.array(f"prefetch.{n}", want[n], "f", exact=_F32, finite=True)
              for n in NumpyPrefetchNet.ARRAYS})
    return NumpyPrefetchNet(a)


def load_inference(path: str | os.PathLike[str]
                   ) -> tuple[Trained, NumpyCacheNet | None, NumpyPrefetchNet | None] | None:
    """The caching and prefetching models' numpy inference (and the checkpoint's config, keys and hazard
    table in a Trained without torch modules), read without torch; None for a checkpoint written before
    ``inference.npz`` (read it with :func:`load`). Every array is checked (see the module's docstring):
    ModelError, one line, for anything that does not fit."""
    d = Path(path)
    cfg = read_config(d)
    fh = ckfiles.open_member(d, INFERENCE_FILE, missing_ok=True)
    if fh is None:
        return None
    fh.close()
    models = cfg["models"]
    assert isinstance(models, dict)
    out = _header(d, cfg)
    cache = pref = None
    with Npz(d, KEYS_FILE) as keys, Npz(d, INFERENCE_FILE) as arr:
        _same_save(d, cfg, KEYS_FILE, keys.generation())
        _same_save(d, cfg, INFERENCE_FILE, arr.generation())
        try:
            if "cache" in models:
                cache = _cache_arrays(arr, int(models["cache"]["hidden"]))
                _hazard(out, keys, models["cache"])
            if "prefetch" in models:
                out.prefetch_keys = _model_keys(keys, "prefetch", int(models["prefetch"]["n_rows"]))
                pref = _prefetch_arrays(arr, models["prefetch"])
            if "voyager" in models:
                out.voyager_keys, _ = _voyager_keys(keys, int(models["voyager"]["n_rows"]))
        except ValueError as exc:  # (the numpy models' own checks)
            raise ModelError(f"{d}: {INFERENCE_FILE} does not match config.json: {exc}") from None
    return out, cache, pref


def _read_weights(d: Path) -> dict[str, Any]:
    """weights.pt's dict, loaded with torch's weights-only loader (no code in the file runs); ModelError,
    one line (never torch's advice to load it unsafely), for a file that is not one."""
    import torch

    f = d / WEIGHTS_FILE
    fh = ckfiles.open_member(d, WEIGHTS_FILE)
    assert fh is not None
    with fh:
        ckfiles.check_archive(fh, str(f), "a torch file")
        try:
            weights = torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelError(f"{f}: not a tensor file: torch's weights-only loader refuses it "
                             f"({ckfiles.one_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a corrupt file
            raise ModelError(f"{f}: not a torch file ({ckfiles.one_line(exc)})") from None
    if not isinstance(weights, dict):
        raise ModelError(f"{f}: holds a {type(weights).__name__}, not the models' state dicts")
    return weights


def _state_dict(weights: dict[str, Any], name: str, shapes: torch.nn.Module, where: str
                ) -> dict[str, torch.Tensor]:
    """Model ``name``'s state dict in ``weights`` when it has the very names, shapes and dtypes of
    ``shapes`` (a module on the meta device: nothing allocated) and finite values; ModelError otherwise.
    Checked before the model of config.json's sizes is built, so a config that claims a huge model
    allocates nothing."""
    import torch

    sd = weights.get(name)
    if not isinstance(sd, dict):
        raise ModelError(f"{where}: no state dict of the {name} model")
    want = shapes.state_dict()
    if set(sd) != set(want):
        odd = sorted(set(sd) ^ set(want), key=str)[:3]
        raise ModelError(f"{where}: the {name} model's parameters are not its network's "
                         f"(missing or unexpected: {', '.join(map(str, odd))})")
    for k, w in want.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.dtype != w.dtype:
            raise ModelError(f"{where}: {name}.{k} is not a dense {w.dtype} tensor")
        if tuple(v.shape) != tuple(w.shape):
            raise ModelError(f"{where}: {name}.{k} has shape {tuple(v.shape)}, but config.json's model has "
                             f"{tuple(w.shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelError(f"{where}: {name}.{k} holds NaN or infinite values")
    return sd


def load(path: str | os.PathLike[str]) -> Trained:
    """Load a checkpoint directory written by :func:`save` (its torch modules: imports torch). Every
    file is checked (see the module's docstring): ModelError, one line, for anything that does not fit."""
    import torch

    from recmgd.models.nets import CacheNet, PrefetchNet
    from recmgd.models.voyager_net import VoyagerNet

    d = Path(path)
    cfg = read_config(d)
    weights = _read_weights(d)
    _same_save(d, cfg, WEIGHTS_FILE, weights.get(GENERATION))
    where = str(d / WEIGHTS_FILE)
    models = cfg["models"]
    assert isinstance(models, dict)
    out = _header(d, cfg)
    with Npz(d, KEYS_FILE) as keys:
        _same_save(d, cfg, KEYS_FILE, keys.generation())
        try:
            if "cache" in models:
                hidden = int(models["cache"]["hidden"])
                with torch.device("meta"):
                    shapes: torch.nn.Module = CacheNet(hidden=hidden)
                sd = _state_dict(weights, "cache", shapes, where)
                out.cache = CacheNet(hidden=hidden)
                out.cache.load_state_dict(sd)
                out.cache.eval()
                _hazard(out, keys, models["cache"])
            if "prefetch" in models:
                m = models["prefetch"]
                n_rows, dim, queries = int(m["n_rows"]), int(m["dim"]), int(m["queries"])
                pkeys = _model_keys(keys, "prefetch", n_rows)  # before a net of n_rows is built
                sd = weights.get("prefetch")
                w1 = sd.get("feat.0.weight") if isinstance(sd, dict) else None
                hidden = int(w1.shape[0]) if isinstance(w1, torch.Tensor) and w1.ndim == 2 else 64
                with torch.device("meta"):
                    shapes = PrefetchNet(n_rows, dim=dim, queries=queries, hidden=hidden)
                sd = _state_dict(weights, "prefetch", shapes, where)
                out.prefetch = PrefetchNet(n_rows, dim=dim, queries=queries, hidden=hidden)
                out.prefetch.load_state_dict(sd)
                out.prefetch.eval()
                out.prefetch_keys = pkeys
            if "voyager" in models:
                m = models["voyager"]
                n_rows, hidden = int(m["n_rows"]), int(m["hidden"])
                vkeys, out_ids = _voyager_keys(keys, n_rows)
                with torch.device("meta"):
                    shapes = VoyagerNet(n_rows, out_ids, hidden=hidden)
                sd = _state_dict(weights, "voyager", shapes, where)
                out.voyager = VoyagerNet(n_rows, out_ids, hidden=hidden)
                out.voyager.load_state_dict(sd)
                out.voyager.eval()
                out.voyager_keys = vkeys
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ModelError(f"{d}: weights do not match config.json: {ckfiles.one_line(exc)}") from None
    return out
