"""The daemon's configuration: TOML, decoded strictly into typed dataclasses.

Every problem (a syntax error, an unknown key, a value of the wrong type, an impossible value) is a
:class:`~recmgd.errors.ConfigError` whose message is one line: ``FILE: KEY: PROBLEM``.

Layout (every key optional). Defaults: see the dataclasses below, the one home of them (the decoder
takes its defaults from their fields), and ``systemd/recmgd.toml.example``, which shows every key with
its default and what it does.

- the top level: :class:`Config` (log level, loop tick, which pools and whose, fill caps, ring drain and
  coalescing, early admission, systemd status and app checks, plugins, ``state_dir``);
- ``[control]``: :class:`ControlConfig` (recmgctl's socket: path, permission bits, longest request,
  group);
- ``[metrics]``: :class:`MetricsConfig` (``listen``: where Prometheus text is served; empty = off);
- ``[policy]``: :class:`PolicyConfig`, the default for every pool (policy name, ``model_dir``, hint
  slots and pinning, ``mode`` rows or pages, retraining); ``[policy.options]``: the keys of
  :data:`POLICY_OPTIONS`;
- ``[pages]``: :class:`PagesConfig` (page mode: pools with ``mode = "pages"`` and a ``numa:N`` slow
  tier);
- ``[pool.NAME]``: per-pool overrides of ``[policy]``; ``[pool.NAME.pages]``: of ``[pages]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recmgd.errors import ConfigError, RecmgError
from recmgd.keys import PAGE_BYTES
from recmgd.policy import MAX_REGION

DEFAULT_PATH = "/etc/recmgd/recmgd.toml"
DEFAULT_SOCKET = "/run/recmgd/control.sock"
DEFAULT_STATE_DIR = "/var/lib/recmgd"
#: units of a duration such as retrain_every = "30m"
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
LOG_LEVELS = ("debug", "info", "warning", "error")

# The driver's common policy options (docs/ARCHITECTURE.md, Policy interface) and their checks.
POLICY_OPTIONS: dict[str, tuple[type, float, float | None]] = {
    # name: (type, minimum, maximum or None)
    "prefetch_budget": (int, 0, 1 << 24),
    "seed": (int, 0, (1 << 63) - 1),
    "threads": (int, 1, 1024),
    "epochs": (int, 1, 1 << 20),
    "region": (int, 1, MAX_REGION),
    "history_window": (int, 0, 1 << 40),  # learned policies: recency window in steps (0: unbounded)
    # recmg's prefetcher throttling (recmgd.models.policies.RecMGPolicy)
    "prefetch_min_accuracy": (float, 0.0, 1.0),
    "prefetch_throttled_probe": (int, 1, 1 << 20),
}

#: a key shown as it is in messages; any other is shown quoted and escaped (a message stays one line)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: characters no name or string value may hold: C0 and C1 controls, DEL, the Unicode line separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def show_key(key: str) -> str:
    """A key (or a pool name used as one) as a message shows it: bare, or quoted with escapes."""
    return key if _BARE_KEY.fullmatch(key) else repr(key)


def show(value: object, limit: int = 240) -> str:
    """A value as a message shows it: on one line, and short (a huge integer by its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: limit - 5] + "[...]" + (text[-1] if isinstance(value, str) else "")
    return text


def one_line(text: str) -> str:
    """text with its control characters escaped (a newline as \\n): a message that stays one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def control_character(text: str) -> bool:
    """Whether text holds a control character (NUL, newline, ...), which no name or value may hold."""
    return _CONTROL.search(text) is not None


def pool_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a pool's name (None when it can)."""
    if not name:
        return "an empty name"
    if control_character(name):
        return "a pool name has no control character"
    if "/" in name:  # (the library takes a leading '/' and drops it: the daemon names pools without)
        return "a pool name has no '/'"
    from recmgd.pool import name_problem  # (the library's rule, asked of it)

    return name_problem(name)


#: what the daemon moves: rows into the fast tier's slots, or whole pages of a NUMA slow tier
MODES = ("rows", "pages")
NODE_DIR = "/sys/devices/system/node"


@dataclass(frozen=True)
class PagesConfig:
    """Page mode of one pool (DESIGN.md, "Page mode"): where pages go, how many, how fast."""

    fast_node: int = 0
    budget_mb: float = 1024.0
    mb_per_s: float = 100.0
    batch: int = 1024
    busy_retries: int = 3
    node_sample_pages: int = 65536

    @property
    def budget_pages(self) -> int:
        """Pages the promoted pages of one pool may take (budget_mb in 10^6 bytes, whole pages)."""
        return int(round(self.budget_mb * 1e6)) // PAGE_BYTES


@dataclass(frozen=True)
class PolicyConfig:
    """The policy that drives one pool, and what it moves (``mode``)."""

    name: str = "lru"
    model_dir: str | None = None
    hint_slots: int = 0
    hint_pin_batches: int = 2  # batches a hinted row stays pinned unless a later batch reads it first
    options: Mapping[str, int] = field(default_factory=dict)
    mode: str = "rows"
    pages: PagesConfig = field(default_factory=PagesConfig)
    retrain_every: float = 0.0  # seconds between retrains (recmgd.daemon.retrain); 0 = off
    retrain_window: int = 2_000_000  # lookups of the rolling window retrains train and score on
    retrain_threads: int = 1  # torch threads of the trainer process

    def create_options(self) -> dict[str, object]:
        """Keyword arguments for :func:`recmgd.policy.create`."""
        opts: dict[str, object] = dict(self.options)
        opts["model_dir"] = self.model_dir
        return opts


@dataclass(frozen=True)
class ControlConfig:
    socket: str = DEFAULT_SOCKET
    mode: int = 0o660
    max_request: int = 65536
    group: str = ""  # the socket's group ("" = the daemon's)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # "" = off

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port), or None when metrics are off."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration; ``path`` is the file it came from (or "<defaults>")."""

    path: str = "<defaults>"
    log_level: str = "info"
    interval: float = 0.01
    step_mode: bool = False
    pools: tuple[str, ...] | None = None  # None = every pool that registers
    fill_rows_per_s: int = 0
    fill_mb_per_s: float = 0.0
    max_drain: int = 262144  # records a tick from all of a pool's rings together (the drain budget)
    coalesce: int = 0
    early_admit: bool = True
    status_interval: float = 2.0
    app_check_interval: float = 0.5
    plugins: tuple[str, ...] = ()
    state_dir: str = DEFAULT_STATE_DIR  # retraining's windows and checkpoints (under retrain/POOL/)
    serve_users: tuple[str, ...] = ()  # pool owners served besides the daemon's own user
    serve_groups: tuple[str, ...] = ()  # pool groups served besides the daemon's own group
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    pool_policies: Mapping[str, PolicyConfig] = field(default_factory=dict)
    pages: PagesConfig = field(default_factory=PagesConfig)

    def policy_for(self, pool: str) -> PolicyConfig:
        """The policy configuration of one pool (its [pool.NAME] section, or the default)."""
        return self.pool_policies.get(pool, self.policy)

    def manages(self, pool: str) -> bool:
        """Whether this configuration asks the daemon to manage the named pool."""
        return self.pools is None or pool in self.pools

    def served_ids(self) -> tuple[frozenset[int], frozenset[int]]:
        """(uids, gids) whose pools the daemon serves: its own and the configured ones."""
        import grp
        import pwd

        uids = {os.geteuid()}
        gids = {os.getegid()}
        for user in self.serve_users:
            try:
                uids.add(pwd.getpwnam(user).pw_uid)
            except KeyError:  # removed since the load: serve nothing more for it
                pass
        for group in self.serve_groups:
            try:
                gids.add(grp.getgrnam(group).gr_gid)
            except KeyError:
                pass
        return frozenset(uids), frozenset(gids)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


class _Decoder:
    """Checks one parsed TOML document against the schema; every error names file and key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    @staticmethod
    def _typename(value: object) -> str:
        return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                list: "an array", dict: "a table"}.get(type(value), type(value).__name__)

    def check_keys(self, table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(prefix + show_key(key), f"unknown key (known: {known})")

    def boolean(self, table: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(prefix + key, f"expected a boolean, got {self._typename(value)}")
        return value

    def integer(self, table: Mapping[str, Any], key: str, prefix: str, default: int,
                lo: int, hi: int | None = None) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(prefix + key, f"expected an integer, got {self._typename(value)}")
        if value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise self.fail(prefix + key, f"impossible value {show(value)} (must be {rng})")
        return value

    def number(self, table: Mapping[str, Any], key: str, prefix: str, default: float,
               lo: float, hi: float | None = None, lo_open: bool = False) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(prefix + key, f"expected a number, got {self._typename(value)}")
        rng = (f"> {lo}" if lo_open else f">= {lo}") + ("" if hi is None else f" and <= {hi}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            raise self.fail(prefix + key, f"impossible value {show(value)} (must be {rng})") from None
        bad = value != value or value < lo or (lo_open and value == lo) or (hi is not None and value > hi)
        if bad:
            raise self.fail(prefix + key, f"impossible value {value} (must be {rng})")
        return value

    def string(self, table: Mapping[str, Any], key: str, prefix: str, default: str) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise self.fail(prefix + key, f"expected a string, got {self._typename(value)}")
        if control_character(value):
            raise self.fail(prefix + key, f"impossible value {show(value)} (contains a control character: "
                            "a NUL, a newline, ...)")
        return value

    def duration(self, table: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        """Seconds, written as a number or a string like "90s", "30m", "2h", "1d" (0 = off)."""
        value = table.get(key, default)
        if isinstance(value, str):
            text = value.strip()
            unit = DURATION_UNITS.get(text[-1:]) if text else None
            try:
                seconds = float(text[:-1]) * unit if unit else float(text)
            except (ValueError, OverflowError):
                seconds = -1.0
            if not seconds >= 0 or seconds > 1e9:
                raise self.fail(prefix + key, f"impossible value {show(value)} (a duration like \"30m\", "
                                "\"2h\" or seconds; 0 = off)")
            return seconds
        return self.number(table, key, prefix, default, 0.0, 1e9)

    def table(self, doc: Mapping[str, Any], key: str, prefix: str) -> Mapping[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(prefix + key, f"expected a table, got {self._typename(value)}")
        return value

    def string_list(self, table: Mapping[str, Any], key: str, prefix: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(prefix + key, "expected an array of strings")
        for v in value:
            if control_character(v):
                raise self.fail(prefix + key, f"impossible value {show(v)} (contains a control character: "
                                "a NUL, a newline, ...)")
        return tuple(value)

    def names(self, table: Mapping[str, Any], key: str, prefix: str, kind: str) -> tuple[str, ...]:
        """An array of existing user (kind "user") or group names."""
        import grp
        import pwd

        values = self.string_list(table, key, prefix)
        lookup = pwd.getpwnam if kind == "user" else grp.getgrnam
        for v in values:
            try:
                lookup(v)
            except KeyError:
                raise self.fail(prefix + key, f"impossible value {show(v)} (no such {kind})") from None
        return values

    # -- sections ---------------------------------------------------------------------------------

    def pages(self, t: Mapping[str, Any], prefix: str, base: PagesConfig) -> PagesConfig:
        self.check_keys(t, {"fast_node", "budget_mb", "mb_per_s", "batch", "busy_retries",
                            "node_sample_pages"}, prefix)
        fast_node = self.integer(t, "fast_node", prefix, base.fast_node, 0, 1023)
        if "fast_node" in t and not os.path.isdir(os.path.join(NODE_DIR, f"node{fast_node}")):
            raise self.fail(prefix + "fast_node",
                            f"impossible value {fast_node} (no NUMA node {fast_node} on this machine)")
        budget_mb = self.number(t, "budget_mb", prefix, base.budget_mb, 0.0, 1e9, lo_open=True)
        if int(round(budget_mb * 1e6)) < PAGE_BYTES:
            raise self.fail(prefix + "budget_mb",
                            f"impossible value {budget_mb} (less than one page of {PAGE_BYTES} bytes)")
        return PagesConfig(
            fast_node=fast_node,
            budget_mb=budget_mb,
            mb_per_s=self.number(t, "mb_per_s", prefix, base.mb_per_s, 0.0, 1e9),
            batch=self.integer(t, "batch", prefix, base.batch, 1, 1 << 20),
            busy_retries=self.integer(t, "busy_retries", prefix, base.busy_retries, 0, 100),
            node_sample_pages=self.integer(t, "node_sample_pages", prefix, base.node_sample_pages,
                                           0, 1 << 32),
        )

    def policy(self, t: Mapping[str, Any], prefix: str, base: PolicyConfig,
               pages_ok: bool = False) -> PolicyConfig:
        allowed = ({"name", "model_dir", "hint_slots", "hint_pin_batches", "options", "mode", "retrain_every",
                    "retrain_window", "retrain_threads"} | ({"pages"} if pages_ok else set()))
        self.check_keys(t, allowed, prefix)
        name = self.string(t, "name", prefix, base.name)
        if not name:
            raise self.fail(prefix + "name", "impossible value (empty policy name)")
        model_dir_s = self.string(t, "model_dir", prefix, base.model_dir or "")
        model_dir = model_dir_s or None
        if model_dir is not None and not os.path.isabs(model_dir):
            raise self.fail(prefix + "model_dir",
                            f"impossible value {show(model_dir)} (must be an absolute path)")
        hint_slots = self.integer(t, "hint_slots", prefix, base.hint_slots, 0, 1 << 40)
        hint_pin_batches = self.integer(t, "hint_pin_batches", prefix, base.hint_pin_batches, 0, 1 << 20)
        opts_t = self.table(t, "options", prefix)
        oprefix = prefix + "options."
        self.check_keys(opts_t, set(POLICY_OPTIONS), oprefix)
        options = dict(base.options)
        for key in opts_t:
            typ, lo, hi = POLICY_OPTIONS[key]
            if typ is float:
                options[key] = self.number(opts_t, key, oprefix, 0.0, lo, hi)
            else:
                options[key] = self.integer(opts_t, key, oprefix, 0, int(lo), None if hi is None else int(hi))
        mode = self.string(t, "mode", prefix, base.mode)
        if mode not in MODES:
            raise self.fail(prefix + "mode", f"impossible value {show(mode)} (one of {', '.join(MODES)})")
        pages = base.pages
        if "pages" in t:
            pages = self.pages(self.table(t, "pages", prefix), prefix + "pages.", base.pages)
        retrain_every = self.duration(t, "retrain_every", prefix, base.retrain_every)
        if retrain_every and mode == "pages":
            raise self.fail(prefix + "retrain_every", "retraining is for row mode (mode = \"rows\")")
        if retrain_every and 0 < retrain_every < 1.0:
            raise self.fail(prefix + "retrain_every", f"impossible value {retrain_every} (at least 1 s)")
        return PolicyConfig(name=name, model_dir=model_dir, hint_slots=hint_slots,
                            hint_pin_batches=hint_pin_batches, options=options,
                            mode=mode, pages=pages, retrain_every=retrain_every,
                            retrain_window=self.integer(t, "retrain_window", prefix, base.retrain_window,
                                                        1000, 1 << 34),
                            retrain_threads=self.integer(t, "retrain_threads", prefix, base.retrain_threads,
                                                         1, 256))

    def control(self, t: Mapping[str, Any]) -> ControlConfig:
        p = "control."
        self.check_keys(t, {"socket", "mode", "max_request", "group"}, p)
        d = ControlConfig()  # the defaults
        sock = self.string(t, "socket", p, d.socket)
        if not os.path.isabs(sock):
            raise self.fail(p + "socket", f"impossible value {show(sock)} (must be an absolute path)")
        if len(os.fsencode(sock)) > 107:
            raise self.fail(p + "socket", "impossible value (a Unix socket path is at most 107 bytes)")
        raw = t.get("mode", d.mode)
        if isinstance(raw, str):
            try:
                mode = int(raw, 8)
            except ValueError:
                raise self.fail(p + "mode",
                                f"impossible value {show(raw)} (an octal mode like 0660)") from None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            mode = raw
        else:
            raise self.fail(p + "mode",
                            f"expected an integer (0o660) or an octal string, got {self._typename(raw)}")
        if not 0 <= mode <= 0o777:
            shown = oct(mode) if mode.bit_length() <= 200 else show(mode)
            raise self.fail(p + "mode", f"impossible value {shown} (permission bits 0o000..0o777)")
        if not mode & 0o600 == 0o600:
            raise self.fail(p + "mode", f"impossible value {oct(mode)} (the owner needs read and write)")
        max_request = self.integer(t, "max_request", p, d.max_request, 256, 1 << 24)
        group = self.string(t, "group", p, d.group)
        if group:
            import grp

            try:
                grp.getgrnam(group)
            except KeyError:
                raise self.fail(p + "group", f"impossible value {show(group)} (no such group)") from None
        return ControlConfig(socket=sock, mode=mode, max_request=max_request, group=group)

    def metrics(self, t: Mapping[str, Any]) -> MetricsConfig:
        p = "metrics."
        self.check_keys(t, {"listen"}, p)
        listen = self.string(t, "listen", p, MetricsConfig().listen)
        if listen:
            host, sep, port_s = listen.rpartition(":")
            problem = None
            if not sep or not host:
                problem = "expected HOST:PORT"
            elif not port_s.isdigit() or not 0 < int(port_s) < 65536:
                problem = f"port {port_s!r} is not in 1..65535"
            else:
                try:
                    ipaddress.ip_address(host.strip("[]"))
                except ValueError:
                    if host != "localhost":
                        problem = f"host {host!r} is not an IP address"
            if problem:
                raise self.fail(p + "listen", f"impossible value {show(listen)} ({problem})")
        return MetricsConfig(listen=listen)

    def state_dir(self, doc: Mapping[str, Any], default: str) -> str:
        value = self.string(doc, "state_dir", "", default)
        if not os.path.isabs(value):
            raise self.fail("state_dir", f"impossible value {show(value)} (must be an absolute path)")
        return value

    def check_state_dir(self, path: str) -> None:
        """(When retraining uses it.) ``state_dir``, or the nearest of its parents that exists, is a
        directory: a regular file there would fail only at the first retrain, when the directory
        is made."""
        up = path
        while True:
            try:
                st = os.stat(up)
                break
            except (FileNotFoundError, NotADirectoryError):  # (a file above it: found further up)
                parent = os.path.dirname(up)
                if parent == up:
                    return
                up = parent
            except OSError:  # no permission to look (--check-config run by another user): the daemon's
                return
        if not stat.S_ISDIR(st.st_mode):
            where = "exists" if up == path else f"{up} exists"
            raise self.fail("state_dir", f"impossible value {show(path)} ({where} and is not a directory; "
                            "retraining keeps its windows and models under it)")

    def document(self, doc: Mapping[str, Any]) -> Config:
        top = {"log_level", "interval", "step_mode", "pools", "fill_rows_per_s", "fill_mb_per_s",
               "max_drain", "coalesce", "early_admit", "status_interval", "app_check_interval", "plugins",
               "serve_users", "serve_groups", "control", "metrics", "policy", "pool", "pages", "state_dir"}
        self.check_keys(doc, top, "")
        d = Config()  # the defaults
        log_level = self.string(doc, "log_level", "", d.log_level).lower()
        if log_level not in LOG_LEVELS:
            raise self.fail("log_level",
                            f"impossible value {show(log_level)} (one of {', '.join(LOG_LEVELS)})")
        raw_pools = doc.get("pools", "all")
        if raw_pools == "all":
            pools: tuple[str, ...] | None = None
        elif raw_pools == []:
            raise self.fail("pools", 'impossible value [] (no pool to drive; omit `pools` for its default, '
                            '"all": every pool that appears)')
        elif isinstance(raw_pools, list) and all(isinstance(v, str) and v for v in raw_pools):
            pools = tuple(raw_pools)
            for name in pools:
                problem = pool_name_problem(name)
                if problem:
                    raise self.fail("pools", f"impossible value {show(name)} ({problem})")
            if len(set(pools)) != len(pools):
                raise self.fail("pools", "impossible value (a pool is named twice)")
        else:
            raise self.fail("pools", '"all" or an array of pool names expected')
        pages = self.pages(self.table(doc, "pages", ""), "pages.", PagesConfig())
        policy = self.policy(self.table(doc, "policy", ""), "policy.", PolicyConfig(pages=pages))
        pool_t = self.table(doc, "pool", "")
        pool_policies: dict[str, PolicyConfig] = {}
        for name, sect in pool_t.items():
            where = f"pool.{show_key(name)}"
            if not isinstance(sect, dict):
                raise self.fail(where, f"expected a table, got {self._typename(sect)}")
            problem = pool_name_problem(name)
            if problem:
                raise self.fail(where, f"impossible pool name ({problem})")
            if pools is not None and name not in pools:  # a typo: its pool would run [policy] unnoticed
                raise self.fail(where, f"pool {show(name)} is not in `pools` (pools = {show(list(pools))}): "
                                "add it there, or name a listed pool")
            pool_policies[name] = self.policy(sect, where + ".", policy, pages_ok=True)
        state_dir = self.state_dir(doc, d.state_dir)
        if any(pc.retrain_every for pc in (policy, *pool_policies.values())):
            self.check_state_dir(state_dir)
        return Config(
            path=self.path,
            log_level=log_level,
            interval=self.number(doc, "interval", "", d.interval, 0.0, 60.0, lo_open=True),
            step_mode=self.boolean(doc, "step_mode", "", d.step_mode),
            pools=pools,
            fill_rows_per_s=self.integer(doc, "fill_rows_per_s", "", d.fill_rows_per_s, 0),
            fill_mb_per_s=self.number(doc, "fill_mb_per_s", "", d.fill_mb_per_s, 0.0),
            max_drain=self.integer(doc, "max_drain", "", d.max_drain, 1, 1 << 30),
            coalesce=self.integer(doc, "coalesce", "", d.coalesce, 0, 1 << 30),
            early_admit=self.boolean(doc, "early_admit", "", d.early_admit),
            status_interval=self.number(doc, "status_interval", "", d.status_interval, 0.0, 3600.0,
                                        lo_open=True),
            app_check_interval=self.number(doc, "app_check_interval", "", d.app_check_interval, 0.0, 3600.0,
                                           lo_open=True),
            plugins=self.string_list(doc, "plugins", ""),
            state_dir=state_dir,
            serve_users=self.names(doc, "serve_users", "", "user"),
            serve_groups=self.names(doc, "serve_groups", "", "group"),
            control=self.control(self.table(doc, "control", "")),
            metrics=self.metrics(self.table(doc, "metrics", "")),
            policy=policy,
            pool_policies=pool_policies,
            pages=pages,
        )


#: tomllib's messages for a key defined twice, which name neither the key nor its line
_TWICE = ("Cannot overwrite a value", "Cannot mutate immutable namespace")
#: the longest document searched for the line of a key defined twice (a prefix parsed per line)
_TWICE_SCAN_LINES = 500


def _defined_twice(text: str) -> str:
    """Where a key is defined twice: the first line whose prefix of the document tomllib refuses so."""
    lines = text.splitlines()
    if len(lines) <= _TWICE_SCAN_LINES:
        for n in range(1, len(lines) + 1):
            try:
                tomllib.loads("\n".join(lines[:n]))
            except tomllib.TOMLDecodeError as exc:
                if str(exc).startswith(_TWICE):
                    return f"line {n}: a key is defined twice ({show(lines[n - 1].strip())})"
            except RecursionError:
                break
    return "a key is defined twice"


def parse(text: str, path: str = "<string>") -> Config:
    """Decode a configuration from TOML text; ``path`` names it in error messages. Every problem is a
    ConfigError of one line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        if msg.startswith(_TWICE) and "(at end of document)" in msg:
            msg = _defined_twice(text)
        raise ConfigError(f"{path}: (syntax): {one_line(msg)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: (syntax): arrays or tables nested too deeply") from None
    except ValueError:  # int() of more digits than sys.get_int_max_str_digits()
        raise ConfigError(f"{path}: (syntax): an integer has too many digits") from None
    except Exception as exc:  # noqa: BLE001 - whatever else the parser raises: one line
        why = one_line(f"{type(exc).__name__}: {exc}")
        raise ConfigError(f"{path}: (syntax): {why}") from None
    try:
        return _Decoder(path).document(doc)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{path}: (value): arrays or tables nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - a value no check foresaw: still one line, never a traceback
        why = one_line(f"{type(exc).__name__}: {exc}")
        raise ConfigError(f"{path}: (value): cannot decode: {why}") from None


def load(path: str | None = None, *, missing_ok: bool = False) -> Config:
    """Read and decode the configuration file (:data:`DEFAULT_PATH` by default).

    With ``missing_ok``, a missing file gives the defaults (the daemon runs with the built-in
    configuration when none is installed); any other read problem is a ConfigError.
    """
    path = path or DEFAULT_PATH
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        if missing_ok:
            return Config(path=f"{path} (missing, defaults)")
        raise ConfigError(f"{path}: (file): no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: (file): cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # (an editor's byte-order mark)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: (file): not UTF-8 text at byte {exc.start}") from None
    return parse(text, path)


def validate_policies(cfg: Config) -> None:
    """Check that every configured policy name is registered (after importing the plugins)."""
    import importlib

    from recmgd import policy as policy_mod

    for mod in cfg.plugins:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # noqa: BLE001 - any import failure is a config problem
            why = one_line(str(exc))
            raise ConfigError(f"{cfg.path}: plugins: cannot import {show(mod)}: {why}") from None
    entries = [("policy.name", cfg.policy)] + [(f"pool.{show_key(n)}.name", p)
                                               for n, p in cfg.pool_policies.items()]
    unknown = set(policy_mod.unknown([pc.name for _, pc in entries]))  # loads only what it must
    for key, pc in entries:
        if pc.name in unknown:
            known = policy_mod.available()
            raise ConfigError(f"{cfg.path}: {key}: unknown policy {pc.name!r} "
                              f"(known: {', '.join(known) or 'none registered'})")
        if pc.retrain_every and not policy_mod.is_learned(pc.name):
            where = key.rsplit(".", 1)[0]
            raise ConfigError(f"{cfg.path}: {where}.retrain_every: policy {pc.name!r} is not a learned one "
                              "(retraining trains recmg, recmg-cache, ... models)")


def check_models(cfg: Config, *, load: bool = True) -> None:
    """Check that every learned policy of the configuration has a checkpoint to run: ``model_dir`` set
    (unless it retrains: LRU until its first retrain), an existing directory holding a checkpoint, and
    (with ``load``) one that loads for the section's mode. A ConfigError of one line names the key."""
    from recmgd import policy as policy_mod

    entries = [("policy", cfg.policy)] + [(f"pool.{show_key(n)}", p) for n, p in cfg.pool_policies.items()]
    for where, pc in entries:
        if not policy_mod.is_learned(pc.name):
            continue
        key = f"{cfg.path}: {where}.model_dir"
        if pc.model_dir is None:
            if pc.retrain_every:
                continue  # LRU until the first retrain (recmgd.daemon.retrain.starting_policy)
            raise ConfigError(f"{key}: policy {show(pc.name)} needs a checkpoint (set model_dir to a "
                              "directory made by `recmg train`)")
        if not os.path.isdir(pc.model_dir):
            raise ConfigError(f"{key}: impossible value {show(pc.model_dir)} (no such directory)")
        if not os.path.isfile(os.path.join(pc.model_dir, "config.json")):
            raise ConfigError(f"{key}: impossible value {show(pc.model_dir)} (holds no checkpoint: no "
                              "config.json; make one with `recmg train`)")
        if load:
            from recmgd.daemon.step import create_policy

            try:
                create_policy(pc.name, pc.create_options(), mode=pc.mode)
            except RecmgError as exc:
                raise ConfigError(f"{key}: {one_line(str(exc))}") from None
            except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint may fail in any way
                raise ConfigError(f"{key}: {show(pc.model_dir)} does not load: {type(exc).__name__}: "
                                  f"{one_line(str(exc))}") from None
