"""Versioned checkpoint directories: ``config.json`` (format and feature versions, model shapes, training
config, granularity) + ``weights.pt`` (state dicts) + ``keys.npz`` (the keys the learned embeddings
belong to: rows, or pages for a checkpoint trained on page keys) + ``inference.npz`` (the caching and
prefetching models' numpy inference arrays, recmgd.models.numpy_nets: what :func:`load_inference` reads
without torch; checkpoints written before it have none and are read through torch).

``granularity`` (recmgd.models.granularity) says which: ``{"unit": "rows"}`` or ``{"unit": "pages",
"page_bytes": 4096, "row_bytes": 256}``. It was added without a format version bump: a checkpoint
without it is a row checkpoint, as every checkpoint before it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recmgd.errors import ModelError
from recmgd.fileout import whole_files, write_reason
from recmgd.models import hazard
from recmgd.models.features import FEATURE_NAMES, FEATURE_VERSION
from recmgd.models.granularity import CONFIG_FILE, Granularity, from_config
from recmgd.models.numpy_nets import NumpyCacheNet, NumpyPrefetchNet
from recmgd.models.train_config import TrainConfig, Trained

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = "recmg-models"
FORMAT_VERSION = 1
#: the numpy inference arrays (read without torch)
INFERENCE_FILE = "inference.npz"


def save(trained: Trained, out: str | os.PathLike[str], meta: dict[str, object] | None = None,
         granularity: Granularity | None = None) -> Path:
    """Write a checkpoint directory (created if missing; its four files are replaced all together, or,
    on an error, none of them: ModelError); ``granularity`` is what the models were trained on (default:
    rows)."""
    import torch

    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{d}: cannot make the checkpoint directory ({write_reason(exc)})") from None
    models: dict[str, dict[str, object]] = {}
    weights: dict[str, dict[str, torch.Tensor]] = {}
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
        "format": FORMAT, "format_version": FORMAT_VERSION,
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
    # all four files or none: a checkpoint cut short (a full disk) must not leave new weights beside an
    # old config, nor a half-written file; config.json is put in place last
    files = ["weights.pt", "keys.npz", INFERENCE_FILE, "config.json"]
    try:
        with whole_files([d / f for f in files]) as (w_pt, k_npz, i_npz, c_json):
            with open(w_pt, "wb") as fh:  # a file object: torch then reports the OSError behind a failure
                torch.save(weights, fh)
            with open(k_npz, "wb") as fh:
                np.savez(fh, **keys)
            with open(i_npz, "wb") as fh:
                np.savez(fh, **infer)
            c_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{d}: cannot write the checkpoint ({write_reason(exc)}); nothing in it was "
                         "replaced") from None
    log.info("saved checkpoint %s (%s, trained on %s)", d, ", ".join(models),
             (granularity or Granularity.rows()).describe())
    return d


def read_config(path: str | os.PathLike[str]) -> dict[str, object]:
    """The checked config of a checkpoint directory; ModelError (one line, naming the file and the
    field) on anything missing, malformed or mismatched."""
    d = Path(path)
    f = d / CONFIG_FILE
    try:
        st = os.stat(f)
    except OSError:
        raise ModelError(f"{d}: not a recmg checkpoint (no {CONFIG_FILE})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{f}: not a regular file")
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{f}: unreadable config: {exc}") from None
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


def _hazard(out: Trained, keys: dict[str, np.ndarray]) -> None:
    if "hazard" in keys:  # checkpoints before the age-aware table have none (level order)
        out.hazard, *edges = hazard.check_table(keys["hazard"], keys.get("hazard_p_edges"),
                                                keys.get("hazard_reuse_edges"))
        out.hazard_edges = (edges[0], edges[1])


def load_inference(path: str | os.PathLike[str]
                   ) -> tuple[Trained, NumpyCacheNet | None, NumpyPrefetchNet | None] | None:
    """The caching and prefetching models' numpy inference (and the checkpoint's config, keys and hazard
    table in a Trained without torch modules), read without torch; None for a checkpoint written before
    ``inference.npz`` (read it with :func:`load`)."""
    d = Path(path)
    cfg = read_config(d)
    if not (d / INFERENCE_FILE).is_file():
        return None
    try:
        keys = dict(np.load(d / "keys.npz"))
        arr = dict(np.load(d / INFERENCE_FILE))
    except Exception as exc:  # noqa: BLE001 - any corruption is a ModelError
        raise ModelError(f"{d}: cannot read the inference arrays: {exc}") from None
    models = cfg["models"]
    assert isinstance(models, dict)
    out = _header(d, cfg)
    cache = pref = None
    try:
        if "cache" in models:
            cache = NumpyCacheNet({k[6:]: v for k, v in arr.items() if k.startswith("cache.")})
            _hazard(out, keys)
        if "prefetch" in models:
            pref = NumpyPrefetchNet({k[9:]: v for k, v in arr.items() if k.startswith("prefetch.")})
            out.prefetch_keys = keys["prefetch"]
            if pref.emb.shape[0] != len(out.prefetch_keys) + 1:
                raise ValueError("prefetch embeddings and keys differ in number")
        if "voyager" in models:
            out.voyager_keys = keys["voyager"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{d}: {INFERENCE_FILE} does not match config.json: {exc}") from None
    return out, cache, pref


def load(path: str | os.PathLike[str]) -> Trained:
    """Load a checkpoint directory written by :func:`save` (its torch modules: imports torch)."""
    import torch

    from recmgd.models.nets import CacheNet, PrefetchNet
    from recmgd.models.voyager_net import VoyagerNet

    d = Path(path)
    cfg = read_config(d)
    try:
        weights = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
        keys = dict(np.load(d / "keys.npz"))
    except Exception as exc:  # noqa: BLE001 - any corruption is a ModelError
        raise ModelError(f"{d}: cannot read weights: {exc}") from None
    models = cfg["models"]
    assert isinstance(models, dict)
    out = _header(d, cfg)
    try:
        if "cache" in models:
            out.cache = CacheNet(hidden=int(models["cache"]["hidden"]))
            out.cache.load_state_dict(weights["cache"])
            out.cache.eval()
            _hazard(out, keys)
        if "prefetch" in models:
            m = models["prefetch"]
            out.prefetch = PrefetchNet(int(m["n_rows"]), dim=int(m["dim"]), queries=int(m["queries"]))
            out.prefetch.load_state_dict(weights["prefetch"])
            out.prefetch.eval()
            out.prefetch_keys = keys["prefetch"]
        if "voyager" in models:
            m = models["voyager"]
            out.voyager = VoyagerNet(int(m["n_rows"]), keys["voyager_out"], hidden=int(m["hidden"]))
            out.voyager.load_state_dict(weights["voyager"])
            out.voyager.eval()
            out.voyager_keys = keys["voyager"]
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"{d}: weights do not match config.json: {exc}") from None
    return out
