"""Service configuration: embedded defaults, a TOML file, then command-line flags."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from fingerprintd.tomlfile import Located, TomlError

ConfigError = TomlError


@dataclass
class Config:
    interfaces: list[str] = field(default_factory=lambda: ["any"])
    ports: list[int] = field(default_factory=lambda: [25])
    snaplen: int = 256
    buffer_mb: int = 32  # many small blocks at a 1 ms timeout: room for Python pauses
    timeout_ms: int = 1  # how long a SYN may wait in the kernel ring: filters ask within ms
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:50051"])
    token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_connections: int = 1_000_000
    max_hosts: int = 1_000_000
    ttl_seconds: float = 600.0
    signatures: str = ""  # empty: the bundled database
    policy: str = ""  # empty: the bundled policy
    classes: str = ""  # mail classes by label; empty: the bundled signatures/classes.toml
    user: str = ""
    log_level: str = "info"
    p0f_bugs: bool = False
    max_batch: int = 1000
    max_wait_ms: int = 5000
    p0f_socket: str = ""  # p0f v3 API socket path; empty: off
    p0f_socket_mode: str = "0660"
    p0f_socket_owner: str = ""  # user[:group]
    analyzer_udp: str = ""  # p0f-analyzer HOST:PORT; empty: off
    analyzer_allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    log_file: str = ""  # p0f-format log of every observation; empty: off


# Where each option lives in the file: [section] key.
SECTIONS = {
    "capture": ("interfaces", "ports", "snaplen", "buffer_mb", "timeout_ms", "p0f_bugs"),
    "api": ("listen", "token", "tls_cert", "tls_key", "max_batch", "max_wait_ms"),
    "compat": ("p0f_socket", "p0f_socket_mode", "p0f_socket_owner", "analyzer_udp", "analyzer_allow", "log_file"),
    "table": ("max_connections", "max_hosts", "ttl_seconds"),
    "files": ("signatures", "policy", "classes"),
    "daemon": ("user", "log_level"),
}
_TYPES = {f.name: f.type for f in fields(Config)}


def load_config(path: str | Path, base: Config | None = None) -> Config:
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
            want = _TYPES[key]
            ok = {
                "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
                "list[int]": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in value),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "str": isinstance(value, str),
                "bool": isinstance(value, bool),
            }[want]
            if not ok:
                raise doc.error((section,), key, f"{key} must be {want}")
            setattr(cfg, key, value)
    check(cfg, doc)
    return cfg


def check(cfg: Config, doc: Located | None = None) -> None:
    """Range checks; raises ConfigError (located when a file is given)."""

    def fail(key: str, message: str) -> ConfigError:
        if doc is not None:
            section = next(s for s, keys in SECTIONS.items() if key in keys)
            return doc.error((section,), key, message)
        return ConfigError("command line", 0, message)

    for port in cfg.ports:
        if not 1 <= port <= 65535:
            raise fail("ports", f"port out of range 1..65535: {port}")
    if not cfg.interfaces:
        raise fail("interfaces", "at least one interface is needed ('any' for all)")
    if not cfg.listen:
        raise fail("listen", "at least one API address is needed (HOST:PORT or unix:PATH)")
    for key, lo in (("snaplen", 96), ("buffer_mb", 1), ("timeout_ms", 1), ("max_connections", 1),
                    ("max_hosts", 1), ("max_batch", 1)):
        if getattr(cfg, key) < lo:
            raise fail(key, f"{key} must be at least {lo}")
    if cfg.ttl_seconds <= 0:
        raise fail("ttl_seconds", "ttl_seconds must be positive")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise fail("tls_cert", "tls_cert and tls_key go together")
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise fail("log_level", "log_level must be debug, info, warning or error")
    if not re.fullmatch(r"0?[0-7]{3}", cfg.p0f_socket_mode):
        raise fail("p0f_socket_mode", "p0f_socket_mode is an octal mode like 0660")
    if cfg.analyzer_udp and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):\d{1,5}", cfg.analyzer_udp):
        raise fail("analyzer_udp", "analyzer_udp is HOST:PORT, e.g. 127.0.0.1:2345 or [::1]:2345")
    for net in cfg.analyzer_allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise fail("analyzer_allow", f"not a network: {net!r}") from None
