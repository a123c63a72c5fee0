"""Observations -> output lines: p0f's log format, JSON lines, readable text."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import time
from collections.abc import Callable

from fingerprintd import accel
from fingerprintd.engine import Engine, Observation
from fingerprintd.matcher import Fingerprint, PerFingerprint
from fingerprintd.packet import link_name

_unpack_v6 = struct.Struct("!8H").unpack


def p0f_addr(addr: bytes) -> str:
    """An address as p0f prints it: IPv6 as eight uncompressed hex groups."""
    if len(addr) == 4:
        return socket.inet_ntoa(addr)
    return "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}".format(*_unpack_v6(addr))


def ip_text(addr: bytes) -> str:
    """An address in its usual short form."""
    return str(ipaddress.ip_address(addr))


def endpoint(addr: bytes, port: int) -> str:
    """ip:port, with IPv6 in brackets."""
    return f"{ip_text(addr)}:{port}" if len(addr) == 4 else f"[{ip_text(addr)}]:{port}"


class _Clock:
    """Local time strings, recomputed only when the second changes."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.sec = -1
        self.text = ""

    def __call__(self, sec: int) -> str:
        if sec != self.sec:
            self.sec = sec
            self.text = time.strftime(self.fmt, time.localtime(sec))
        return self.text


def p0f_log_formatter() -> Callable[[Observation], str]:
    """Lines byte-compatible with `p0f -o`: the observation, its host change or ip sharing
    record, its mtu line, its uptime record (p0f's order).

    The compiled accelerator's formatter when it is selected (fingerprintd/accel.py); it writes a
    whole batch into one buffer (`.join`), and gives the same bytes (tests/test_accel.py)."""
    if accel.ACCEL is not None:
        return accel.ACCEL.speedups.P0fLog(_uptime_tail)
    return _p0f_log_formatter()


def join_lines(fmt: Callable[[Observation], str]) -> Callable[[list[Observation]], str]:
    """A formatter's text for a whole batch of observations (one call for the compiled one)."""
    join = getattr(fmt, "join", None)
    if join is not None:
        return join
    return lambda observations: "".join(map(fmt, observations))


def p0f_tails(fp: Fingerprint, pkt=None) -> tuple[str, str | None]:
    """The verdict's part of p0f's observation line, and of its mtu line if any."""
    key = "app" if fp.app and fp.label else "os"
    return (
        f"{key}={fp.os_text}|dist={fp.dist_text}|params={fp.params}|raw_sig={fp.raw_sig}\n",
        f"link={fp.link or '???'}|raw_mtu={fp.raw_mtu}\n" if fp.mtu_reported else None,
    )


def replayer(engine: Engine, fmt: str) -> Callable[[bytes, bytes, int, Callable[[bytes], object]], None]:
    """`replay --format FMT` for one engine: (next_batch buffer, metadata, link type, write) hands the
    batch's lines (UTF-8) to `write`, as bytes or as a view valid only during the call.

    With the accelerator, the whole path runs on C structs (fingerprintd/_replay.pyx: its own flow and
    host books, so the engine must not be fed any other way too), with each stack's part of the line made
    here once; else Engine.feed_blob and the formatter.  Both give the same bytes and counters
    (tests/test_accel.py)."""
    impl = engine.accel
    if impl is not None:
        return impl.replay.Replay(engine, fmt, _REPLAY_TAILS[fmt]).into
    join = join_lines(FORMATTERS[fmt]())
    feed_blob = engine.feed_blob

    def into(blob: bytes, meta: bytes, linktype: int, write: Callable[[bytes], object]) -> None:
        text = join(feed_blob(blob, meta, linktype))
        if text:
            write(text.encode())

    return into


def _p0f_log_formatter() -> Callable[[Observation], str]:
    clock = _Clock("%Y/%m/%d %H:%M:%S")
    ntoa = socket.inet_ntoa

    tails = PerFingerprint(p0f_tails)  # type: ignore[arg-type]

    def fmt(obs: Observation) -> str:
        pkt, fp = obs.pkt, obs.fp
        src, dst = pkt.src, pkt.dst
        src = ntoa(src) if len(src) == 4 else p0f_addr(src)
        dst = ntoa(dst) if len(dst) == 4 else p0f_addr(dst)
        if obs.to_server:
            who = f"|cli={src}/{pkt.sport}|srv={dst}/{pkt.dport}|subj=cli|"
        else:
            who = f"|cli={dst}/{pkt.dport}|srv={src}/{pkt.sport}|subj=srv|"
        head = f"[{clock(int(pkt.ts))}] mod="
        if fp is None:  # an uptime record of its own (from an ACK, FIN or RST)
            return f"{head}uptime{who}{_uptime_tail(obs.uptime)}"
        tail = tails(fp)
        if obs.nat is None and obs.uptime is None:  # the common case, kept short
            if tail[1] is None:
                return f"{head}{obs.mod}{who}{tail[0]}"
            return f"{head}{obs.mod}{who}{tail[0]}{head}mtu{who}{tail[1]}"
        out = f"{head}{obs.mod}{who}{tail[0]}"
        if obs.nat is not None:
            nat = obs.nat
            out += f"{head}{nat.kind}{who}reason={nat.reason or '???'}|raw_hits={','.join(map(str, nat.raw_hits))}\n"
        if tail[1] is not None:
            out += f"{head}mtu{who}{tail[1]}"
        if obs.uptime is not None:
            out += f"{head}uptime{who}{_uptime_tail(obs.uptime)}"
        return out

    return fmt


def _uptime_tail(up) -> str:
    return f"uptime={up.text()}|raw_freq={up.freq:.2f} Hz\n"


def _records_dict(obs: Observation) -> dict:
    nat, up = obs.nat, obs.uptime
    return {
        "nat": None if nat is None else {"kind": nat.kind, "reason": nat.reason.split() if nat.reason else [],
                                         "raw_hits": list(nat.raw_hits)},
        "uptime": None if up is None else {"minutes": up.minutes, "modulo_days": up.modulo_days,
                                           "freq_hz": round(up.freq, 2)},
    }


def observation_dict(obs: Observation) -> dict:
    pkt, fp = obs.pkt, obs.fp
    (cip, cport), (sip, sport) = obs.client, obs.server
    if fp is None:  # an uptime record from an ACK, FIN or RST
        return {"ts": round(pkt.ts, 6), "mod": "uptime", "subject": "client" if obs.to_server else "server",
                "client": {"ip": ip_text(cip), "port": cport}, "server": {"ip": ip_text(sip), "port": sport},
                **_records_dict(obs)}
    return {
        "ts": round(pkt.ts, 6),
        "mod": "syn" if fp.to_server else "syn+ack",
        "sendsyn": obs.mod.startswith("sendsyn"),
        "client": {"ip": ip_text(cip), "port": cport},
        "server": {"ip": ip_text(sip), "port": sport},
        **_verdict_dict(fp, pkt),
        "capture_link": link_name(obs.linktype),
        **_records_dict(obs),
    }


def _verdict_dict(fp: Fingerprint, pkt) -> dict:
    """The part of a JSON observation that follows from its stack (the match cache's key) alone."""
    label = fp.label
    os_ = app = None
    if label is not None and label.is_app:
        app = {"name": label.name, "flavor": label.flavor, "label": label.text}
    elif label is not None:
        os_ = {
            "class": label.klass,
            "name": label.name,
            "flavor": label.flavor,
            "label": label.text,
            "generic": fp.generic,
            "fuzzy": fp.fuzzy,
        }
    return {
        "os": os_,
        "app": app,
        "mail_class": fp.mail_class,
        "dist": fp.dist,
        "random_ttl": fp.random_ttl,
        "params": [] if fp.params == "none" else fp.params.split(" "),
        "raw_sig": fp.raw_sig,
        "link": (fp.link or "???") if fp.raw_mtu else None,
        "raw_mtu": fp.raw_mtu or None,
        "sig_line": fp.line or None,
        "ip_version": pkt.ip_ver,
        "ttl": pkt.ttl,
    }


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def jsonl_tails(fp: Fingerprint, pkt) -> tuple[str, None]:
    """_verdict_dict as the JSON members a line carries between "server" and "capture_link"."""
    return _json(_verdict_dict(fp, pkt))[1:-1], None


def jsonl_formatter() -> Callable[[Observation], str]:
    return lambda obs: _json(observation_dict(obs)) + "\n"


def text_formatter() -> Callable[[Observation], str]:
    clock = _Clock("%Y-%m-%d %H:%M:%S")

    def fmt(obs: Observation) -> str:
        pkt, fp = obs.pkt, obs.fp
        (cip, cport), (sip, sport) = obs.client, obs.server
        arrow = "->" if obs.to_server else "<-"
        records = ""
        if obs.nat is not None:
            records += f" {obs.nat.kind.replace(' ', '_')}={obs.nat.reason.replace(' ', ',') or '???'}"
        if obs.uptime is not None:
            records += f" uptime={obs.uptime.minutes}min/{obs.uptime.freq:.2f}Hz"
        if fp is None:
            where = f"{endpoint(cip, cport)} {arrow} {endpoint(sip, sport)}"
            return f"{clock(int(pkt.ts))} {obs.mod:<7} {where} {records}\n"
        return (f"{clock(int(pkt.ts))} {obs.mod:<7} {endpoint(cip, cport)} {arrow} {endpoint(sip, sport)}"
                f"{tails(fp)}{records}\n")

    tails = PerFingerprint(text_tail)
    return fmt


def text_tail(fp: Fingerprint) -> str:
    """The verdict's part of a text line."""
    what = f"{'app ' if fp.app and fp.label else ''}{fp.os_text}"
    if fp.params != "none":
        what += f" [{fp.params}]"
    link = f" link={fp.link or '???'}/{fp.raw_mtu}" if fp.mtu_reported else ""
    return f"  {what}  class={fp.mail_class} dist={fp.dist_text}{link} raw_sig={fp.raw_sig}"


def text_tails(fp: Fingerprint, pkt) -> tuple[str, None]:
    return text_tail(fp), None


# What the compiled replay loop asks for a stack's part of a line, per format: (text, p0f's mtu line or None).
_REPLAY_TAILS = {"p0f-log": p0f_tails, "jsonl": jsonl_tails, "text": text_tails}

FORMATTERS: dict[str, Callable[[], Callable[[Observation], str]]] = {
    "text": text_formatter,
    "jsonl": jsonl_formatter,
    "p0f-log": p0f_log_formatter,
}
