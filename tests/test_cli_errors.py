"""Bad input through the real `recmg` CLI, in a subprocess: a wrong number in a flag is an argparse
usage error (exit 2, one error line naming the flag); any other bad input (a path that cannot serve, a
corrupt checkpoint, a trace too short) is one line through the CLI's RecmgError handling (exit 1); and
nothing is written where it must not be: never into a directory named as an input (``--current``), never
a checkpoint or a result left behind by a refused run. A write error on stdout and Ctrl-C are one line
too."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recmgd.keys import MAX_TABLES, make_keys
from recmgd.models.checkpoint import FORMAT_VERSION
from recmgd.trace import Trace
from recmgd.trace.binary import BinaryWriter, write_binary

REPO = Path(__file__).resolve().parent.parent
LOG_PREFIXES = ("INFO ", "DEBUG ")


def recmg(*args: str, cwd: Path, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "recmgd.cli.recmg", *args], text=True, timeout=timeout,
                          cwd=cwd, env=env, **kw)  # type: ignore[call-overload]


def one_line(r: subprocess.CompletedProcess[str], *needles: str, rc: int = 1) -> str:
    """The one error line of a refused run (log lines aside), checked for ``needles``."""
    assert r.returncode == rc, f"rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith(LOG_PREFIXES)]
    assert len(lines) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def usage_error(r: subprocess.CompletedProcess[str], prog: str, flag: str | None = None) -> str:
    """An argparse error: exit 2 and one line, ``PROG: error: ... (see PROG --help)`` (naming ``flag``),
    with no usage block before it (recmgctl's errors are one line too)."""
    assert r.returncode == 2, f"rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith(f" (see {prog} --help)"), lines[0]
    if flag is not None:
        assert lines[0].startswith(f"{prog}: error: argument {flag}"), lines[0]
    assert r.stdout == "", r.stdout
    return lines[0]


def tree_hash(path: Path) -> dict[str, str]:
    """Every file under ``path`` by its relative name, with a hash of its bytes (for "nothing changed")."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def write_text_trace(path: Path, n: int, per_sample: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = (rng.zipf(1.3, n) % 400).astype(np.int64)
    tables = rng.integers(0, 3, n)
    lines = [f"{t} {r} {i // per_sample}" for i, (t, r) in enumerate(zip(tables, rows, strict=True))]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small.trace (1200 lookups, 600 samples), win.bin (its binary form: the candidate's window),
    one.trace (one sample) and ck (a checkpoint trained on small.trace, one epoch)."""
    d = tmp_path_factory.mktemp("cli")
    write_text_trace(d / "small.trace", 1200)
    rng = np.random.default_rng(0)
    n = 1200
    keys = make_keys(rng.integers(0, 3, n), (rng.zipf(1.3, n) % 400).astype(np.int64))
    write_binary(Trace(keys, np.arange(0, n + 1, 2, dtype=np.int64)), d / "win.bin")
    (d / "one.trace").write_text("0 1 0\n")
    r = recmg("train", "small.trace", "--out", "ck", "--epochs", "1", "-q", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def work(data: Path, tmp_path: Path) -> Path:
    """A folder of this test with the module's inputs in it (ck copied: the test may change it)."""
    for name in ("small.trace", "win.bin", "one.trace"):
        os.symlink(data / name, tmp_path / name)
    shutil.copytree(data / "ck", tmp_path / "ck")
    return tmp_path


# ------------------------------------------------------------------------------ wrong numbers in flags
BAD_FLAGS = [
    (["trace", "stats", "small.trace", "--batch", "0"], "--batch"),
    (["trace", "stats", "small.trace", "--batch", "-1"], "--batch"),
    (["trace", "stats", "small.trace", "--table-size", "inf"], "--table-size"),
    (["trace", "synth", "out.bin", "--lookups", "inf"], "--lookups"),
    (["trace", "synth", "out.bin", "--tables", "0"], "--tables"),
    (["trace", "synth", "out.bin", "--pooling", "0"], "--pooling"),
    (["trace", "synth", "out.bin", "--block-rows", "0"], "--block-rows"),
    (["trace", "synth", "out.bin", "--gap", "0"], "--gap"),
    (["trace", "synth", "out.bin", "--gap", "nan"], "--gap"),
    (["trace", "synth", "out.bin", "--sigma", "-1"], "--sigma"),
    (["trace", "synth", "out.bin", "--sigma", "inf"], "--sigma"),
    (["trace", "synth", "out.bin", "--seed", "-1"], "--seed"),
    (["trace", "synth", "out.bin", "--block-rows", "1e12", "--lookups", "10"], "--block-rows"),
    (["sim", "small.trace", "--seed", "-1"], "--seed"),
    (["sim", "small.trace", "--seed", str(1 << 70)], "--seed"),
    (["sim", "small.trace", "--policies", "bingo", "--region", "0"], "--region"),
    (["sim", "small.trace", "--policies", "bingo", "--region", "65"], "--region"),
    (["sim", "small.trace", "--policies", "bingo", "--region", "-1"], "--region"),
    (["sim", "small.trace", "--policies", "stms", "--prefetch-budget", "99999999999"], "--prefetch-budget"),
    (["sim", "small.trace", "--row-bytes", "-1"], "--row-bytes"),
    (["sim", "small.trace", "--batch", "0"], "--batch"),
    (["train", "small.trace", "--out", "out", "-b", "0"], "--batch-size"),
    (["train", "small.trace", "--out", "out", "--batch", "0"], "--batch"),
    (["train", "small.trace", "--out", "out", "--batch", "-1"], "--batch"),
    (["train", "small.trace", "--out", "out", "--seed", "-1"], "--seed"),
    (["train", "small.trace", "--out", "out", "--epochs", "0"], "--epochs"),
    (["train", "small.trace", "--out", "out", "--epochs", "-1"], "--epochs"),
    (["train", "small.trace", "--out", "out", "--page-bytes", "4096", "--row-bytes", "0"], "--row-bytes"),
    (["candidate", "win.bin", "--policy", "recmg", "--capacity", "0", "--out", "out", "--result", "r.json"],
     "--capacity"),
    (["candidate", "win.bin", "--policy", "recmg", "--capacity", "-5", "--out", "out", "--result", "r.json"],
     "--capacity"),
    (["candidate", "win.bin", "--policy", "recmg", "--capacity", "99999999999999", "--out", "out",
      "--result", "r.json"], "--capacity"),
    (["demo", "--seconds", "nan"], "--seconds"),
    (["demo", "--seconds", "inf"], "--seconds"),
    (["demo", "--dim", "0"], "--dim"),
    (["demo", "--max-batch", "0"], "--max-batch"),
    (["demo", "--max-wait-ms", "-1"], "--max-wait-ms"),
]


def _flag_id(argv: list[str], flag: str) -> str:
    i = argv.index(flag if flag in argv else "-b")
    return f"{argv[0]} {argv[i]} {argv[i + 1]}"


@pytest.mark.parametrize(("argv", "flag"), BAD_FLAGS, ids=[_flag_id(a, f) for a, f in BAD_FLAGS])
def test_wrong_number_is_a_usage_error(work: Path, argv: list[str], flag: str) -> None:
    before = sorted(p.name for p in work.iterdir())
    r = recmg(*argv, "--workdir", str(work / "wd"), cwd=work) if argv[0] == "demo" else recmg(*argv, cwd=work)
    usage_error(r, "recmg " + " ".join(argv[:2] if argv[0] == "trace" else argv[:1]), flag)
    assert sorted(p.name for p in work.iterdir()) == before  # no output, no checkpoint, no work dir


@pytest.mark.parametrize(("argv", "prog", "needle"), [
    (["train"], "recmg train", "the following arguments are required: TRACE, --out"),
    (["train", "small.trace", "--out", "out", "--loss", "nope"], "recmg train", "argument --loss"),
    (["sim", "small.trace", "--no-such-flag"], "recmg", "unrecognized arguments: --no-such-flag"),
    (["trace", "convert"], "recmg trace convert", "required: input, output"),
    (["nosuch"], "recmg", "argument COMMAND: invalid choice: 'nosuch'"),
])
def test_usage_errors_are_one_line(work: Path, argv: list[str], prog: str, needle: str) -> None:
    """Every argparse refusal of every verb is one line (it printed the whole usage block first)."""
    before = sorted(p.name for p in work.iterdir())
    line = usage_error(recmg(*argv, cwd=work), prog)
    assert needle in line, line
    assert sorted(p.name for p in work.iterdir()) == before


# ------------------------------------------------------------------------------ candidate
def candidate(work: Path, *extra: str, out: str = "out", result: str = "r.json",
              capacity: str = "40") -> subprocess.CompletedProcess[str]:
    return recmg("candidate", "win.bin", "--policy", "recmg", "--capacity", capacity, "--out", out,
                 "--result", result, "--epochs", "1", "--nice", "0", *extra, cwd=work)


@pytest.mark.parametrize("kind", ["missing", "no-config"])
def test_candidate_current_not_a_checkpoint_is_refused_untouched(work: Path, kind: str) -> None:
    """--current that is no checkpoint: one line, before any training; nothing written into it (it
    used to be trained and saved into), no --out, no --result."""
    cur = work / "current"
    if kind == "no-config":
        cur.mkdir()
        (cur / "notes.txt").write_text("mine\n")
    before = tree_hash(cur)
    r = candidate(work, "--current", "current")
    one_line(r, "--current current: not a recmg checkpoint (no config.json)")
    assert tree_hash(cur) == before
    assert cur.exists() == (kind == "no-config")
    assert not (work / "out").exists() and not (work / "r.json").exists()


@pytest.mark.parametrize(("out", "result"), [("ck", "r.json"), ("ck/sub", "r.json"), ("out", "ck/r.json")])
def test_candidate_output_in_current_is_refused(work: Path, out: str, result: str) -> None:
    """--out or --result in --current: refused before training, --current unchanged."""
    before = tree_hash(work / "ck")
    r = candidate(work, "--current", "ck", out=out, result=result)
    one_line(r, "is in --current ck")
    assert tree_hash(work / "ck") == before and sorted(os.listdir(work / "ck")) == sorted(before)
    assert not (work / "out").exists() and not (work / "r.json").exists()


def test_candidate_result_path_checked_before_training(work: Path) -> None:
    r = candidate(work, result="nodir/r.json")
    one_line(r, "--result", "nodir")
    assert not (work / "out").exists()
    assert "trained" not in r.stderr  # refused before training


@pytest.mark.parametrize("out", ["afile", "/proc/nonexistent/x", "notckpt"])
def test_candidate_bad_out_is_refused(work: Path, out: str) -> None:
    (work / "afile").write_text("keep\n")
    (work / "notckpt").mkdir()
    (work / "notckpt" / "data.txt").write_text("keep\n")
    before = tree_hash(work)
    r = candidate(work, out=out)
    one_line(r, "--out")
    assert tree_hash(work) == before
    assert not (work / "r.json").exists()


def test_candidate_out_checkpoint_is_trained_fresh(work: Path) -> None:
    """--out holding a checkpoint: a new candidate is trained and replaces it (it used to be scored as
    the candidate, untrained)."""
    old = json.loads((work / "ck" / "config.json").read_text())
    assert old["capacity"] != 40
    r = candidate(work, out="ck")
    assert r.returncode == 0, r.stderr[-3000:]
    new = json.loads((work / "ck" / "config.json").read_text())
    assert new["capacity"] == 40
    res = json.loads((work / "r.json").read_text())
    assert res["candidate_on_demand"] > 0


@pytest.mark.parametrize(("options", "needle"), [
    ('{"prefetch_budget": -1}', "prefetch_budget"),
    ('{"prefetch_budget": "abc"}', "prefetch_budget"),
    ('{"nosuch": 1}', "nosuch"),
])
def test_candidate_bad_options(work: Path, options: str, needle: str) -> None:
    r = candidate(work, "--options", options)
    line = one_line(r, "--options", needle, rc=2)
    if needle == "nosuch":
        assert "prefetch_budget" in line  # the known keys are named
    assert not (work / "out").exists() and not (work / "r.json").exists()


# ------------------------------------------------------------------------------ checkpoints
def test_sim_model_dir_not_a_checkpoint_is_refused_untouched(work: Path) -> None:
    d = work / "mine"
    d.mkdir()
    (d / "weights.pt").write_text("precious\n")
    before = tree_hash(d)
    r = recmg("sim", "small.trace", "--policies", "recmg", "--fractions", "0.1", "--model", "mine",
              "--epochs", "1", cwd=work)
    one_line(r, "mine", "config.json")
    assert tree_hash(d) == before


def test_sim_model_config_fifo_does_not_hang(work: Path) -> None:
    d = work / "fifo"
    d.mkdir()
    os.mkfifo(d / "config.json")
    r = recmg("sim", "small.trace", "--policies", "recmg", "--fractions", "0.1", "--model", "fifo",
              "--epochs", "1", cwd=work, timeout=60)
    one_line(r, "config.json", "not a regular file")


CORRUPT: list[tuple[str, Callable[[dict[str, object]], None]]] = [
    ("capacity", lambda c: c.update(capacity="abc")),
    ("capacity", lambda c: c.update(capacity=-5)),
    ("keep_rate", lambda c: c.update(stats={"keep_rate": "x"})),
    ("stats", lambda c: c.update(stats=[1, 2])),
    ("train", lambda c: c.update(train=5)),
    ("epochs", lambda c: c["train"].update(epochs="x")),  # type: ignore[attr-defined]
    ("models", lambda c: c.pop("models")),
    ("models", lambda c: c.update(models=[1])),
    ("hidden", lambda c: c["models"]["cache"].update(hidden="x")),  # type: ignore[index]
]


@pytest.mark.parametrize(("field", "change"), CORRUPT, ids=[f"{f}{i}" for i, (f, _) in enumerate(CORRUPT)])
@pytest.mark.parametrize("verb", ["sim", "candidate"])
def test_corrupt_config_is_one_line(work: Path, verb: str, field: str,
                                    change: Callable[[dict[str, object]], None]) -> None:
    cfg = json.loads((work / "ck" / "config.json").read_text())
    change(cfg)
    (work / "ck" / "config.json").write_text(json.dumps(cfg))
    before = tree_hash(work / "ck")
    if verb == "sim":
        r = recmg("sim", "small.trace", "--policies", "recmg", "--fractions", "0.1", "--model", "ck",
                  cwd=work)
    else:
        r = candidate(work, "--current", "ck")
        assert not (work / "out").exists()
    one_line(r, "config.json", field)
    assert tree_hash(work / "ck") == before


# ------------------------------------------------------------------------------ --out: whose config.json
def save_into(work: Path, verb: str, out: str) -> subprocess.CompletedProcess[str]:
    """`recmg train` or `recmg candidate` writing a checkpoint to ``out``; `recmg sim --model` training a
    learned policy and saving its checkpoint there."""
    if verb == "train":
        return recmg("train", "small.trace", "--out", out, "--epochs", "1", "-q", cwd=work)
    if verb == "candidate":
        return candidate(work, out=out)
    return recmg("sim", "small.trace", "--policies", "recmg", "--fractions", "0.1", "--model", out,
                 "--epochs", "1", cwd=work)


@pytest.mark.parametrize("config", ['{"name": "my-web-app"}\n', "hello = 1\n", "[1, 2]\n", ""],
                         ids=["json-object", "not-json", "json-list", "empty"])
@pytest.mark.parametrize("verb", ["train", "candidate"])
def test_out_with_another_programs_config_is_refused_untouched(work: Path, verb: str, config: str) -> None:
    """--out holding a config.json that is not a recmg checkpoint's: one line, before training, and the
    folder as it was (the checkpoint used to be written over it)."""
    d = work / "app"
    d.mkdir()
    (d / "config.json").write_text(config)
    (d / "index.html").write_text("<html></html>\n")
    before = tree_hash(d)
    r = save_into(work, verb, "app")
    one_line(r, "--out app/config.json", "not a recmg", "not overwritten")
    assert tree_hash(d) == before
    assert not (work / "r.json").exists()
    assert "trained" not in r.stderr  # refused before training


@pytest.mark.parametrize("verb", ["train", "candidate"])
def test_out_with_an_older_checkpoint_is_still_replaced(work: Path, verb: str) -> None:
    """A recmg checkpoint of another format version is recmg's own: replaced, as any checkpoint."""
    cfg = json.loads((work / "ck" / "config.json").read_text())
    cfg["format_version"] = 0
    (work / "ck" / "config.json").write_text(json.dumps(cfg))
    r = save_into(work, verb, "ck")
    assert r.returncode == 0, r.stderr[-3000:]
    new = json.loads((work / "ck" / "config.json").read_text())
    assert new["format_version"] == FORMAT_VERSION and new["generation"] != cfg.get("generation")


@pytest.mark.parametrize(("verb", "out"), [("train", "m"), ("train", "a/b/m"), ("candidate", "m"),
                                           ("sim", "m")])
def test_failed_save_removes_the_folders_it_made(work: Path, small_disk: Callable[[str], Path], verb: str,
                                                 out: str) -> None:
    """A checkpoint that does not fit the disk: one line, and the folders the command made for it (with
    their parents) are removed again (an empty m/ was left behind)."""
    disk = small_disk("64k")
    r = save_into(work, verb, str(disk / out))
    assert list(disk.iterdir()) == [], r.stderr[-3000:]
    one_line(r, "cannot write the checkpoint", "No space left on device", "nothing was kept")
    assert not (work / "r.json").exists()


def test_failed_save_leaves_a_folder_that_was_there(work: Path, small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("64k")
    (disk / "m").mkdir()
    (disk / "m").chmod(0o750)
    r = save_into(work, "train", str(disk / "m"))
    one_line(r, "cannot write the checkpoint", "No space left on device")
    assert [p.name for p in disk.iterdir()] == ["m"] and list((disk / "m").iterdir()) == []
    assert (disk / "m").stat().st_mode & 0o777 == 0o750


def fill(disk: Path) -> None:
    """Fill a small disk to the last byte (a file of it all)."""
    with open(disk / "fill", "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)


@pytest.mark.parametrize("out", ["out", "sub/out", "ck"])
def test_candidate_result_not_written_leaves_no_checkpoint(work: Path, small_disk: Callable[[str], Path],
                                                           out: str) -> None:
    """--result on a full disk: one line naming it, exit 1, and --out as it was: a new folder is not
    made (it was left holding the new checkpoint, which no result described) and an earlier candidate's
    checkpoint is not replaced."""
    disk = small_disk("64k")
    fill(disk)
    before = tree_hash(work / "ck")
    r = candidate(work, out=out, result=str(disk / "r.json"))
    one_line(r, f"{disk / 'r.json'}: cannot write the result", "No space left on device",
             "no checkpoint was saved")
    assert [p.name for p in disk.iterdir()] == ["fill"]
    assert not (work / "out").exists() and not (work / "sub").exists()
    assert tree_hash(work / "ck") == before


def test_candidate_result_not_put_in_place_removes_the_checkpoint(
        work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The result written but not renamed into place (after the checkpoint was saved): the checkpoint
    this run made is removed again, with the folders it made, and the line says so."""
    import errno

    from recmgd.cli import recmg as recmg_cli

    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "r.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real(src, dst)

    monkeypatch.chdir(work)
    monkeypatch.setattr(os, "replace", replace)
    rc = recmg_cli.main(["candidate", "win.bin", "--policy", "recmg", "--capacity", "40", "--out", "a/out",
                         "--result", "r.json", "--epochs", "1", "--nice", "0"])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = [x for x in err.strip().splitlines() if not x.startswith(LOG_PREFIXES)]
    assert lines == ["recmg candidate: error: r.json: cannot write the result (Input/output error); "
                     "the checkpoint saved in a/out was removed"]
    assert not (work / "a").exists() and not (work / "r.json").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".partial")]


# ------------------------------------------------------------------------------ empty lists
@pytest.mark.parametrize("systems", ["", ",", " , "])
def test_demo_no_systems_is_one_line(work: Path, systems: str) -> None:
    """--systems naming none: one line before anything runs (it ran ~30 s, then an IndexError)."""
    r = recmg("demo", "--systems", systems, "--workdir", "wd", "--png", "p.png", cwd=work)
    one_line(r, "recmg demo: --systems: no system named", "all-dram", rc=2)
    assert not (work / "wd").exists() and not (work / "p.png").exists()
    assert r.stdout == ""


def test_demo_unknown_system_is_one_line(work: Path) -> None:
    r = recmg("demo", "--systems", "lru,nope", "--workdir", "wd", cwd=work)
    one_line(r, "--systems", "unknown nope", rc=2)
    assert not (work / "wd").exists()


@pytest.mark.parametrize("policies", ["", ",", " , "])
def test_sim_no_policies_is_one_line(work: Path, policies: str) -> None:
    """--policies naming none (and no --pages): one line, exit 2 (it printed a table header, exit 0)."""
    r = recmg("sim", "small.trace", "--policies", policies, cwd=work)
    one_line(r, "recmg sim: --policies: no policy named", "lru", rc=2)
    assert r.stdout == ""


def test_sim_pages_alone_still_runs(work: Path) -> None:
    r = recmg("sim", "small.trace", "--policies", "", "--pages", "lru", "--fractions", "0.1", "--json",
              cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads(x)["policy"] for x in r.stdout.splitlines()] == ["lru@page"]


# ------------------------------------------------------------------------------ short traces
def test_train_on_one_step_is_one_line(work: Path) -> None:
    r = recmg("train", "one.trace", "--out", "out", "--epochs", "1", "-q", cwd=work)
    one_line(r, "one.trace", "1 steps of 16 samples", "at least 2")
    assert not (work / "out").exists()
    r = recmg("train", "small.trace", "--out", "out", "--epochs", "1", "-q", "-b", "100000", cwd=work)
    one_line(r, "small.trace", "at least 2")
    assert not (work / "out").exists()


def test_sim_learned_on_one_step_is_one_line(work: Path) -> None:
    r = recmg("sim", "one.trace", "--policies", "recmg", "--epochs", "1", cwd=work)
    one_line(r, "one.trace", "at least 2")


def test_train_memory_mb_inf_is_one_line(work: Path) -> None:
    r = recmg("train", "small.trace", "--out", "out", "--memory-mb", "inf", cwd=work)
    one_line(r, "--memory-mb", rc=2)
    assert not (work / "out").exists()


def test_train_memory_mb_below_a_byte_is_refused(work: Path) -> None:
    # (it would round to a limit of 0 bytes, which means "no check": the opposite of what was asked)
    r = recmg("train", "small.trace", "--out", "out", "--memory-mb", "1e-9", cwd=work)
    one_line(r, "--memory-mb", "less than a byte", rc=2)
    assert not (work / "out").exists()


def test_train_sample_keeping_nothing_is_one_line(work: Path) -> None:
    r = recmg("train", "small.trace", "--out", "out", "--epochs", "1", "-q", "--sample", "1e-9", cwd=work)
    one_line(r, "--sample")
    assert not (work / "out").exists()


def test_demo_trace_shorter_than_warmup_is_one_line(work: Path) -> None:
    r = recmg("demo", "--trace", "small.trace", "--workdir", "wd", "--systems", "all-dram", cwd=work)
    one_line(r, "small.trace", "warm-up")


@pytest.mark.parametrize("workdir", ["afile", "/proc/nonexistent/x"])
def test_demo_bad_workdir_is_one_line(work: Path, workdir: str) -> None:
    (work / "afile").write_text("keep\n")
    r = recmg("demo", "--workdir", workdir, "--systems", "all-dram", cwd=work)
    one_line(r, "--workdir")
    assert (work / "afile").read_text() == "keep\n"


# ------------------------------------------------------------------------------ traces
def test_synth_full_disk_says_no_space(tmp_path: Path, small_disk: Callable[[str], Path]) -> None:
    """A full disk mid-trace is the disk's error, not the writer's complaint about its sample lengths."""
    d = small_disk("1m")
    r = recmg("trace", "synth", str(d / "x.bin"), "--lookups", "1e6", cwd=tmp_path)
    one_line(r, "No space left on device")
    assert list(d.iterdir()) == []


def test_binary_writer_does_not_hide_the_error_in_flight(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), BinaryWriter(tmp_path / "x.bin") as w:
        w.add(np.arange(10, dtype=np.int64))
        raise RuntimeError("boom")


def test_dlrm_convert_with_a_high_table_is_refused(work: Path) -> None:
    lines = [f"{MAX_TABLES - 1 if i == 0 else 0} {i} {i}\n" for i in range(1000)]
    (work / "hi.trace").write_text("".join(lines))
    r = recmg("trace", "convert", "hi.trace", "hi.pt", cwd=work, timeout=60)
    one_line(r, "hi.pt", f"{MAX_TABLES:,} tables")
    assert not (work / "hi.pt").exists()


def test_stdout_write_error_is_one_line(work: Path) -> None:
    with open("/dev/full", "w") as full:
        r = recmg("trace", "stats", "small.trace", "--no-sim", cwd=work, stdout=full, stderr=subprocess.PIPE)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == "recmg: cannot write the output: No space left on device"


def test_tab_separated_text_trace(work: Path) -> None:
    (work / "tabs.trace").write_text("0\t1\t0\n0\t2\t1\n")
    r = recmg("trace", "stats", "tabs.trace", "--no-sim", "--json", cwd=work)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lookups"] == 2


def test_proc_file_is_not_empty(work: Path) -> None:
    r = recmg("trace", "stats", "/proc/self/status", "--no-sim", cwd=work)
    line = one_line(r, "/proc/self/status")
    assert "empty file" not in line


def test_empty_trace_converts_to_text_that_reads_back(work: Path) -> None:
    write_binary(Trace(np.zeros(0, np.int64), np.zeros(1, np.int64)), work / "none.bin")
    r = recmg("trace", "convert", "none.bin", "none.trace", cwd=work)
    assert r.returncode == 0, r.stderr
    r = recmg("trace", "stats", "none.trace", "--no-sim", "--json", cwd=work)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lookups"] == 0


# ------------------------------------------------------------------------------ Ctrl-C
def _interrupt(argv: list[str], cwd: Path, ready: Callable[[subprocess.Popen[str]], None],
               sig: int = signal.SIGINT) -> tuple[int, str]:
    # (faulthandler: a process that does not end is made to show where it is, below)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    p = subprocess.Popen([sys.executable, "-m", "recmgd.cli.recmg", *argv], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready(p)
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)  # its threads' stacks on stderr
            _, err = p.communicate(timeout=60)
            raise AssertionError(f"still running 60 s after {signal.Signals(sig).name}; its stacks:\n"
                                 f"{err[-6000:]}") from None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err


def test_ctrl_c_during_train_is_one_line(work: Path) -> None:
    write_text_trace(work / "big.trace", 40000, per_sample=4, seed=1)

    def started(p: subprocess.Popen[str]) -> None:  # "training ..." is printed just before it trains
        assert p.stdout is not None
        assert p.stdout.readline().startswith("training")

    rc, err = _interrupt(["train", "big.trace", "--out", "out", "--epochs", "20"], work, started)
    assert rc == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "recmg: interrupted" and "Traceback" not in err, err[-3000:]
    assert not (work / "out").exists()


@pytest.mark.parametrize(("sig", "rc", "line"), [(signal.SIGINT, 130, "recmg: interrupted"),
                                                 (signal.SIGTERM, 143, "recmg: terminated"),
                                                 (signal.SIGHUP, 129, "recmg: hung up")])
def test_signal_during_synth_leaves_nothing(tmp_path: Path, sig: int, rc: int, line: str) -> None:
    """Ctrl-C, SIGTERM (systemd's stop, timeout(1)) or SIGHUP (a terminal or SSH session gone): one
    line, and the output's temporary removed (SIGTERM, then SIGHUP, left a 148 MB hidden .partial file:
    nothing unwound)."""
    def started(p: subprocess.Popen[str]) -> None:  # a temporary beside the output: it writes
        for _ in range(600):
            if any(tmp_path.iterdir()):
                return
            try:
                p.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError("synth ended before it was interrupted")

    got, err = _interrupt(["trace", "synth", "x.bin", "--lookups", "1e9"], tmp_path, started, sig)
    assert got == rc, err[-3000:]
    assert err.strip() == line, err[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_demo_without_torchrec_is_one_line(work: Path) -> None:
    """An installed recmgd has no TorchRec (the package's torchrec extra): `recmg demo` says so at once,
    where its server failed with two nested tracebacks after the trace was made."""
    hide = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torchrec':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from recmgd.cli.recmg import main\n"
            "sys.exit(main(['demo', '--seconds', '0.2', '--workdir', 'wd', '--png', 'p.png']))\n")
    r = subprocess.run([sys.executable, "-c", hide], text=True, capture_output=True, timeout=120, cwd=work,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    one_line(r, "recmg demo: needs torchrec: torchrec==1.8.0 (installed with --no-deps)", rc=2)
    assert r.stdout == "" and not (work / "wd").exists()
