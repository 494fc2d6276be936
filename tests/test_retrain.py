"""Retraining online (retrain_every, retrain_window): real daemon, real app, real trainer processes.

A pool configured for recmg with no checkpoint runs LRU; an app replays amazon_video; `recmgctl retrain
--wait` trains a candidate on a short window in a separate process, scores it and LRU with the simulator
on the window's recent part, and the daemon switches to it (it fetched less); the checkpoint is kept
on disk and a restarted daemon loads it; stats and the Prometheus text show the retrain; a trainer
killed with SIGKILL is counted as a failure and changes nothing.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from ports import free_port
from test_daemon_live import app, unique_keys
from test_daemon_plugin import daemon_env, shut_down, start_daemon, stop_daemon, wait_socket
from test_record import create_pool, wait_attached

from recmgd.daemon import config as config_mod
from recmgd.daemon.config import PolicyConfig
from recmgd.daemon.control import request
from recmgd.daemon.retrain import Retrainer, RollingWindow, current_checkpoint
from recmgd.errors import ConfigError

AMAZON = "amazon_video.trace"
END = np.uint64(1) << np.uint64(62)


def recmgctl(sock: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recmgd.cli.recmgctl", "--socket", str(sock), *args],
                          env=daemon_env(), capture_output=True, text=True, timeout=timeout)


def batches(n: int, size: int, start: int = 0) -> np.ndarray:
    """n batches of ``size`` lookups of consecutive keys from ``start``, as ring records."""
    out = []
    for b in range(n):
        out.extend(range(start + b * size, start + (b + 1) * size))
        out.append(int(END))
    return np.array(out, dtype=np.uint64)


def test_window_keeps_the_last_lookups_in_whole_batches() -> None:
    w = RollingWindow(100)
    w(batches(30, 10), 0)
    keys, lengths = w.snapshot()
    assert len(keys) == 100 and lengths.tolist() == [10] * 10
    assert keys[0] == 200 and keys[-1] == 299  # the last ten batches
    w(np.array([5000, 5001], dtype=np.uint64), 1)  # an unfinished batch of another ring: not in it
    assert w.snapshot()[0][-1] == 299
    w(np.zeros(0, dtype=np.uint64), 1)  # ring 1's app is gone: its unfinished batch is dropped
    w(np.array([7000, int(END)], dtype=np.uint64), 1)
    keys, lengths = w.snapshot()
    assert keys[-1] == 7000 and lengths[-1] == 1 and keys[-2] == 299


def test_the_window_reports_what_a_retrain_trains_on(tmp_path: Path) -> None:
    """The window holds whole drain chunks (a drain of 65152 lookups for a 20000 window), but its stats
    say what a retrain takes from them: the last whole batches of at most retrain_window lookups."""
    rt = Retrainer("p", PolicyConfig(name="recmg", retrain_every=1.0, retrain_window=20000), 10,
                   str(tmp_path), model_dir=None)
    rt.window(batches(509, 128), 0)  # one drain: 65152 lookups
    st = rt.stats()
    keys, lengths = rt.window.snapshot()
    assert len(keys) == 19968 and len(lengths) == 156 and keys[-1] == 509 * 128 - 1
    assert st["window_lookups"] == 19968 and st["window_target"] == 20000 and st["window_full"]
    # against the stream: the longest run of whole last batches within the limit, drain after drain
    rng = np.random.default_rng(7)
    w = RollingWindow(5000)
    sizes: list[int] = []
    for i in range(300):
        n = rng.integers(1, 60, size=int(rng.integers(1, 200)))
        recs = []
        for size in n:
            recs.extend(range(int(size)))
            recs.append(int(END))
        w(np.array(recs, dtype=np.uint64), 0)
        sizes.extend(int(x) for x in n)
        take, total = 0, 0
        while take < len(sizes) and total + sizes[-1 - take] <= 5000:
            total += sizes[-1 - take]
            take += 1
        keys, lengths = w.snapshot()
        assert (w.used_lookups, w.used_batches) == (len(keys), len(lengths)) == (total, take), i
        assert lengths.tolist() == sizes[len(sizes) - take:] and w.full == (sum(sizes) >= 5000)


def test_retrainer_is_due_only_with_a_full_window(tmp_path: Path) -> None:
    rt = Retrainer("p", PolicyConfig(name="recmg", retrain_every=1.0, retrain_window=1000), 10,
                   str(tmp_path), model_dir=None)
    later = time.monotonic() + 5
    assert not rt.due(later)
    rt.window(batches(50, 10), 0)
    assert not rt.due(later)  # 500 of 1000 lookups
    rt.window(batches(60, 10, 1000), 0)
    assert rt.due(later) and not rt.due(time.monotonic() - 5)


def test_retrain_config() -> None:
    cfg = config_mod.parse('[policy]\nname = "recmg"\nretrain_every = "30m"\nretrain_window = 2000000\n'
                           '[pool.a]\nretrain_every = 90\n')
    assert cfg.policy.retrain_every == 1800 and cfg.policy.retrain_window == 2_000_000
    assert cfg.policy_for("a").retrain_every == 90 and cfg.policy_for("a").retrain_window == 2_000_000
    for text, problem in (('[policy]\nretrain_every = "soon"', "policy.retrain_every: impossible value"),
                          ('[policy]\nretrain_every = "0.5s"', "at least 1 s"),
                          ('[policy]\nretrain_window = 10', "policy.retrain_window: impossible value"),
                          ('[policy]\nretrain_threads = "2"', "expected an integer"),
                          ('state_dir = "var/lib"', "state_dir: impossible value")):
        with pytest.raises(ConfigError, match=problem):
            config_mod.parse(text, "t.toml")
    with pytest.raises(ConfigError, match="policy.retrain_every: policy 'lru' is not a learned one"):
        config_mod.validate_policies(config_mod.parse('[policy]\nname = "lru"\nretrain_every = "1h"', "t"))


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.mark.slow
def test_retrain_switches_keeps_and_survives(tmp_path: Path, shared_traces: Path) -> None:
    from test_daemon_app import trace_batches

    from recmgd.sim import capacity_for

    name = f"recmgd-rt-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    state = tmp_path / "state"
    port = free_port()
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'pools = ["{name}"]\ninterval = 0.001\napp_check_interval = 0.1\nstate_dir = "{state}"\n'
                   f'[control]\nsocket = "{sock}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
                   f'[policy]\nname = "recmg"\nretrain_every = "1h"\nretrain_window = 20000\n'
                   f'[policy.options]\nepochs = 1\n')
    trace = shared_traces / AMAZON
    bs, sizes = trace_batches(str(trace), 16, 40_000)
    capacity = capacity_for(0.1, unique_keys(bs))
    d = start_daemon(cfg)
    pool = None
    try:
        wait_socket(sock, d, timeout=60)
        pool = create_pool(name, sizes, capacity)
        wait_attached(sock, name)
        st = request(str(sock), "stats")["pools"][name]
        assert st["policy"] == "lru" and st["retrain"]["model_dir"] is None  # no checkpoint yet
        # too little in the window yet: one line
        r = recmgctl(sock, "retrain", name)
        assert r.returncode == 1 and "needs at least" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = fill_and_retrain(sock, name, trace, 40000)
        st = request(str(sock), "stats")["pools"][name]
        rt = st["retrain"]
        last = rt["last"]
        assert rt["retrains"] == 1 and rt["failures"] == 0 and not rt["running"]
        assert last["current"] == "lru" and last["current_on_demand"] == last["lru_on_demand"]
        assert 0 < last["candidate_on_demand"] < last["current_on_demand"], last
        assert f"candidate {last['candidate_on_demand']} vs current {last['current_on_demand']}" in r.stdout
        # switched: the pool runs recmg on the retrained checkpoint, kept on disk as `current`
        assert rt["switches"] == 1 and last["switched"] and st["policy"] == "recmg"
        model = rt["model_dir"]
        assert model == current_checkpoint(str(state), name) and Path(model, "config.json").is_file()
        assert rt["model_age_s"] is not None and rt["model_age_s"] >= 0
        switches = f'recmgd_model_switches_total{{pool="{name}"}} 1.0'
        deadline = time.monotonic() + 10
        while switches not in (text := metrics_text(port)):  # the snapshot is published every 0.5 s
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        cand = float(last["candidate_on_demand"])
        assert f'recmgd_retrain_candidate_on_demand{{pool="{name}"}} {cand}' in text
        assert f'recmgd_model_age_seconds{{pool="{name}"}}' in text
        # a trainer killed with SIGKILL: logged, counted, nothing changes
        r = recmgctl(sock, "retrain", name)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 60
        while (pid := request(str(sock), "stats")["pools"][name]["retrain"]["trainer_pid"]) is None:
            assert time.monotonic() < deadline, "no trainer process"
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (rt := request(str(sock), "stats")["pools"][name]["retrain"])["running"]:
            assert time.monotonic() < deadline, "the killed trainer was not noticed"
            time.sleep(0.05)
        st = request(str(sock), "stats")["pools"][name]
        assert rt["failures"] == 1 and rt["switches"] == 1 and "killed by signal 9" in rt["last_error"]
        assert st["policy"] == "recmg" and rt["model_dir"] == model
        assert current_checkpoint(str(state), name) == model
        # the app still reads correct rows
        from test_daemon_app import check

        assert check(pool, 0, np.arange(min(100, sizes[0]))) == 0
    finally:
        rc, err = stop_daemon(d)
    assert rc == 0, err
    assert "retrain 2 failed, the model is unchanged" in err
    # a restarted daemon loads the last good checkpoint
    d = start_daemon(cfg)
    try:
        wait_socket(sock, d, timeout=60)
        wait_attached(sock, name)
        st = request(str(sock), "stats")["pools"][name]
        assert st["policy"] == "recmg" and st["retrain"]["model_dir"] == model
        assert st["retrain"]["switches"] == 0 and st["retrain"]["window_lookups"] == 0
    finally:
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err
    assert "loading the last retrained checkpoint" in err


def test_retrain_refused_without_config(tmp_path: Path) -> None:
    name = f"recmgd-rt-{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "ctl.sock"
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'pools = ["{name}"]\ninterval = 0.001\n[control]\nsocket = "{sock}"\n')
    d = start_daemon(cfg)
    pool = None
    try:
        wait_socket(sock, d, timeout=60)
        pool = create_pool(name, [100], 10)
        wait_attached(sock, name)
        r = recmgctl(sock, "retrain", name)
        assert r.returncode == 1 and "does not retrain (set retrain_every" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err


@pytest.mark.slow
def test_retrain_every_runs_by_itself(tmp_path: Path, shared_traces: Path) -> None:
    """retrain_every: once the window is full, the daemon retrains on its own; stopping the daemon
    while a trainer runs kills it and leaves no candidate behind."""
    name = f"recmgd-rt-{uuid.uuid4().hex[:8]}"
    cfg, sock, state = retraining_daemon(tmp_path, name, epochs=1, every="2s")
    trace = shared_traces / AMAZON
    d, pool = daemon_with_pool(cfg, sock, name, trace, 12_000)
    try:
        replay(name, trace, 12000)
        deadline = time.monotonic() + 300
        while not ((rt := request(str(sock), "stats")["pools"][name]["retrain"])["last"]
                   or rt["failures"]):
            assert time.monotonic() < deadline, rt
            time.sleep(0.2)
        assert rt["failures"] == 0, rt["last_error"]
        assert rt["last"]["reason"] == "every 2 s" and rt["last"]["lookups"] > 0
        # the next one is due 2 s after the first started: wait for its trainer, then stop the daemon
        deadline = time.monotonic() + 120
        while request(str(sock), "stats")["pools"][name]["retrain"]["trainer_pid"] is None:
            assert time.monotonic() < deadline, "no second retrain"
            time.sleep(0.05)
    finally:
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err
    assert not list((state / "retrain" / name).glob("candidate-*"))


def test_the_window_on_a_full_disk_leaves_nothing_and_names_the_file(tmp_path: Path, small_disk) -> None:
    """A retrain whose window does not fit: one line naming the file and the system's reason; neither
    the window nor a temporary of it is left."""
    small = small_disk("64k")
    rt = Retrainer("p", PolicyConfig(name="recmg", retrain_window=20000), 10, str(small), model_dir=None)
    rt.window(batches(50, 400), 0)  # 20000 lookups: 160 kB of keys
    rt.start("test")
    job = rt._job
    assert job is not None and job.thread is not None
    job.thread.join(60)
    assert rt.poll() is None and rt.counts["failures"] == 1
    window = small / "retrain" / "p" / "window.rtrace"
    assert rt.last_error == f"cannot write the retraining window {window}: No space left on device"
    assert os.listdir(small / "retrain" / "p") == []


@pytest.mark.parametrize("configured", ["good", "none", "bad"])
def test_a_corrupt_retrained_checkpoint_is_passed_over(tmp_path: Path, configured: str) -> None:
    """`current` points at a checkpoint whose inference.npz is cut short: one warning naming it, and the
    pool runs the configured model_dir (or LRU when there is none); when that fails too, the pool waits
    as for any bad model_dir, saying why once. Never a line per app check."""
    import shutil

    from test_models import small_cfg, zipf_steps

    from recmgd.models import checkpoint
    from recmgd.models.train import train_models

    name = f"recmgd-rt-{uuid.uuid4().hex[:8]}"
    trained = train_models(zipf_steps(n_steps=60).as_list(), 20, small_cfg())
    model = checkpoint.save(trained, tmp_path / "model")
    state = tmp_path / "state"
    bad = state / "retrain" / name / "models" / "model-1-1"
    shutil.copytree(model, bad)
    (bad / "inference.npz").write_bytes((bad / "inference.npz").read_bytes()[:100])
    os.symlink("models/model-1-1", state / "retrain" / name / "current")
    assert current_checkpoint(str(state), name) == str(bad)
    if configured == "bad":
        shutil.copytree(bad, tmp_path / "also-bad")
        model = tmp_path / "also-bad"
    model_dir = "" if configured == "none" else f'model_dir = "{model}"\n'
    sock = tmp_path / "ctl.sock"
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'pools = ["{name}"]\ninterval = 0.005\napp_check_interval = 0.05\nstate_dir = "{state}"\n'
                   f'[control]\nsocket = "{sock}"\n[policy]\nname = "recmg"\n{model_dir}'
                   'retrain_every = "1h"\n')
    d = start_daemon(cfg)
    pool = None
    try:
        wait_socket(sock, d, timeout=60)
        pool = create_pool(name, [100], 10)
        if configured == "bad":
            # (until the model's error: the first may be the pool's, found while it was being created)
            deadline = time.monotonic() + 30
            while str(model) not in ((waiting := request(str(sock), "pools"))[0].get("error") or ""):
                assert time.monotonic() < deadline, waiting
                time.sleep(0.05)
        else:
            wait_attached(sock, name)
            st = request(str(sock), "stats")["pools"][name]
            if configured == "good":
                assert st["policy"] == "recmg" and st["retrain"]["model_dir"] == str(model)
            else:
                assert st["policy"] == "lru" and st["retrain"]["model_dir"] is None
        time.sleep(1.0)  # twenty app checks
        assert d.poll() is None
    finally:
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if "does not load" in ln]
    assert len(warnings) == 1 and f"the last retrained checkpoint {bad} does not load" in warnings[0], err
    assert err.count("loading the last retrained checkpoint") == 1, err
    assert err.count("cannot attach") == (1 if configured == "bad" else 0), err


def test_the_retraining_directories_are_the_daemons_alone(tmp_path: Path, small_disk) -> None:
    """STATE_DIR/retrain and its pool's directory are made (or made again) 0700 before the window is
    written: the window is the pool's lookup stream, which another user of the daemon's group could read
    when the directories took the state directory's group mode (0750)."""
    small = small_disk("64k")
    (small / "retrain" / "p").mkdir(parents=True, mode=0o755)
    os.chmod(small / "retrain", 0o755)
    os.chmod(small / "retrain" / "p", 0o755)
    rt = Retrainer("p", PolicyConfig(name="recmg", retrain_window=20000), 10, str(small), model_dir=None)
    rt.window(batches(50, 400), 0)
    rt.start("test")
    job = rt._job
    assert job is not None and job.thread is not None
    job.thread.join(60)
    for d in (small / "retrain", small / "retrain" / "p"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def daemon_with_pool(cfg: Path, sock: Path, name: str, trace: Path,
                     lookups: int) -> tuple[subprocess.Popen, object]:
    """The daemon of ``cfg`` started, and pool ``name`` made for the first ``lookups`` of ``trace`` (300
    slots) and attached by it: (daemon, pool). On a failure on the way the daemon is shut down and the
    pool removed."""
    from test_daemon_app import trace_batches

    _, sizes = trace_batches(str(trace), 16, lookups)
    d = start_daemon(cfg)
    pool = None
    try:
        wait_socket(sock, d, timeout=60)
        pool = create_pool(name, sizes, 300)
        wait_attached(sock, name)
    except BaseException:
        shut_down(d, name, pool)
        raise
    return d, pool


def replay(name: str, trace: Path, lookups: int) -> None:
    """An app process replays the first ``lookups`` of the trace into the pool, in batches of 16."""
    a = app("replay", "--pool", name, "--trace", str(trace), "--batch", "16", "--limit", str(lookups))
    _, aerr = a.communicate(timeout=300)
    assert a.returncode == 0, aerr


def fill_and_retrain(sock: Path, name: str, trace: Path, lookups: int) -> subprocess.CompletedProcess:
    """An app replays ``lookups`` of the trace into the pool, the retraining window fills, and a retrain
    is asked for and waited for (recmgctl retrain --wait, which must succeed; its run returned)."""
    replay(name, trace, lookups)
    deadline = time.monotonic() + 30
    while not request(str(sock), "stats")["pools"][name]["retrain"]["window_full"]:
        assert time.monotonic() < deadline, "the window did not fill"
        time.sleep(0.05)
    r = recmgctl(sock, "retrain", name, "--wait")
    assert r.returncode == 0, r.stderr
    return r


def proc_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, from /proc/PID/stat; None when there is none."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def running(pid: int, ticks: int) -> bool:
    """Whether the process ``pid`` that started at ``ticks`` still runs (a zombie does not)."""
    st = proc_start(pid)
    return st is not None and st[1] == ticks and st[0] not in ("Z", "X")


def retraining_daemon(tmp_path: Path, name: str, epochs: int, every: str = "1h") -> tuple[Path, Path, Path]:
    """(its config, its socket, its state directory): recmg-cache, retrained on a window of 5000 lookups
    every ``every`` and at `recmgctl retrain`."""
    sock = tmp_path / "ctl.sock"
    state = tmp_path / "state"
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'pools = ["{name}"]\ninterval = 0.001\nstate_dir = "{state}"\n'
                   f'[control]\nsocket = "{sock}"\n'
                   f'[policy]\nname = "recmg-cache"\nretrain_every = "{every}"\nretrain_window = 5000\n'
                   f'[policy.options]\nepochs = {epochs}\n')
    return cfg, sock, state


@pytest.mark.slow
def test_a_trainer_dies_with_its_sigkilled_daemon(tmp_path: Path, shared_traces: Path) -> None:
    """recmgd --foreground killed with SIGKILL during a retrain (no systemd to kill its cgroup): its
    trainer, in a session of its own, ends with it within seconds instead of training on and writing
    its candidate and result where a restarted daemon retrains."""
    from recmgd.pool import Pool

    name = f"retrainfix-{uuid.uuid4().hex[:8]}"
    cfg, sock, _ = retraining_daemon(tmp_path, name, epochs=500)  # minutes of training, if left to it
    trace = shared_traces / AMAZON
    d, pool = daemon_with_pool(cfg, sock, name, trace, 3000)
    trainer: tuple[int, int] | None = None
    try:
        replay(name, trace, 3000)
        deadline = time.monotonic() + 30
        while (r := recmgctl(sock, "retrain", name)).returncode != 0:  # the window's last batches
            assert time.monotonic() < deadline and "needs at least" in r.stderr, r.stderr
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while (pid := request(str(sock), "stats")["pools"][name]["retrain"]["trainer_pid"]) is None:
            assert time.monotonic() < deadline, "no trainer process"
            time.sleep(0.02)
        deadline = time.monotonic() + 60
        while b"candidate" not in Path(f"/proc/{pid}/cmdline").read_bytes():  # the trainer itself
            assert time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.02)
        st = proc_start(pid)
        assert st is not None
        trainer = (pid, st[1])
        d.kill()
        d.wait(30)
        deadline = time.monotonic() + 5
        while running(*trainer):
            assert time.monotonic() < deadline, f"the trainer (pid {pid}) outlived its daemon"
            time.sleep(0.05)
    finally:
        if trainer is not None and running(*trainer):
            os.kill(trainer[0], signal.SIGKILL)
        if d.poll() is None:
            stop_daemon(d)
        if pool is not None:
            pool.close()
        Pool.unlink(name)


def test_sweep_tells_a_reused_pid_from_a_temporarys_maker(tmp_path: Path) -> None:
    """A result or window temporary's name has its maker's pid but no start time: one whose pid a process
    holds that started after the file was last written (beyond the clock slack) is a dead maker's and
    is removed; one written since that process started may be its and is kept (it was kept whenever
    its pid was alive)."""
    from recmgd.daemon.apps import process_start
    from recmgd.daemon.retrain import MAKER_START_SLACK_S, sweep_stale

    start = process_start(os.getpid())
    assert start is not None
    old = tmp_path / f".partial-{os.getpid()}-0badc0de.window.rtrace"
    new = tmp_path / f".partial-{os.getpid()}-cafef00d.result-1-2-ab-3.json"
    edge = tmp_path / f".partial-{os.getpid()}-feedf00d.window.rtrace"
    for path in (old, new, edge):
        path.write_bytes(b"x")
    before = start - MAKER_START_SLACK_S
    os.utime(old, (before - 5, before - 5))  # written before this process (holding its pid) started
    os.utime(edge, (before + 5, before + 5))  # within the slack: may be this process's
    assert sweep_stale(tmp_path) == [old.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, edge.name])


@pytest.mark.slow
def test_a_dead_daemons_leftovers_go_at_the_next_retrain(tmp_path: Path, shared_traces: Path) -> None:
    """Candidates, results and result temporaries of daemons that are gone (one before the owner tag in
    the names, one killed: its pid gone or reused) are removed at the next daemon's retrain, which
    they do not confuse (a stale result saying a candidate won by far); a live process's and other
    files are kept."""
    name = f"retrainfix-{uuid.uuid4().hex[:8]}"
    cfg, sock, state = retraining_daemon(tmp_path, name, epochs=1)
    folder = state / "retrain" / name
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(state / "retrain", 0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()
    from recmgd.daemon.apps import process_start

    start = process_start(os.getpid())
    assert start is not None
    me = round(start * 100)  # (owner_tag's START: psutil's create time in centiseconds)
    dead = f"{gone.pid}-1-0badc0de"
    stale_dirs = ["candidate-1", "candidate-3", f"candidate-{dead}-1"]
    stale_files = ["result-1.json", "result-3.json", f"result-{dead}-1.json",
                   f"result-{os.getpid()}-1-0badc0de-2.json",  # this test's pid, another start: reused
                   f".partial-{gone.pid}-0badc0de.result-{dead}-2.json"]
    kept_dirs = [f"candidate-{os.getpid()}-{me}-cafef00d-1"]  # this test's: a live process
    kept_files = [f"result-{os.getpid()}-{me}-cafef00d-1.json", "notes.txt",
                  f".partial-{os.getpid()}-cafef00d.window.rtrace"]
    for n in stale_dirs + kept_dirs:
        (folder / n).mkdir()
        (folder / n / "config.json").write_text('{"bogus": true}')
    for n in stale_files + kept_files:
        (folder / n).write_text('{"candidate_on_demand": 0, "current_on_demand": 1000000000}')
    trace = shared_traces / AMAZON
    d, pool = daemon_with_pool(cfg, sock, name, trace, 12_000)
    try:
        assert (folder / "candidate-3").is_dir()  # nothing happens before a retrain
        fill_and_retrain(sock, name, trace, 12000)
        rt = request(str(sock), "stats")["pools"][name]["retrain"]
        assert rt["retrains"] == 1 and rt["failures"] == 0, rt["last_error"]
        last = rt["last"]
        assert last["current"] == "lru" and last["current_on_demand"] == last["lru_on_demand"] < 10**9, last
        assert last["candidate_on_demand"] > 0, last
        left = sorted(p.name for p in folder.iterdir())
        assert not set(stale_dirs + stale_files) & set(left), left
        assert set(kept_dirs + kept_files) <= set(left), left
        # the daemon's own candidate and result are gone too (the candidate moved, or removed)
        assert not [n for n in left if n.startswith(("candidate-", "result-")) and "cafef00d" not in n], left
        assert (folder / kept_dirs[0] / "config.json").read_text() == '{"bogus": true}'
    finally:
        rc, err = shut_down(d, name, pool)
    assert rc == 0, err
    assert f"removed {len(stale_dirs + stale_files)} files of retrains of daemons now gone" in err, err
