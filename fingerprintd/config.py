"""Service configuration: embedded defaults, a TOML file, then command-line flags.

Every option is declared once, in OPTIONS: its name (the attribute of Config
and the key in its file section), section, kind, default and help.  The
Config class, the file's type checks, the `serve` flags, the example file
(contrib/fingerprintd.toml) and the README's option table all come from that
list (tests/test_config.py checks the last two are current); adding an
option is one line there.  Run `python -m fingerprintd.config toml` or
`... markdown` to print the example file or the table.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fingerprintd.tomlfile import Located, TomlError

ConfigError = TomlError

# What a value may be in the file, and how a flag's text becomes one (lists: one item per use of the flag).
_KINDS = {
    "str": (lambda v: isinstance(v, str), str, "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), int, "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), float, "a number"),
    "bool": (lambda v: isinstance(v, bool), None, "true or false"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), str, "a list of strings"),
    "list[int]": (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
                  int, "a list of integers"),
}


@dataclass(frozen=True)
class Option:
    name: str  # Config attribute and file key
    section: str
    kind: str  # a key of _KINDS
    default: object
    help: str
    flag: str = ""  # default: --name-with-dashes
    metavar: str = ""
    minimum: float | None = None  # values below are refused
    choices: tuple[str, ...] = ()
    short: str = ""

    @property
    def flags(self) -> list[str]:
        return [self.flag or "--" + self.name.replace("_", "-"), *([self.short] if self.short else [])]


OPTIONS: tuple[Option, ...] = (
    Option("interfaces", "capture", "list[str]", ["any"], "capture on this interface, repeatable ('any': all)",
      "--interface", "IFACE", short="-i"),
    Option("ports", "capture", "list[int]", [25], "watched server port, repeatable (add 587, 465 for submission)",
      "--port", "N"),
    Option("snaplen", "capture", "int", 256, "bytes captured per packet", metavar="BYTES", minimum=96),
    Option("buffer_mb", "capture", "int", 32, "kernel capture ring per interface, MiB (room for Python pauses)",
      metavar="MIB", minimum=1),
    Option("timeout_ms", "capture", "int", 1, "longest a captured SYN waits in the kernel ring (filters ask within ms)",
      metavar="MS", minimum=1),
    Option("p0f_bugs", "capture", "bool", False, "reproduce p0f 3.09b's known bugs"),
    Option("listen", "api", "list[str]", ["127.0.0.1:50051"], "gRPC address, HOST:PORT or unix:PATH, repeatable",
      "--grpc", "ADDR"),
    Option("token", "api", "str", "", "require 'authorization: Bearer TOKEN' on API calls (empty: none)",
      metavar="SECRET"),
    Option("tls_cert", "api", "str", "", "TLS certificate, PEM (with tls_key; empty: no TLS)", metavar="PEM"),
    Option("tls_key", "api", "str", "", "TLS private key, PEM", metavar="PEM"),
    Option("max_batch", "api", "int", 1000, "most queries in one LookupBatch", metavar="N", minimum=1),
    Option("max_wait_ms", "api", "int", 5000, "longest wait_ms a Lookup may ask for", metavar="MS", minimum=0),
    Option("api_waits", "api", "int", 8192, "Lookups waiting for a SYN, all clients (RESOURCE_EXHAUSTED beyond)",
           metavar="N", minimum=1),
    Option("api_waits_per_client", "api", "int", 2048, "waiting Lookups per client address (unix: one client)",
           metavar="N", minimum=1),
    Option("api_streams", "api", "int", 1024, "Watch streams open, all clients", metavar="N", minimum=1),
    Option("api_streams_per_client", "api", "int", 64, "Watch streams per client address", metavar="N", minimum=1),
    Option("watch_queue", "api", "int", 1000, "observations buffered per Watch stream; a slow reader loses the rest",
           metavar="N", minimum=1),
    Option("watch_rate", "api", "int", 5000, "Watch messages sent a second, all streams together", metavar="N",
           minimum=1),
    Option("metrics", "api", "str", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)",
      metavar="HOST:PORT"),
    Option("p0f_socket", "compat", "str", "", "p0f v3 API unix socket for rspamd, Haraka, ... (empty: off)",
      metavar="PATH"),
    Option("p0f_socket_mode", "compat", "str", "0660", "the p0f socket's file mode", metavar="OCTAL"),
    Option("p0f_socket_owner", "compat", "str", "", "USER[:GROUP] owning the p0f socket", metavar="USER[:GROUP]"),
    Option("p0f_socket_max_connections", "compat", "int", 1024,
           "p0f socket clients at once; more are accepted and closed at once", metavar="N", minimum=1),
    Option("p0f_socket_idle_timeout", "compat", "float", 30.0, "close a p0f socket client silent this long",
           metavar="SECONDS", minimum=0.1),
    Option("p0f_socket_max_pending", "compat", "int", 64,
           "answers waiting for a p0f socket client before it is no longer read", metavar="N", minimum=1),
    Option("analyzer_udp", "compat", "str", "", "p0f-analyzer UDP for amavisd-new, e.g. 127.0.0.1:2345 (empty: off)",
      metavar="HOST:PORT"),
    Option("analyzer_allow", "compat", "list[str]", ["127.0.0.0/8", "::1/128"],
      "networks the analyzer answers, repeatable", metavar="CIDR"),
    Option("analyzer_max_inflight", "compat", "int", 256,
           "p0f-analyzer datagrams answered at once; more are dropped and counted", metavar="N", minimum=1),
    Option("log_file", "compat", "str", "", "p0f -o format log of every observation, reopened on SIGHUP (empty: off)",
      "--log", "FILE"),
    Option("max_connections", "table", "int", 1_000_000, "SYNs remembered by (client ip, client port)", metavar="N",
      minimum=1),
    Option("max_hosts", "table", "int", 1_000_000, "client addresses with history", metavar="N", minimum=1),
    Option("ttl_seconds", "table", "float", 600.0, "how long SYNs are remembered", "--ttl", "SECONDS"),
    Option("signatures", "files", "str", "", "signature database (empty: the bundled one)", metavar="PATH"),
    Option("policy", "files", "str", "", "policy rules (empty: the bundled signatures/policy.toml)", metavar="PATH"),
    Option("classes", "files", "str", "", "mail classes by label (empty: the bundled signatures/classes.toml)",
      metavar="PATH"),
    Option("reputation", "files", "str", "", "what was learned from outcomes, an SQLite file (empty: no learning)",
           metavar="PATH"),
    Option("redis_url", "redis", "str", "", "publish every observation to this Redis and look up local misses there: "
      "redis://[USER:PASSWORD@]HOST:PORT/DB, rediss:// (TLS) or unix:///PATH (empty: off)", "--redis", "URL"),
    Option("redis_password_file", "redis", "str", "", "file whose first line is the Redis password (instead of the "
      "URL's)", metavar="PATH"),
    Option("redis_rspamd_prefix", "redis", "str", "", "also write rspamd's p0f keys, PREFIX<ip> = the 232-byte p0f "
      "answer (rspamd's default prefix: p0f; empty: off)", metavar="PREFIX"),
    Option("redis_reputation", "redis", "bool", False, "keep what is learned from outcomes in Redis, shared by "
      "every host (a --reputation file is then not used)"),
    Option("redis_queue", "redis", "int", 100_000, "observations held for Redis while it is down or slow; more are "
      "dropped and counted", metavar="N", minimum=1),
    Option("user", "daemon", "str", "", "drop to this user once the capture is open", metavar="NAME"),
    Option("log_level", "daemon", "str", "info", "log level", choices=("debug", "info", "warning", "error")),
)
BY_NAME = {o.name: o for o in OPTIONS}
SECTIONS: dict[str, tuple[str, ...]] = {}
for _o in OPTIONS:
    SECTIONS.setdefault(_o.section, ())
    SECTIONS[_o.section] += (_o.name,)


def _field(opt: Option):
    value = opt.default
    if isinstance(value, list):
        return field(default_factory=lambda: list(value))
    return field(default=value)


Config = make_dataclass("Config", [(o.name, o.kind, _field(o)) for o in OPTIONS])
Config.__doc__ = "The service's options (see OPTIONS); Config() holds the embedded defaults."
Config.__module__ = __name__


def load_config(path: str | Path, base=None):
    p = Path(path)
    doc = Located(p.read_text(encoding="utf-8"), str(p))
    cfg = base or Config()
    for section, table in doc.data.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise doc.error((section,), None, f"unknown section [{section}] (expected {', '.join(SECTIONS)})")
        for key, value in table.items():
            if key not in SECTIONS[section]:
                raise doc.error((section,), key, f"unknown option {key!r} in [{section}] "
                                                 f"(expected one of {', '.join(SECTIONS[section])})")
            accepts, _, what = _KINDS[BY_NAME[key].kind]
            if not accepts(value):
                raise doc.error((section,), key, f"{key} must be {what}")
            setattr(cfg, key, float(value) if BY_NAME[key].kind == "float" else value)
    check(cfg, doc)
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option; each defaults to None (not given), so the file's value stays."""
    for opt in OPTIONS:
        _, convert, _ = _KINDS[opt.kind]
        shown = _show(opt.default)
        help_text = (opt.help + (f" (default {shown})" if shown else "")).replace("%", "%%")
        kw: dict = {"dest": opt.name, "default": None, "help": help_text}
        if opt.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = convert
            kw["metavar"] = opt.metavar or None
            if opt.kind.startswith("list"):
                kw["action"] = "append"
            if opt.choices:
                kw["choices"] = opt.choices
                kw.pop("metavar")
        parser.add_argument(*opt.flags, **kw)


def apply_arguments(cfg, args: argparse.Namespace) -> None:
    """The flags given on the command line, over the file's values; then the range checks."""
    for opt in OPTIONS:
        value = getattr(args, opt.name)
        if value is not None:
            setattr(cfg, opt.name, value)
    check(cfg)


def check(cfg, doc: Located | None = None) -> None:
    """Range checks; raises ConfigError (located when a file is given)."""

    def fail(key: str, message: str) -> ConfigError:
        if doc is not None:
            return doc.error((BY_NAME[key].section,), key, message)
        return ConfigError("command line", 0, message)

    for opt in OPTIONS:
        if opt.minimum is not None and getattr(cfg, opt.name) < opt.minimum:
            raise fail(opt.name, f"{opt.name} must be at least {opt.minimum:g}")
        if opt.choices and getattr(cfg, opt.name) not in opt.choices:
            raise fail(opt.name, f"{opt.name} must be {', '.join(opt.choices[:-1])} or {opt.choices[-1]}")
    for port in cfg.ports:
        if not 1 <= port <= 65535:
            raise fail("ports", f"port out of range 1..65535: {port}")
    if not cfg.interfaces:
        raise fail("interfaces", "at least one interface is needed ('any' for all)")
    if not cfg.listen:
        raise fail("listen", "at least one API address is needed (HOST:PORT or unix:PATH)")
    if cfg.ttl_seconds <= 0:
        raise fail("ttl_seconds", "ttl_seconds must be positive")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise fail("tls_cert", "tls_cert and tls_key go together")
    if not re.fullmatch(r"0?[0-7]{3}", cfg.p0f_socket_mode):
        raise fail("p0f_socket_mode", "p0f_socket_mode is an octal mode like 0660")
    for key in ("analyzer_udp", "metrics"):
        if getattr(cfg, key) and not _HOST_PORT.fullmatch(getattr(cfg, key)):
            raise fail(key, f"{key} is HOST:PORT, e.g. 127.0.0.1:2345 or [::1]:2345")
    if cfg.redis_url and (why := _redis_url_problem(cfg.redis_url)):
        raise fail("redis_url", why)
    if (cfg.redis_password_file or cfg.redis_rspamd_prefix or cfg.redis_reputation) and not cfg.redis_url:
        raise fail("redis_url", "redis_password_file, redis_rspamd_prefix and redis_reputation need redis_url")
    for net in cfg.analyzer_allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise fail("analyzer_allow", f"not a network: {net!r}") from None


def _redis_url_problem(url: str) -> str:
    """Why a --redis URL will not do, or ''."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"redis_url: {exc}"
    if parts.scheme == "unix":
        return "" if parts.path else "redis_url: unix:// needs a socket path, e.g. unix:///run/redis/redis.sock"
    if parts.scheme not in ("redis", "rediss"):
        return "redis_url must be redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"
    return "" if parts.hostname else "redis_url: no host, e.g. redis://127.0.0.1:6379/0"


_HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):\d{1,5}")


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# --- the docs, from the same declarations ------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value) if not isinstance(value, int) or value < 10_000 else f"{value:_}"


def _show(value: object) -> str:
    """A default as the docs show it; empty for none (an empty string or false: off)."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if value == "" or value is False:
        return ""
    return _toml_value(value).strip('"')


def render_toml() -> str:
    """The example configuration: every option at its default, with its help."""
    out = ["# fingerprintd configuration: every option at its embedded default (this file is generated",
           "# from fingerprintd/config.py: python -m fingerprintd.config toml). Every option is also a",
           "# flag of `fingerprintd serve` (shown after the key); flags win over the file."]
    for section, names in SECTIONS.items():
        out.append("")
        out.append(f"[{section}]")
        for name in names:
            opt = BY_NAME[name]
            out.append(f"# {opt.help} ({opt.flags[0]})")
            out.append(f"{name} = {_toml_value(opt.default)}")
    return "\n".join(out) + "\n"


def render_markdown() -> str:
    """The README's option table."""
    rows = ["| flag | file key | default | meaning |", "| --- | --- | --- | --- |"]
    for opt in OPTIONS:
        flag = " ".join(f"`{f}`" for f in opt.flags)
        arg = "" if opt.kind == "bool" else " " + (opt.metavar or "{" + ",".join(opt.choices) + "}")
        default = _show(opt.default) or ("false" if opt.kind == "bool" else '""')
        rows.append(f"| {flag}{arg} | `[{opt.section}] {opt.name}` | {default} | {opt.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind not in ("toml", "markdown"):
        sys.exit("usage: python -m fingerprintd.config toml|markdown")
    sys.stdout.write(render_toml() if kind == "toml" else render_markdown())
