"""The daemon's configuration: strict typed decoding, one-line errors naming file, key and problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recmgd.daemon import config
from recmgd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def err(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        config.parse(text, "/etc/x.toml")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("/etc/x.toml: ")
    return msg


def test_defaults() -> None:
    c = config.parse("", "f")
    assert c.pools is None and c.manages("anything")
    assert c.control.socket == "/run/recmgd/control.sock" and c.control.mode == 0o660
    assert c.metrics.address is None
    assert c.policy.name == "lru" and c.interval == 0.01 and not c.step_mode and c.early_admit


def test_full_document() -> None:
    c = config.parse("""
log_level = "DEBUG"
interval = 1
step_mode = true
early_admit = false
pools = ["a", "b"]
fill_rows_per_s = 1000
fill_mb_per_s = 12.5
plugins = ["x.y"]
[control]
socket = "/tmp/s.sock"
mode = "0600"
group = "root"
[metrics]
listen = "127.0.0.1:9464"
[policy]
name = "lfu"
hint_slots = 16
hint_pin_batches = 5
[policy.options]
prefetch_budget = 8
seed = 3
[pool.b]
name = "recmg"
model_dir = "/var/lib/recmgd/models/b"
hint_pin_batches = 0
[pool.b.options]
threads = 2
""", "f")
    assert c.log_level == "debug" and c.interval == 1.0 and c.step_mode and not c.early_admit
    assert c.pools == ("a", "b") and c.manages("a") and not c.manages("c")
    assert c.fill_rows_per_s == 1000 and c.fill_mb_per_s == 12.5
    assert c.control.mode == 0o600 and c.metrics.address == ("127.0.0.1", 9464) and c.control.group == "root"
    assert c.policy_for("a").name == "lfu" and c.policy_for("a").hint_slots == 16
    b = c.policy_for("b")
    assert b.name == "recmg" and b.model_dir == "/var/lib/recmgd/models/b"
    assert b.options == {"prefetch_budget": 8, "seed": 3, "threads": 2} and b.hint_slots == 16
    assert c.policy_for("a").hint_pin_batches == 5 and b.hint_pin_batches == 0
    assert b.create_options()["model_dir"] == "/var/lib/recmgd/models/b"


@pytest.mark.parametrize("text,key,problem", [
    ("bogus = 1", "bogus", "unknown key"),
    ("[control]\nsocks = '/x'", "control.socks", "unknown key"),
    ("[policy.options]\nlearning_rate = 1", "policy.options.learning_rate", "unknown key"),
    ("[pool.p]\nnmae = 'lru'", "pool.p.nmae", "unknown key"),
    ("interval = 'fast'", "interval", "expected a number, got a string"),
    ("step_mode = 1", "step_mode", "expected a boolean, got an integer"),
    ("early_admit = 'yes'", "early_admit", "expected a boolean"),
    ("fill_rows_per_s = 1.5", "fill_rows_per_s", "expected an integer, got a number"),
    ("fill_rows_per_s = true", "fill_rows_per_s", "expected an integer, got a boolean"),
    ("control = 3", "control", "expected a table"),
    ("pools = 3", "pools", "array of pool names"),
    ("plugins = [1]", "plugins", "array of strings"),
    ("[control]\nmode = [1]", "control.mode", "expected an integer"),
    ("[pool]\np = 1", "pool.p", "expected a table"),
    ("interval = 0", "interval", "impossible value 0.0"),
    ("interval = -1", "interval", "impossible value"),
    ("interval = nan", "interval", "impossible value"),
    ("fill_rows_per_s = -5", "fill_rows_per_s", "impossible value -5"),
    ("fill_mb_per_s = -0.5", "fill_mb_per_s", "impossible value"),
    ("max_drain = 0", "max_drain", "impossible value 0"),
    ("coalesce = -1", "coalesce", "impossible value -1"),
    ("log_level = 'loud'", "log_level", "impossible value 'loud'"),
    ("pools = ['a', 'a']", "pools", "named twice"),
    ("pools = ['a/b']", "pools", "impossible value"),
    ("serve_users = ['no-such-user-xyz']", "serve_users", "no such user"),
    ("serve_users = 'root'", "serve_users", "expected an array of strings"),
    ("serve_groups = ['no-such-group-xyz']", "serve_groups", "no such group"),
    ("serve_groups = [0]", "serve_groups", "expected an array of strings"),
    ("[control]\nsocket = 'relative.sock'", "control.socket", "absolute path"),
    ("[control]\nsocket = '/" + "x" * 200 + "'", "control.socket", "107 bytes"),
    ("[control]\nmode = 0o1777", "control.mode", "impossible value"),
    ("[control]\nmode = '9z'", "control.mode", "octal"),
    ("[control]\nmode = 0o060", "control.mode", "owner needs read and write"),
    ("[control]\nmax_request = 10", "control.max_request", "impossible value 10"),
    ("[control]\ngroup = 'no-such-group-xyz'", "control.group", "no such group"),
    ("[control]\ngroup = 5", "control.group", "expected a string"),
    ("[metrics]\nlisten = 'nowhere'", "metrics.listen", "HOST:PORT"),
    ("[metrics]\nlisten = '127.0.0.1:0'", "metrics.listen", "port"),
    ("[metrics]\nlisten = '127.0.0.1:99999'", "metrics.listen", "port"),
    ("[metrics]\nlisten = 'example.com:80'", "metrics.listen", "not an IP address"),
    ("[policy]\nname = ''", "policy.name", "empty policy name"),
    ("[policy]\nmodel_dir = 'models'", "policy.model_dir", "absolute path"),
    ("[policy]\nhint_slots = -1", "policy.hint_slots", "impossible value -1"),
    ("[policy]\nhint_pin_batches = -1", "policy.hint_pin_batches", "impossible value -1"),
    ("[policy.options]\nthreads = 0", "policy.options.threads", "impossible value 0"),
    ("[policy.options]\nseed = 'x'", "policy.options.seed", "expected an integer"),
    ("[pool.p.options]\nprefetch_budget = -1", "pool.p.options.prefetch_budget", "impossible value"),
])
def test_errors_name_file_key_problem(text: str, key: str, problem: str) -> None:
    msg = err(text)
    assert msg.startswith(f"/etc/x.toml: {key}: "), msg
    assert problem in msg, msg


def test_syntax_error() -> None:
    msg = err("interval = = 3")
    assert "(syntax)" in msg and "line 1" in msg


def test_load_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: \(file\): no such file"):
        config.load(str(tmp_path / "nope.toml"))
    assert config.load(str(tmp_path / "nope.toml"), missing_ok=True).policy.name == "lru"
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(bad))


def test_example_file_is_valid() -> None:
    c = config.load(str(REPO / "systemd" / "recmgd.toml.example"))
    assert c.pools is None and c.policy.name == "lru" and c.control.mode == 0o660


def test_unknown_policy_and_bad_plugin(tmp_path: Path) -> None:
    c = config.parse("plugins = ['test_daemon_plugin']\n[policy]\nname = 'daemon-test-lru'\n"
                     "[pool.p]\nname = 'no-such-policy'", str(tmp_path / "c.toml"))
    ok = "plugins = ['test_daemon_plugin']\n[policy]\nname = 'daemon-test-lru'"
    config.validate_policies(config.parse(ok))
    with pytest.raises(ConfigError, match=r"c\.toml: pool\.p\.name: unknown policy 'no-such-policy'"):
        config.validate_policies(c)
    c = config.parse("plugins = ['no_such_module_xyz']", "c.toml")
    with pytest.raises(ConfigError, match=r"c\.toml: plugins: cannot import 'no_such_module_xyz'"):
        config.validate_policies(c)


@pytest.mark.parametrize("text,key,problem", [
    ("colour = 'red'\n", "colour", "unknown key"),
    ("interval = 'soon'\n", "interval", "expected a number"),
    ("fill_mb_per_s = -3\n", "fill_mb_per_s", "impossible value"),
])
def test_daemon_refuses_to_start(tmp_path: Path, text: str, key: str, problem: str) -> None:
    cfg = tmp_path / "recmgd.toml"
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg), "--foreground"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"recmgd: error: {cfg}: {key}: ") and problem in lines[0], lines[0]
    assert r.stdout == ""


def test_missing_config_given_explicitly(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(tmp_path / "x.toml")],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1 and "x.toml: (file): no such file" in r.stderr


def test_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text("plugins = ['test_daemon_plugin']\n[policy]\nname = 'daemon-test-lru'\n")
    env = dict(__import__("os").environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}")
    cmd = [sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg), "--check-config"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"recmgd: {cfg}: configuration is valid", r.stderr
    cfg.write_text("[policy]\nname = 'no-such'\n")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert r.returncode == 1 and f"{cfg}: policy.name: unknown policy 'no-such'" in r.stderr
