"""A checkpoint folder is untrusted input (users copy it between machines): whatever it holds, loading
it is one ModelError line naming the problem, never a crash (the C inference reading past an array), a
hang (a FIFO), a traceback, a huge allocation or a model of garbage; saving into it never writes
outside it, and a save that fails part way leaves the old checkpoint as it was (or, where even that
fails, one that every loader refuses)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fileout import failing_replace
from test_models import small_cfg, zipf_steps

from recmgd import policy as registry
from recmgd.errors import ModelError, PolicyError
from recmgd.models import checkpoint, granularity
from recmgd.models.fastinfer import FastCacheNet
from recmgd.models.numpy_nets import NumpyCacheNet
from recmgd.models.train import train_models

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained() -> checkpoint.Trained:
    steps = zipf_steps(n_steps=60).as_list()
    return train_models(steps, 40, small_cfg(), which=("cache", "prefetch", "voyager"))


@pytest.fixture(scope="module")
def retrained(trained: checkpoint.Trained) -> checkpoint.Trained:
    """Other models than ``trained``'s (every file of their checkpoint differs)."""
    import copy

    t = copy.deepcopy(trained)
    with torch.no_grad():
        for net in (t.cache, t.prefetch, t.voyager):
            for p in net.parameters():  # type: ignore[union-attr]
                p.add_(0.01)
    t.hazard = t.hazard * 0.5  # type: ignore[operator]
    return t


@pytest.fixture(scope="module")
def base(trained: checkpoint.Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint.save(trained, tmp_path_factory.mktemp("base") / "ck")


@pytest.fixture
def ck(base: Path, tmp_path: Path) -> Path:
    """A copy of the module's checkpoint (cache, prefetch and voyager models) the test may spoil."""
    return Path(shutil.copytree(base, tmp_path / "ck"))


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def npz_edit(d: Path, name: str, fn: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(d / name) as z:
        a = dict(z)
    fn(a)
    with open(d / name, "wb") as fh:
        np.savez(fh, **a)


def cfg_edit(d: Path, fn: Callable[[dict[str, object]], None]) -> None:
    c = json.loads((d / "config.json").read_text())
    fn(c)
    (d / "config.json").write_text(json.dumps(c))


def refused(fn: Callable[[], object], *needles: str) -> str:
    """The one line of the ModelError fn raises, checked for needles."""
    with pytest.raises(ModelError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def _set(name: str, value: np.ndarray) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda a: a.__setitem__(name, value)


def _scale(name: str, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def fn(a: dict[str, np.ndarray]) -> None:
        a[name] = a[name].copy()
        a[name][...] = value
    return fn


# ----------------------------------------------------------------- 1, 9: every array's shape, dtype, values
INFERENCE_CASES: list[tuple[str, Callable[[dict[str, np.ndarray]], None], str]] = [
    # cm_net_new copies hidden x hidden floats of w2, and b2, w3, b3 at their sizes
    ("w2_tiny", _set("cache.w2", np.zeros((1, 1), np.float32)), "cache.w2"),
    ("b2_short", _set("cache.b2", np.zeros(3, np.float32)), "cache.b2"),
    ("w3_tiny", _set("cache.w3", np.zeros((1, 2), np.float32)), "cache.w3"),
    ("b3_tiny", _set("cache.b3", np.zeros(1, np.float32)), "cache.b3"),
    ("tb_short", _set("cache.tb", np.zeros((3, 32), np.float32)), "cache.tb"),
    ("w1_complex", lambda a: a.__setitem__("cache.w1", a["cache.w1"].astype(np.complex64)), "dtype"),
    ("w1_float64", lambda a: a.__setitem__("cache.w1", a["cache.w1"].astype(np.float64)), "dtype"),
    ("w1_str", _set("cache.w1", np.array(["x"] * 4)), "cache.w1"),
    # learned.c copies f2w, tab, c1w, c2w, p1w at the sizes dim, queries and f1w's hidden say, and reads
    # emb at mid x dim
    ("pf_c1w_tiny", _set("prefetch.c1w", np.zeros((1, 1), np.float32)), "prefetch.c1w"),
    ("pf_f2w_tiny", _set("prefetch.f2w", np.zeros((1, 1), np.float32)), "prefetch.f2w"),
    ("pf_tab_short", _set("prefetch.tab", np.zeros((2, 16), np.float32)), "prefetch.tab"),
    ("pf_c2w_short", _set("prefetch.c2w", np.zeros((64, 8), np.float32)), "prefetch.c2w"),
    ("pf_p1w_short", _set("prefetch.p1w", np.zeros((2, 64), np.float32)), "prefetch.p1w"),
    ("pf_emb_narrow", lambda a: a.__setitem__("prefetch.emb", a["prefetch.emb"][:, :1].copy()),
     "prefetch.emb"),
    ("pf_emb_short", lambda a: a.__setitem__("prefetch.emb", a["prefetch.emb"][:5].copy()), "prefetch.emb"),
    ("pf_dim_big", _set("prefetch.dim", np.asarray(64)), "prefetch.dim"),
    ("pf_queries_big", _set("prefetch.queries", np.asarray(16)), "prefetch.queries"),
    ("pf_unknown", _set("prefetch.unknown", np.asarray(3)), "prefetch.unknown"),
    ("pf_dim_array", _set("prefetch.dim", np.array([1, 2])), "prefetch.dim"),
    ("pf_unknown_str", _set("prefetch.unknown", np.array("abc")), "prefetch.unknown"),
    ("pf_temp_missing", lambda a: a.pop("prefetch.temp"), "prefetch.temp"),
    ("pf_temp_nan", _set("prefetch.temp", np.asarray(np.nan)), "prefetch.temp"),
    # 9: non-finite weights
    ("cache_nan", _scale("cache.w1", np.nan), "NaN"),
    ("cache_inf", _scale("cache.b3", np.inf), "NaN or infinite"),
    ("pf_nan", _scale("prefetch.emb", np.nan), "NaN"),
]


@pytest.mark.parametrize("case,edit,needle", INFERENCE_CASES, ids=[c[0] for c in INFERENCE_CASES])
def test_inference_arrays_are_checked(ck: Path, case: str, edit: Callable[[dict[str, np.ndarray]], None],
                                      needle: str) -> None:
    npz_edit(ck, "inference.npz", edit)
    refused(lambda: checkpoint.load_inference(ck), needle)
    # the policies load it so: the same one line, before any C sees the arrays
    refused(lambda: registry.create("recmg", model_dir=str(ck), prefetch_budget=8), needle)


KEYS_CASES: list[tuple[str, Callable[[dict[str, np.ndarray]], None], str]] = [
    ("keys_2d", lambda a: a.__setitem__("prefetch", np.stack([a["prefetch"], a["prefetch"]], 1)), "shape"),
    ("keys_float", lambda a: a.__setitem__("prefetch", a["prefetch"].astype(np.float64) + 0.5), "int64"),
    ("keys_int32", lambda a: a.__setitem__("prefetch", a["prefetch"].astype(np.int32)), "int64"),
    ("keys_short", lambda a: a.__setitem__("prefetch", a["prefetch"][:-1].copy()), "shape"),
    ("keys_repeated", lambda a: a["prefetch"].__setitem__(1, a["prefetch"][0]), "not distinct"),
    ("keys_missing", lambda a: a.pop("prefetch"), "no prefetch keys"),
    ("hazard_nan", _scale("hazard", np.nan), "NaN"),
    ("hazard_classes", lambda a: a.__setitem__("hazard", a["hazard"][:3].copy()), "shape"),
    ("keys_object", lambda a: a.__setitem__("prefetch", np.array([1, "x"], dtype=object)), "keys.npz"),
]


@pytest.mark.parametrize("case,edit,needle", KEYS_CASES, ids=[c[0] for c in KEYS_CASES])
def test_keys_are_checked(ck: Path, case: str, edit: Callable[[dict[str, np.ndarray]], None],
                          needle: str) -> None:
    if case == "keys_object":  # np.savez pickles an object array: write it by hand
        with np.load(ck / "keys.npz") as z:
            a = dict(z)
        a["prefetch"] = np.array([1, "x"], dtype=object)
        with open(ck / "keys.npz", "wb") as fh:
            np.savez(fh, allow_pickle=True, **a)
    else:
        npz_edit(ck, "keys.npz", edit)
    refused(lambda: checkpoint.load_inference(ck), "keys.npz", needle)
    refused(lambda: checkpoint.load(ck), "keys.npz", needle)


def test_second_line_of_checks_before_c(ck: Path) -> None:
    """FastCacheNet and the C step's prefetcher take raw pointers: they check the shapes themselves too."""
    with np.load(ck / "inference.npz") as z:
        good = NumpyCacheNet({k[6:]: z[k] for k in z.files if k.startswith("cache.")})
    for name, bad in (("w2", np.ones((1, 1), np.float32)), ("b2", np.ones(1, np.float32)),
                      ("w3", np.ones((1, 2), np.float32)), ("b3", np.ones(1, np.float32))):
        net = NumpyCacheNet({n: getattr(good, n) for n in NumpyCacheNet.ARRAYS})
        setattr(net, name, bad)
        refused(lambda net=net: FastCacheNet(net), name)  # type: ignore[misc]
    with pytest.raises(ValueError, match="w2"):  # the numpy model built from arrays checks them
        NumpyCacheNet({**good.arrays(), "w2": np.ones((1, 1), np.float32)})
    pol = registry.create("recmg", model_dir=str(ck), prefetch_budget=8)
    pol.reset(20)
    assert pol._native is not None  # type: ignore[attr-defined]
    pf = pol._np_pref  # type: ignore[attr-defined]
    for name, bad in (("emb", pf.emb[:, :1].copy()), ("c1w", np.zeros((1, 1), np.float32)),
                      ("f2w", np.zeros((1, 1), np.float32)), ("tab", pf.tab[:1].copy())):
        kept = getattr(pf, name)
        setattr(pf, name, bad)
        refused(lambda: pol.reset(20), "prefetching model", name)
        setattr(pf, name, kept)
    pol._model_keys = pol._model_keys.astype(np.float64)  # type: ignore[attr-defined]
    refused(lambda: pol.reset(20), "keys")


def test_a_crafted_checkpoint_is_one_line_in_recmg_sim(ck: Path, tmp_path: Path) -> None:
    """The auditor's crash (SIGSEGV): emb one float wide, every scalar and config.json saying 16."""
    npz_edit(ck, "inference.npz", lambda a: a.__setitem__("prefetch.emb", a["prefetch.emb"][:, :1].copy()))
    trace = tmp_path / "t.trace"
    steps = zipf_steps(n_steps=40).as_list()
    trace.write_text("".join(f"{int(k) >> 40} {int(k) & ((1 << 40) - 1)} {i}\n"
                             for i, s in enumerate(steps) for k in s))
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", "sim", str(trace), "--batch", "1",
                        "--policies", "recmg", "--fractions", "0.1", "--model", str(ck),
                        "--prefetch-budget", "8"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if not x.startswith("INFO ")]
    assert len(lines) == 1 and "prefetch.emb" in lines[0], r.stderr[-2000:]


# ------------------------------------------------------------------------------ 2: the Voyager checkpoint
VOYAGER_CASES: list[tuple[str, Callable[[dict[str, np.ndarray]], None], str]] = [
    ("out_big", lambda k: k.__setitem__("voyager_out", k["voyager_out"] + 10**6), "voyager_out"),
    ("out_neg", lambda k: k.__setitem__("voyager_out", -k["voyager_out"] - 1), "voyager_out"),
    ("out_float", lambda k: k.__setitem__("voyager_out", k["voyager_out"].astype(np.float64)), "voyager_out"),
    ("out_2d", lambda k: k.__setitem__("voyager_out", k["voyager_out"][:, None].copy()), "voyager_out"),
    ("out_missing", lambda k: k.pop("voyager_out"), "voyager_out"),
    ("keys_short", lambda k: k.__setitem__("voyager", k["voyager"][:3].copy()), "'voyager'"),
]


@pytest.mark.parametrize("case,edit,needle", VOYAGER_CASES, ids=[c[0] for c in VOYAGER_CASES])
def test_voyager_keys_are_checked(ck: Path, case: str, edit: Callable[[dict[str, np.ndarray]], None],
                                  needle: str) -> None:
    npz_edit(ck, "keys.npz", edit)
    refused(lambda: checkpoint.load(ck), "keys.npz", needle)
    refused(lambda: registry.create("voyager", model_dir=str(ck), prefetch_budget=8), needle)


def test_voyager_checkpoint_still_runs(ck: Path) -> None:
    pol = registry.create("voyager", model_dir=str(ck), prefetch_budget=8)
    pol.reset(20)
    from recmgd.policy import StepView

    for i, keys in enumerate(zipf_steps(n_steps=20).as_list()):
        pol.observe(StepView(i, keys, pol.resident_keys(keys)))  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------- 3: config.json
def test_deeply_nested_config_is_one_line(ck: Path) -> None:
    (ck / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(lambda: checkpoint.read_config(ck), "config.json", "nested too deeply")
    refused(lambda: granularity.of_checkpoint(ck), "config.json", "nested too deeply")
    refused(lambda: registry.create("recmg", model_dir=str(ck)), "nested too deeply")


def test_config_over_a_megabyte_is_refused(ck: Path) -> None:
    text = (ck / "config.json").read_text()
    (ck / "config.json").write_text(text + " " * (1 << 20))  # valid JSON, but more than 1 MB
    refused(lambda: checkpoint.read_config(ck), "config.json", "bytes")
    refused(lambda: granularity.of_checkpoint(ck), "config.json", "bytes")


# ------------------------------------------------------------------------------ 4: one line, never advice
class _Evil:
    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.mark}",))


def test_a_pickle_in_weights_is_one_line_without_advice(ck: Path, tmp_path: Path) -> None:
    mark = tmp_path / "code-ran"
    (ck / "inference.npz").unlink()  # the torch path reads weights.pt
    torch.save({"cache": _Evil(mark)}, ck / "weights.pt")
    msg = refused(lambda: checkpoint.load(ck), "weights.pt", "not a tensor file")
    assert "weights_only" not in msg and "trust" not in msg, msg
    assert not mark.exists()


def test_a_corrupt_weights_file_is_one_line(ck: Path) -> None:
    (ck / "inference.npz").unlink()
    (ck / "weights.pt").write_bytes((ck / "weights.pt").read_bytes()[:300])
    refused(lambda: checkpoint.load(ck), "weights.pt")
    torch.save([1, 2, 3], ck / "weights.pt")
    refused(lambda: checkpoint.load(ck), "weights.pt", "list")


def test_state_dict_mismatch_is_one_line(ck: Path, trained: checkpoint.Trained) -> None:
    (ck / "inference.npz").unlink()
    w = torch.load(ck / "weights.pt", weights_only=True)
    w["cache"]["lin2.weight"] = torch.zeros(1, 1)
    torch.save(w, ck / "weights.pt")
    refused(lambda: checkpoint.load(ck), "cache.lin2.weight", "shape")
    w["cache"]["lin2.weight"] = trained.cache.state_dict()["lin2.weight"].clone() * float("nan")
    torch.save(w, ck / "weights.pt")
    refused(lambda: checkpoint.load(ck), "NaN")


# ------------------------------------------------------------------------------------- 5: FIFOs
def _load_in_child(d: Path, fn: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys\nfrom recmgd.models import checkpoint\nfrom recmgd.errors import ModelError\n"
            f"try:\n    checkpoint.{fn}(sys.argv[1])\nexcept ModelError as e:\n    print('ModelError:', e)\n")
    return subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("member,fn", [("keys.npz", "load_inference"), ("inference.npz", "load_inference"),
                                       ("weights.pt", "load"), ("keys.npz", "load")])
def test_a_fifo_member_does_not_hang(ck: Path, member: str, fn: str) -> None:
    if fn == "load":
        (ck / "inference.npz").unlink()
    (ck / member).unlink()
    os.mkfifo(ck / member)
    r = _load_in_child(ck, fn)  # (a hang is a TimeoutExpired here)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ModelError:") and member in r.stdout and "FIFO" in r.stdout, r.stdout


def test_a_directory_member_is_refused(ck: Path) -> None:
    (ck / "inference.npz").unlink()
    (ck / "inference.npz").mkdir()  # (no longer taken for a checkpoint written before inference.npz)
    refused(lambda: checkpoint.load_inference(ck), "inference.npz", "directory")


def test_a_sparse_member_is_refused(ck: Path) -> None:
    """A member whose bytes are mostly holes (a few kB on disk claiming gigabytes of arrays: the daemon
    read them all in its loop, 1.2 GB for a 10 kB file) is refused before anything is read."""
    keys = ck / "keys.npz"
    data = keys.read_bytes()
    with open(keys, "r+b") as f:  # the same archive, then 64 MiB of holes (zip readers find the end)
        f.truncate(64 << 20)
        f.seek(0)
        f.write(data)
    if keys.stat().st_blocks * 512 >= (64 << 20) // 2:
        pytest.skip("this file system has no holes")
    refused(lambda: checkpoint.load_inference(ck), "keys.npz", "a sparse file")


# ------------------------------------------------------------------------------ 6: symbolic links
def test_save_replaces_a_symlinked_member_and_never_writes_outside(ck: Path, tmp_path: Path,
                                                                   trained: checkpoint.Trained) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    (ck / "keys.npz").unlink()
    os.symlink("../victim.txt", ck / "keys.npz")
    checkpoint.save(trained, ck)
    assert victim.read_text() == "precious data\n"
    assert not (ck / "keys.npz").is_symlink() and (ck / "keys.npz").is_file()
    checkpoint.load_inference(ck)  # whole again
    assert sorted(os.listdir(ck)) == ["config.json", "inference.npz", "keys.npz", "weights.pt"]


def test_save_replaces_a_fifo_member(ck: Path, base: Path) -> None:
    (ck / "weights.pt").unlink()
    os.mkfifo(ck / "weights.pt")  # (written through, its open would wait for a reader forever)
    code = ("import sys\nfrom recmgd.models import checkpoint\n"
            "checkpoint.save(checkpoint.load(sys.argv[2]), sys.argv[1])\n")
    r = subprocess.run([sys.executable, "-c", code, str(ck), str(base)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (ck / "weights.pt").is_file()
    checkpoint.load(ck)


@pytest.mark.parametrize("member", ["keys.npz", "inference.npz", "config.json"])
def test_load_refuses_a_symlinked_member(ck: Path, tmp_path: Path, member: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(ck / member, outside / member)
    os.symlink(outside / member, ck / member)
    refused(lambda: checkpoint.load_inference(ck), member, "symbolic link")


def test_a_symlinked_checkpoint_folder_loads(ck: Path, tmp_path: Path) -> None:
    """(The daemon's `current` is a link to a checkpoint folder: only the files in it must be files.)"""
    os.symlink(ck, tmp_path / "current")
    assert checkpoint.load_inference(tmp_path / "current") is not None


# ------------------------------------------------------------- 7: all or nothing, and generation ids
@pytest.mark.parametrize("exc", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()],
                         ids=["eio", "interrupt"])
@pytest.mark.parametrize("fail_at", [2, 3, 4])
def test_a_save_failing_between_renames_leaves_the_old_checkpoint(
        ck: Path, retrained: checkpoint.Trained, monkeypatch: pytest.MonkeyPatch, exc: BaseException,
        fail_at: int) -> None:
    before = digest(ck)
    failing_replace(monkeypatch, fail_at, exc)
    if isinstance(exc, OSError):
        refused(lambda: checkpoint.save(retrained, ck), "Input/output error", "nothing in it was replaced")
    else:
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(retrained, ck)
    monkeypatch.undo()
    assert digest(ck) == before  # every old file back, no temporary left
    checkpoint.load_inference(ck)
    checkpoint.load(ck)


def test_a_save_that_cannot_roll_back_is_refused_by_loaders(ck: Path, retrained: checkpoint.Trained,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    failing_replace(monkeypatch, 3, OSError(errno.EIO, "Input/output error"), fail_after=True)
    msg = refused(lambda: checkpoint.save(retrained, ck), "Input/output error")
    monkeypatch.undo()
    assert "nothing in it was replaced" not in msg and "saved again" in msg, msg
    assert not [p for p in os.listdir(ck) if p.startswith(".partial-")]
    refused(lambda: checkpoint.load_inference(ck), "different saves")
    refused(lambda: checkpoint.load(ck), "different saves")
    refused(lambda: registry.create("recmg", model_dir=str(ck)), "different saves")


@pytest.mark.parametrize("member,fn", [("keys.npz", "load_inference"), ("inference.npz", "load_inference"),
                                       ("weights.pt", "load"), ("keys.npz", "load"),
                                       ("config.json", "load_inference")])
def test_files_of_two_saves_are_refused(ck: Path, trained: checkpoint.Trained, tmp_path: Path, member: str,
                                        fn: str) -> None:
    other = checkpoint.save(trained, tmp_path / "other")  # the same models, another save: files that
    # would load together, but are not known to
    shutil.copyfile(other / member, ck / member)
    refused(lambda: getattr(checkpoint, fn)(ck), "different saves")


def test_a_checkpoint_without_generation_ids_still_loads(ck: Path) -> None:
    """Checkpoints saved before generation ids hold none anywhere: they load as before (and one file of a
    new save beside them does not)."""
    new_keys = (ck / "keys.npz").read_bytes()
    cfg_edit(ck, lambda c: c.pop("generation"))
    for name in ("keys.npz", "inference.npz"):
        npz_edit(ck, name, lambda a: a.pop("__generation__"))
    w = torch.load(ck / "weights.pt", weights_only=True)
    w.pop("__generation__")
    torch.save(w, ck / "weights.pt")
    assert checkpoint.load_inference(ck) is not None
    checkpoint.load(ck)
    (ck / "keys.npz").write_bytes(new_keys)
    refused(lambda: checkpoint.load_inference(ck), "different saves")


def test_generation_id_is_checked_in_config(ck: Path) -> None:
    cfg_edit(ck, lambda c: c.update(generation=["x"]))
    refused(lambda: checkpoint.read_config(ck), "generation")


# ------------------------------------------------------------------- 8: small files, huge allocations
def test_an_unused_npz_member_is_never_inflated(ck: Path) -> None:
    n = 256 << 20  # 256 MiB of zeros, deflated to ~256 KB
    with zipfile.ZipFile(ck / "keys.npz", "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
            chunk = bytes(1 << 24)
            for _ in range(n // len(chunk)):
                f.write(chunk)
    assert (ck / "keys.npz").stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        checkpoint.load_inference(ck)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_a_needed_member_that_would_inflate_hugely_is_refused(ck: Path) -> None:
    n = 1 << 24  # config.json and the keys say 16M rows: 128 MiB of deflated zeros
    cfg_edit(ck, lambda c: c["models"]["prefetch"].update(n_rows=n))
    with np.load(ck / "keys.npz") as z:
        a = dict(z)
    a["prefetch"] = np.zeros(n, np.int64)
    with open(ck / "keys.npz", "wb") as fh:
        np.savez_compressed(fh, **a)
    tracemalloc.start()
    try:
        refused(lambda: checkpoint.load_inference(ck), "keys.npz", "unpack")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def test_n_rows_is_checked_before_the_net_is_built(ck: Path) -> None:
    """config.json claims 2^24 rows (a one-line edit): refused before a PrefetchNet of that size (1 GiB)
    is allocated, in a child whose peak memory is measured."""
    (ck / "inference.npz").unlink()
    cfg_edit(ck, lambda c: c["models"]["prefetch"].update(n_rows=1 << 24))
    code = ("import resource, sys\nimport torch\nfrom recmgd.models import checkpoint, nets\n"
            "from recmgd.errors import ModelError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    checkpoint.load(sys.argv[1])\nexcept ModelError as e:\n    print('ModelError:', e)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(ck)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip().splitlines()
    assert out[0].startswith("ModelError:") and "keys.npz" in out[0], r.stdout
    assert int(out[-1]) < 200, f"peak grew by {out[-1]} MiB"


# ------------------------------------------------------------------------------ 9: saving non-finite
def test_non_finite_weights_are_not_saved(trained: checkpoint.Trained, ck: Path) -> None:
    import copy

    bad = copy.deepcopy(trained)
    with torch.no_grad():
        bad.cache.lin1.weight[0, 0] = float("nan")  # type: ignore[union-attr]
    before = digest(ck)
    refused(lambda: checkpoint.save(bad, ck), "NaN", "not saved")
    assert digest(ck) == before
    fresh = ck.parent / "fresh"
    refused(lambda: checkpoint.save(bad, fresh), "NaN")
    assert not fresh.exists() or not os.listdir(fresh)


# --------------------------------------------------------------------- 10: the daemon's create_policy
def test_create_policy_turns_an_os_error_into_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from recmgd.daemon import step

    def boom(name: str, **options: object) -> object:
        raise PermissionError(errno.EACCES, "Permission denied", "/models/ck/keys.npz")

    monkeypatch.setattr(step.policy_mod, "create", boom)
    with pytest.raises(PolicyError) as ei:
        step.create_policy("recmg", {"model_dir": "/models/ck"}, pool="p0")
    msg = str(ei.value)
    assert "\n" not in msg and "pool p0" in msg and "keys.npz" in msg and "Permission denied" in msg, msg


def test_torch_floor_is_past_cve_2025_32434() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text, "torch.load(weights_only=True) runs code before torch 2.6"
