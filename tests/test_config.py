"""The daemon's configuration: strict typed decoding, one-line errors naming file, key and problem."""

from __future__ import annotations

import dataclasses
import os
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
    # names the library refuses (they passed, and the daemon waited for them for ever)
    ("pools = ['x y']", "pools", "bad pool name 'x y' (letters, digits, '_', '-', '.' only)"),
    ("pools = ['\u00e9']", "pools", "letters, digits, '_', '-', '.' only"),
    ("pools = ['.']", "pools", "bad pool name '.'"),
    ("pools = ['" + "p" * 201 + "']", "pools", "pool name must be 1..200 characters"),
    ("[pool.'x y']\nname = 'lru'", "pool.'x y'", "bad pool name 'x y'"),
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
    ("[policy.options]\nregion = 65", "policy.options.region", "impossible value 65"),  # (Bingo: 1..64)
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


def test_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    """A file an editor saved with a UTF-8 byte-order mark reads as the same file without it."""
    f = tmp_path / "bom.toml"
    f.write_bytes(b"\xef\xbb\xbfinterval = 0.25\n")
    assert config.load(str(f)).interval == 0.25


def test_example_file_is_valid() -> None:
    c = config.load(str(REPO / "systemd" / "recmgd.toml.example"))
    assert c.pools is None and c.policy.name == "lru" and c.control.mode == 0o660


def test_example_file_shows_the_defaults() -> None:
    """The example says its values are the defaults unless marked "example", and `make install` puts it
    in /etc: loaded, it is the configuration of no file at all (its one option, seed 0, is every policy's
    default seed). (It set prefetch_budget = 0, which turned every policy's prefetching off.)"""
    c = config.load(str(REPO / "systemd" / "recmgd.toml.example"))
    assert c.policy.options == {"seed": 0}
    same = dataclasses.replace(c, path=config.Config().path,
                               policy=dataclasses.replace(c.policy, options={}))
    assert same == config.Config()


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


BIG = "1" + "0" * 400  # beyond any float
HUGE = "1" + "0" * 5000  # more digits than str() of an int may have


@pytest.mark.parametrize("text,key,problem", [
    (f"status_interval = {BIG}", "status_interval", "impossible value <an integer of about 401 digits>"),
    (f"[policy]\nretrain_every = {BIG}", "policy.retrain_every", "impossible value"),
    (f"[pages]\nbudget_mb = {BIG}", "pages.budget_mb", "impossible value"),
    (f"max_drain = {HUGE}", "(syntax)", "an integer has too many digits"),
    (f"max_drain = {BIG}", "max_drain", "impossible value <an integer of about 401 digits>"),
    (f"[control]\nmode = {BIG}", "control.mode", "impossible value <an integer"),
    (f"[control]\nmode = '{HUGE}'", "control.mode", "impossible value <an integer of about 4516 digits>"),
    ("x = " + "[" * 5000 + "]" * 5000, "(syntax)", "nested too deeply"),
    ("x = " + "{a=" * 3000 + "1" + "}" * 3000, "(syntax)", "nested too deeply"),
    ("interval = 1\ninterval = 2", "(syntax)", "line 2: a key is defined twice ('interval = 2')"),
    ("[policy]\nname = 'lru'\nname = 'lfu'", "(syntax)", "line 3: a key is defined twice"),
])
def test_values_no_check_foresaw_are_one_line_errors(text: str, key: str, problem: str) -> None:
    """Values that made the decoder raise something else than ConfigError (OverflowError, RecursionError,
    ValueError) and a key defined twice (tomllib names neither key nor line): one line naming key and
    problem, never long."""
    msg = err(text)
    assert msg.startswith(f"/etc/x.toml: {key}: "), msg
    assert problem in msg and len(msg) < 300, msg


@pytest.mark.parametrize("text,key,problem", [
    ('pools = ["x\\u0000y"]', "pools", "impossible value 'x\\x00y' (a pool name has no control character)"),
    ('pools = ["aud1", "x\\nMAINPID=1"]', "pools", "'x\\nMAINPID=1' (a pool name has no control character)"),
    ('pools = ["a\\u2028b"]', "pools", "control character"),
    ('"zz\\nMAINPID=1" = 1', "'zz\\nMAINPID=1'", "unknown key"),
    ('[control]\n"so\\rck" = 1', "control.'so\\rck'", "unknown key"),
    ('[pool."a\\nb"]\nname = "lru"', "pool.'a\\nb'", "a pool name has no control character"),
    ('[pool."a/b"]\nname = "lru"', "pool.'a/b'", "has no '/'"),
    ('[control]\nsocket = "/tmp/a\\rb.sock"', "control.socket", "control character"),
    ('plugins = ["a\\nb"]', "plugins", "control character"),
])
def test_control_characters_are_refused_and_keys_escaped(text: str, key: str, problem: str) -> None:
    """A NUL or a newline in a pool name (or any name) is refused; a key is shown escaped, so that the
    message (logged, answered, sent as STATUS=) stays one line."""
    msg = err(text)
    assert msg.startswith(f"/etc/x.toml: {key}: "), msg
    assert problem in msg, msg


def test_recmg_prefetch_throttling_options() -> None:
    """prefetch_min_accuracy and prefetch_throttled_probe (documented in the example, taken by recmg) are
    policy options; the example's commented lines of them are valid."""
    c = config.parse("[policy.options]\nprefetch_min_accuracy = 0.1\nprefetch_throttled_probe = 8\n"
                     "[pool.p.options]\nprefetch_min_accuracy = 0\n", "f")
    assert c.policy.options == {"prefetch_min_accuracy": 0.1, "prefetch_throttled_probe": 8}
    assert c.policy_for("p").create_options()["prefetch_min_accuracy"] == 0.0
    too_much = err("[policy.options]\nprefetch_min_accuracy = 1.5")
    assert "prefetch_min_accuracy: impossible value 1.5" in too_much
    assert "expected a number, got a string" in err("[policy.options]\nprefetch_min_accuracy = 'x'")
    assert "impossible value 0" in err("[policy.options]\nprefetch_throttled_probe = 0")
    example = (REPO / "systemd" / "recmgd.toml.example").read_text()
    lines = example.splitlines()
    start = lines.index("[policy.options]")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
    commented = [ln[2:].split("#")[0].strip() for ln in lines[start:end] if ln.startswith("# prefetch_")]
    assert {ln.split(" = ")[0] for ln in commented} >= {"prefetch_min_accuracy", "prefetch_throttled_probe"}
    c = config.parse("[policy.options]\n" + "\n".join(commented), "example")
    assert set(c.policy.options) >= {"prefetch_min_accuracy", "prefetch_throttled_probe"}


def check_config(cfg: Path) -> subprocess.CompletedProcess:
    env = dict(__import__("os").environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}")
    cmd = [sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg), "--check-config"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_check_config_one_line_for_what_made_the_decoder_raise(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    for text, expect in ((f"status_interval = {BIG}\n", "status_interval: impossible value"),
                         ("x = " + "[" * 5000 + "]" * 5000 + "\n",
                          "(syntax): arrays or tables nested too deeply"),
                         ('pools = ["x\\u0000y"]\n', "pools: impossible value 'x\\x00y'")):
        cfg.write_text(text)
        r = check_config(cfg)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"recmgd: error: {cfg}: "), r.stderr
        assert expect in lines[0], r.stderr


def test_check_config_learned_policy_needs_a_checkpoint(tmp_path: Path) -> None:
    """recmg with a model_dir that does not exist, that holds no checkpoint, or none at all: the daemon
    would never attach its pools; --check-config says so on one line."""
    cfg = tmp_path / "c.toml"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    for section, expect in ((f'[policy]\nname = "recmg"\nmodel_dir = "{tmp_path}/nope"\n',
                             f"policy.model_dir: impossible value '{tmp_path}/nope' (no such directory)"),
                            (f'[policy]\nname = "recmg"\nmodel_dir = "{empty}"\n',
                             f"policy.model_dir: impossible value '{empty}' (holds no checkpoint"),
                            ('[pool.p]\nname = "recmg-cache"\n',
                             "pool.p.model_dir: policy 'recmg-cache' needs a checkpoint"),
                            (f'[policy]\nname = "recmg"\nmodel_dir = "{bad}"\n', "policy.model_dir: ")):
        cfg.write_text(section)
        r = check_config(cfg)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"recmgd: error: {cfg}: ") and expect in lines[0], r.stderr
    # retraining without a checkpoint runs LRU until its first retrain: valid
    cfg.write_text('[policy]\nname = "recmg"\nretrain_every = "1h"\n')
    r = check_config(cfg)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("buffered", [False, True])
def test_check_config_into_a_full_or_closed_stdout(tmp_path: Path, buffered: bool) -> None:
    """`recmgd --check-config > /dev/full`: one line, exit 1 (it was an OSError traceback); into a pipe
    whose reader is gone (`| head -0`): a quiet end (it was a BrokenPipeError traceback)."""
    cfg = tmp_path / "ok.toml"
    cfg.write_text('pools = ["x"]\n')
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg), "--check-config"]
    with open("/dev/full", "w") as full:
        r = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                           timeout=60)
    assert r.returncode == 1
    assert r.stderr == "recmgd: cannot write the output: No space left on device\n"
    rfd, wfd = os.pipe()
    os.close(rfd)
    try:
        r = subprocess.run(argv, stdout=wfd, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=60)
    finally:
        os.close(wfd)
    assert r.returncode == 0 and r.stderr == ""
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout == f"recmgd: {cfg}: configuration is valid\n" and r.stderr == ""


def test_a_pool_section_must_name_a_listed_pool() -> None:
    """With a list of pools, [pool.NAME] for a pool not in it (a typo) is refused, naming the section;
    with pools = "all" (or none given) any pool's section stands, as one of the list's does."""
    msg = err('pools = ["a"]\n[pool.b]\nname = "lfu"\n')
    assert msg == ("/etc/x.toml: pool.b: pool 'b' is not in `pools` (pools = ['a']): add it there, or name "
                   "a listed pool")
    msg = err('pools = ["dlrm0", "dlrm1"]\n[pool.dlrm0]\nname = "lfu"\n[pool.dlrm2.options]\nseed = 1\n')
    assert msg.startswith("/etc/x.toml: pool.dlrm2: pool 'dlrm2' is not in `pools`"), msg
    for text in ('[pool.b]\nname = "lfu"\n', 'pools = "all"\n[pool.b]\nname = "lfu"\n',
                 'pools = ["a", "b"]\n[pool.b]\nname = "lfu"\n'):
        assert config.parse(text, "f").policy_for("b").name == "lfu"


def test_an_empty_pool_list_is_refused() -> None:
    """pools = [] drove no pool at all; the default ("all") is what leaving it out gives."""
    msg = err("pools = []\n")
    assert msg.startswith("/etc/x.toml: pools: impossible value []"), msg
    assert 'omit `pools` for its default, "all"' in msg
    assert config.parse("", "f").pools is None


RETRAIN = '[policy]\nname = "recmg"\nretrain_every = "1h"\n'


def test_a_state_dir_that_is_not_a_directory_is_refused_when_used(tmp_path: Path) -> None:
    """When a policy retrains (in [policy] or a pool's section), a state_dir that is a file, or lies
    under one, is refused at load; it failed only at the first retrain ("cannot make .../retrain
    private (mode 0700): Not a directory"). Unused, it is not looked at."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    msg = err(f'state_dir = "{afile}"\n{RETRAIN}')
    assert msg == (f"/etc/x.toml: state_dir: impossible value '{afile}' (exists and is not a directory; "
                   "retraining keeps its windows and models under it)")
    msg = err(f'state_dir = "{afile}/sub/dir"\npools = ["p"]\n[pool.p]\nname = "recmg"\nretrain_every = 60\n')
    assert msg.startswith(f"/etc/x.toml: state_dir: impossible value '{afile}/sub/dir' ({afile} exists and "
                          "is not a directory"), msg
    assert config.parse(f'state_dir = "{afile}"\n', "f").state_dir == str(afile)  # no retraining
    for ok in (tmp_path, tmp_path / "not" / "yet"):  # a directory, or one the retrainer will make
        assert config.parse(f'state_dir = "{ok}"\n{RETRAIN}', "f").state_dir == str(ok)


def test_check_config_and_start_refuse_these(tmp_path: Path) -> None:
    """`recmgd --check-config` and a start say so on one line, exit 1; the start leaves no socket."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    sock = tmp_path / "c.sock"
    cases = (('pools = ["a"]', '[pool.b]\nname = "lfu"', "pool.b: pool 'b' is not in `pools`"),
             ("pools = []", "", "pools: impossible value []"),
             (f'state_dir = "{afile}"', RETRAIN, "state_dir: impossible value"))
    for top, tables, expect in cases:
        cfg = tmp_path / "x.toml"
        cfg.write_text(f'{top}\n[control]\nsocket = "{sock}"\n{tables}\n')
        for extra in (["--check-config"], ["--foreground"]):
            r = subprocess.run([sys.executable, "-m", "recmgd.cli.recmgd_main", "--config", str(cfg), *extra],
                               capture_output=True, text=True, timeout=60, cwd=REPO)
            assert r.returncode == 1, (top, extra, r.stderr)
            assert r.stderr.startswith(f"recmgd: error: {cfg}: {expect}"), (top, r.stderr)
            assert len(r.stderr.splitlines()) == 1 and r.stdout == ""
            assert not sock.exists()
