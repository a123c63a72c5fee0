"""The `fingerprintd` command line.

Errors a user can cause (a missing file, a bad filter, a bad database) end
with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fingerprintd import __version__, accel
from fingerprintd.capture import CaptureError, all_tcp_filter, compile_filter, open_offline, per_link, ports_filter
from fingerprintd.classes import ClassesError, ClassMap, load_classes
from fingerprintd.data import default_classes, default_signatures
from fingerprintd.engine import build_engine
from fingerprintd.matcher import Matcher
from fingerprintd.mode import P0fMode
from fingerprintd.report import FORMATTERS, replayer
from fingerprintd.signatures import Database, SignatureError, load, marked_additions, shadowed

_ANSWER_RESERVE_MS = 50  # fingerprintd.mail.ANSWER_RESERVE_MS (that module loads gRPC: not imported here)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def load_db(path: str | None, p0f_bugs: bool = False) -> Database:
    """The signatures, read in the mode --p0f-bugs names: every later stage takes it from them."""
    path = path or default_signatures()
    try:
        return load(path, P0fMode.of(p0f_bugs))
    except SignatureError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def load_class_map(path: str | None) -> ClassMap:
    path = path or default_classes()
    try:
        return load_classes(path)
    except ClassesError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1..65535: {port}")
    return port


class _Formatter(argparse.HelpFormatter):
    """argparse's own, given the terminal's width as shutil.get_terminal_size reads it: argparse makes a
    formatter for every argument it declares and would import shutil (with bz2 and lzma) for it, ~6 ms of
    every command's start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS", "0"))
            except ValueError:
                width = 0
            if width <= 0:
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
                except (AttributeError, ValueError, OSError):
                    width = 80
            width -= 2  # as argparse does with the terminal's width
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the subcommand about to be parsed, only `serve` itself gets `serve`'s 40-odd flags
    (declaring them costs every other command's start, a tenth of a small replay)."""
    parser = _Parser(prog="fingerprintd", description="Passive TCP/IP OS fingerprinting for mail servers.")
    parser.add_argument("--version", action="version", version=f"fingerprintd {__version__} ({accel.name()})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    rp = sub.add_parser("replay", help="fingerprint the SYNs in pcap/pcapng files")
    rp.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng, optionally gzip-compressed")
    rp.add_argument("--format", choices=sorted(FORMATTERS), default="text")
    rp.add_argument("--signatures", metavar="PATH", help="signature database (default: the bundled one)")
    rp.add_argument("--classes", metavar="PATH", help="mail classes by label (default: the bundled classes.toml)")
    rp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    rp.add_argument("--port", type=_port, action="append", metavar="N",
                    help="watched server port, repeatable (default 25)")
    rp.add_argument("--all-ports", action="store_true", help="every TCP port (p0f's own default filter)")
    rp.add_argument("--bpf", metavar="EXPR", help="a libpcap filter replacing the port filter")
    rp.add_argument("--p0f-bugs", action="store_true",
                    help="reproduce p0f 3.09b's known bugs for byte-identical output")
    rp.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                    help="progress bar on stderr (auto: when stderr is a terminal)")
    rp.add_argument("--summary-json", action="store_true", help="print the closing summary as JSON")
    rp.set_defaults(func=cmd_replay)

    sv = sub.add_parser("serve", help="capture SYNs live and answer lookups over gRPC")
    if command in (None, "serve"):
        sv.add_argument("--config", metavar="FILE", help="TOML configuration (flags override it)")
        from fingerprintd.config import add_arguments

        add_arguments(sv)  # one flag per option of fingerprintd/config.py
    sv.set_defaults(func=cmd_serve)

    lk = sub.add_parser("lookup", help="ask a running service about a client")
    lk.add_argument("ip")
    lk.add_argument("--port", type=int, default=0, help="client source port (default: latest SYN from ip)")
    lk.add_argument("--wait-ms", type=int, default=0)
    lk.add_argument("--server", default="127.0.0.1:50051", metavar="ADDR", help="HOST:PORT or unix:PATH")
    lk.add_argument("--token", metavar="SECRET")
    lk.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA")
    lk.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    lk.add_argument("--json", action="store_true")
    lk.add_argument("--client-name", metavar="NAME",
                    help="the client's verified (FCrDNS) name, as the MTA knows it ('unknown': none)")
    lk.add_argument("--reverse-name", metavar="NAME", help="the client's unverified PTR name ('unknown': none)")
    lk.add_argument("--helo", metavar="NAME", help="the client's HELO/EHLO argument")
    lk.set_defaults(func=cmd_lookup)

    ln = sub.add_parser("learn", help="record outcomes (spam or ham) of messages carrying X-OS-Fingerprint")
    kind = ln.add_mutually_exclusive_group(required=True)
    kind.add_argument("--spam", dest="spam", action="store_true", help="the messages are spam")
    kind.add_argument("--ham", dest="spam", action="store_false", help="the messages are ham")
    ln.add_argument("messages", nargs="+", metavar="MESSAGE", help="message files, mbox files or Maildir folders")
    where = ln.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="the service's reputation file (serve --reputation PATH)")
    where.add_argument("--server", metavar="ADDR", help="a running service (Feedback RPC): HOST:PORT or unix:PATH")
    ln.add_argument("--token", metavar="SECRET")
    ln.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    ln.add_argument("--json", action="store_true", help="one JSON object per message, then the summary")
    ln.set_defaults(func=cmd_learn)

    rp2 = sub.add_parser("reputation", help="what was learned from outcomes, and why scores moved")
    rp2.add_argument("--db", required=True, metavar="PATH", help="the reputation file (serve --reputation PATH)")
    rp2.add_argument("--reset", action="append", metavar="ID", help="forget what was learned for this id; repeatable")
    rp2.add_argument("--json", action="store_true")
    rp2.set_defaults(func=cmd_reputation)

    for name, helptext in (("milter", "a milter adding X-OS-Fingerprint headers (pymilter)"),
                           ("policyd", "a Postfix policy service (check_policy_service)")):
        mp = sub.add_parser(name, help=helptext)
        default = "unix:/run/fingerprintd/milter.sock" if name == "milter" else "unix:/run/fingerprintd/policy.sock"
        mp.add_argument("--listen", default=default, metavar="SPEC",
                        help=f"unix:PATH or {'inet:PORT@HOST' if name == 'milter' else 'inet:HOST:PORT'}"
                             f" (default {default})")
        mp.add_argument("--server", default="127.0.0.1:50051", metavar="ADDR",
                        help="the fingerprintd service: HOST:PORT or unix:PATH")
        mp.add_argument("--token", metavar="SECRET")
        when = "at the first MAIL FROM" if name == "milter" else "once per message"
        mp.add_argument("--timeout-ms", type=int, default=250,
                        help="the whole bound of one lookup, the wait included: after it the mail goes on without "
                             f"a verdict (fail open). Asked {when}, so a message waits at most this long for "
                             "this filter, twice this with both the milter and the policy service (default 250)")
        mp.add_argument("--wait-ms", type=int, default=50,
                        help="of the timeout, how long the service may wait for a SYN still in flight "
                             f"(at most the timeout - {_ANSWER_RESERVE_MS} ms; default 50)")
        mp.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics (lookups, failures by reason, skips, actions, "
                             "closed connections) on http://HOST:PORT/metrics")
        mp.add_argument("--enforce", action="store_true",
                        help="apply the policy's tempfail/reject actions (default: tag only)")
        mp.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
        mp.set_defaults(func=cmd_mail, kind=name)

    sp = sub.add_parser("signatures", help="work with signature databases")
    ssub = sp.add_subparsers(dest="sig_command", required=True, parser_class=_Parser)
    cp = ssub.add_parser("check", help="validate a database and count its signatures")
    cp.add_argument("path", nargs="?", help="database file (default: the bundled one)")
    cp.add_argument("--p0f-bugs", action="store_true", help="parse as p0f 3.09b does, bugs included")
    cp.add_argument("--json", action="store_true")
    cp.add_argument("--coverage", action="append", metavar="CAPTURE",
                    help="report the signature lines no SYN or SYN+ACK in these captures matches exactly; repeatable")
    cp.add_argument("--all-lines", action="store_true",
                    help="with --coverage: every line, not only the file's marked fingerprintd additions")
    cp.set_defaults(func=cmd_signatures_check)
    ep = ssub.add_parser("explain", help="which line matches a raw signature, and why the others do not")
    ep.add_argument("raw_sig", help="p0f's raw_sig text, e.g. 4:64+0:0:1460:mss*44,10:mss,sok,ts,nop,ws:df,id+:0")
    ep.add_argument("--signatures", metavar="PATH", help="database (default: the bundled one)")
    ep.add_argument("--syn-ack", action="store_true", help="match against [tcp:response] instead of [tcp:request]")
    ep.add_argument("--all", action="store_true", help="also list lines with another option layout")
    ep.set_defaults(func=cmd_signatures_explain)
    return parser


def _replay_filter(args: argparse.Namespace):
    if args.bpf:
        err = compile_filter(args.bpf)
        if err:
            raise UsageError(f"bad --bpf filter: {err}")
        return args.bpf
    ports = args.port or [25]
    mode = P0fMode.of(args.p0f_bugs)  # p0f-bugs mode reads exactly the packets p0f reads
    qinq, ext_headers = not mode.vlan_refused, not mode.ipv6_ext_refused
    if args.all_ports:
        def make(vlan: bool) -> str:
            return all_tcp_filter(vlan, qinq, ext_headers)
    else:
        def make(vlan: bool) -> str:
            return ports_filter(ports, vlan, qinq, ext_headers)

    return per_link(make)


def cmd_replay(args: argparse.Namespace) -> int:
    # Replay allocates millions of short-lived tuples and keeps long-lived
    # tables; the default collector thresholds would rescan those tables
    # constantly (a third of the run time). Nothing here forms cycles.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    db = load_db(args.signatures, args.p0f_bugs)
    ports = None if (args.all_ports or args.bpf) else (args.port or [25])
    classes = load_class_map(args.classes)
    engine = build_engine(db, classes, ports)
    lines = replayer(engine, args.format)  # compiled: the whole path in C
    bpf = _replay_filter(args)
    for path in args.files:  # fail before writing anything if a file is unreadable
        if not os.access(path, os.R_OK):
            raise UsageError(f"{path}: cannot read file")
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    try:
        # Bytes (UTF-8) straight to the file: the compiled loop writes its lines as bytes.
        out = open(args.output, "wb", buffering=1 << 16) if args.output else sys.stdout.buffer
    except OSError as exc:
        raise UsageError(f"{args.output}: {exc.strerror or exc}") from None
    try:
        for path in args.files:
            _replay_file(path, bpf, lines, out, show)
    except CaptureError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    _print_summary(engine.summary(), args.summary_json)
    return 0


def _replay_file(path, bpf, lines: Callable[[bytes, bytes, int, Callable[[bytes], object]], None], out,
                 show: bool) -> None:
    cap = open_offline(path, bpf)
    bar = None
    if show:
        import shutil

        from tqdm import tqdm

        # A terminal that reports no size (some ptys) still gets a bar.
        cols, rows = shutil.get_terminal_size()
        bar = tqdm(total=cap.size, unit="B", unit_scale=True, desc=Path(path).name, file=sys.stderr, leave=False,
                   ncols=cols, nrows=rows)
    linktype = cap.linktype
    write = out.write
    for blob, meta in cap.raw_batches():
        lines(blob, meta, linktype, write)
        if bar is not None:
            bar.update(len(blob) + len(meta))  # each record: 16 bytes on disk, 16 in the metadata
    if bar is not None:
        bar.close()


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary), file=sys.stderr)
        return
    fp = summary["fingerprinted"]
    total_fp = sum(fp.values())
    parts = ", ".join(f"{v} {k}" for k, v in sorted(fp.items())) or "none"
    print(f"fingerprintd: {summary['packets']} packets read, {total_fp} fingerprinted ({parts})", file=sys.stderr)
    skipped = summary["skipped"]
    if skipped:
        detail = ", ".join(f"{k} {v}" for k, v in skipped.items())
        print(f"fingerprintd: {sum(skipped.values())} skipped: {detail}", file=sys.stderr)
    classes = summary["syn_mail_classes"]
    if classes:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(classes.items(), key=lambda kv: -kv[1]))
        print(f"fingerprintd: SYNs by mail class: {detail}", file=sys.stderr)


def cmd_signatures_check(args: argparse.Namespace) -> int:
    path = args.path or default_signatures()
    db = load_db(path, args.p0f_bugs)
    report = {
        "path": path,
        "signatures": db.sig_count,
        "sections": {
            "mtu": len(db.mtu_lines),
            "tcp:request": len(db.request),
            "tcp:response": len(db.response),
            "http": db.http_sigs,
        },
        "classes": {},
    }
    for section, sigs in (("tcp:request", db.request), ("tcp:response", db.response)):
        counts: Counter[str] = Counter()
        for sig in sigs:
            counts[f"{sig.label.klass} ({'generic' if sig.generic else 'specific'})"] += 1
        report["classes"][section] = dict(sorted(counts.items()))
    report["shadowed"] = [{"section": sec, "line": sig.line, "covered_by": ref.line, "label": sig.label.text}
                          for sec, sig, ref in shadowed(db)]
    if args.coverage:
        report["coverage"] = _coverage(path, db, args.coverage, args.all_lines)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{path}: OK, {db.sig_count} signatures")
    for item in report["shadowed"]:
        print(f"{path}:{item['line']}: warning: never wins: [{item['section']}] line {item['covered_by']} "
              f"matches everything it does ({item['label']})")
    if args.coverage:
        cov = report["coverage"]
        for item in cov["unmatched"]:
            print(f"{path}:{item['line']}: note: no packet in the captures matches: [{item['section']}] "
                  f"{item['label']}: {item['sig']}")
        print(f"  coverage: {cov['matched']} of {cov['lines']} {cov['scope']} matched by "
              f"{cov['packets']} fingerprinted packets")
    for name, n in report["sections"].items():
        print(f"  [{name}] {n}")
        for klass, k in report["classes"].get(name, {}).items():
            print(f"      {klass}: {k}")
    return 0


def _coverage(path: str, db: Database, captures: list[str], all_lines: bool) -> dict:
    """Which signature lines the SYNs and SYN+ACKs of some captures match exactly (a line no
    capture reaches is one no real packet has vouched for)."""
    try:
        added = marked_additions(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    engine = build_engine(db, ports=None, host_records=False)  # in the mode the database was read in
    hit: set[int] = set()
    packets = 0
    for capture in captures:
        if not os.access(capture, os.R_OK):
            raise UsageError(f"{capture}: cannot read file")
        try:
            cap = open_offline(capture, per_link(all_tcp_filter))
            for batch in cap.batches():
                for obs in engine.feed_batch(batch, cap.linktype):
                    packets += 1
                    if not obs.fp.fuzzy:  # a fuzzy match vouches for nothing
                        hit.add(obs.fp.line)
        except CaptureError as exc:
            raise UsageError(str(exc)) from None
    scope = [(sec, sig) for sec, sigs in (("tcp:request", db.request), ("tcp:response", db.response))
             for sig in sigs if all_lines or sig.line in added]
    unmatched = [{"section": sec, "line": sig.line, "label": sig.label.text, "sig": sig.text}
                 for sec, sig in scope if sig.line not in hit]
    return {"scope": "signature lines" if all_lines else "added signature lines", "lines": len(scope),
            "matched": len(scope) - len(unmatched), "packets": packets, "unmatched": unmatched}


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # our own messages say what failed, in one line
    import logging
    import sqlite3

    from fingerprintd.config import Config, ConfigError, apply_arguments, load_config
    from fingerprintd.policy import PolicyError
    from fingerprintd.service import Service, Signals, event, setup_logging

    signals = Signals()  # before the files load: a SIGHUP meanwhile is queued, not fatal
    try:
        cfg = load_config(args.config) if args.config else Config()
        apply_arguments(cfg, args)
    except (ConfigError, OSError) as exc:
        raise UsageError(str(exc).replace("command line:0: ", "")) from None
    setup_logging(cfg.log_level)
    try:
        event(logging.INFO, "loading", signatures=cfg.signatures or "bundled", policy=cfg.policy or "bundled",
              classes=cfg.classes or "bundled")
        service = Service(cfg)
        return service.run(signals)
    except (SignatureError, PolicyError, CaptureError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot start: {exc}") from None
    except sqlite3.Error as exc:
        raise UsageError(f"--reputation {cfg.reputation}: {exc}") from None
    except KeyError as exc:  # pwd/grp lookups for --user and --p0f-socket-owner
        raise UsageError(f"unknown user or group: {exc.args[0]}") from None


def cmd_mail(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    if args.kind == "milter":
        try:
            import Milter  # noqa: F401 (pymilter, an optional extra)
        except ImportError:
            raise UsageError("the milter needs pymilter: pip install 'fingerprintd[milter]' "
                             "(it builds against libmilter: apt install libmilter-dev on Debian)") from None
    from fingerprintd import mail
    from fingerprintd.service import setup_logging

    if args.timeout_ms < 1 or args.wait_ms < 0:
        raise UsageError("--timeout-ms must be >= 1 and --wait-ms >= 0")
    setup_logging(args.log_level)
    client = mail.VerdictClient(args.server, args.timeout_ms / 1000, args.wait_ms, args.token or "")
    srv = None
    if args.kind == "milter":
        if not args.listen.startswith(("unix:", "inet:", "inet6:", "local:")):
            raise UsageError(f"--listen must be unix:PATH or inet:PORT@HOST, not {args.listen!r}")
    else:
        try:
            srv = mail.policy_server(args.listen, mail.PolicyDecider(client, args.enforce))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot listen on {args.listen}: {exc}") from None
    if args.metrics:
        extra = None
        if srv is not None:
            extra = lambda: {"connections": ("Open connections from Postfix", srv.connections)}  # noqa: E731
        try:
            mail.start_metrics(args.metrics, args.kind, client.counters, extra)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot serve metrics on {args.metrics}: {exc}") from None
    if srv is None:
        try:
            mail.run_milter(args.listen, client, args.enforce)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.listen}: {exc}") from None
        return 0
    import signal

    # SIGTERM ends it like Ctrl-C: no thread started and no lock taken in a signal handler.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc
    from google.protobuf import json_format

    from fingerprintd.v1 import fingerprintd_pb2 as pb
    from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

    if not 0 <= args.port <= 65535:
        raise UsageError(f"port out of range 0..65535: {args.port}")
    if args.wait_ms < 0:
        raise UsageError("--wait-ms must be >= 0")
    if args.tls_ca:
        with open(args.tls_ca, "rb") as fh:
            channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials(fh.read()))
    else:
        channel = grpc.insecure_channel(args.server)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    from fingerprintd.context import Context
    from fingerprintd.mail import context_pb

    context = context_pb(Context(args.client_name, args.reverse_name, args.helo))
    try:
        with channel:
            stub = pb_grpc.FingerprintStub(channel)
            reply = stub.Lookup(pb.LookupRequest(ip=args.ip, port=args.port, wait_ms=args.wait_ms, context=context),
                                timeout=args.timeout + args.wait_ms / 1000, metadata=metadata)
    except grpc.RpcError as exc:
        raise UsageError(f"{args.server}: {exc.code().name}: {exc.details()}") from None
    if args.json:
        out = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True,
                                        preserving_proto_field_name=True)
        out["found"] = reply.found
        print(json.dumps(out, indent=2))
    elif reply.found:
        o, v = reply.observation, reply.verdict
        print(f"{o.client_ip}:{o.client_port} {o.label}{' (generic)' if o.generic else ''}"
              f"{' (fuzzy)' if o.fuzzy else ''} dist={o.distance} link={o.link} raw_sig={o.raw_sig}")
        learned = f" (learned {v.learned:+g})" if v.learned else ""
        print(f"verdict: score {v.score:g}{learned}, action {v.action}, rules {', '.join(v.rules) or 'none'}")
        print(f"context: {v.bucket or '-'}; id: {v.id or '-'}")
        print(f"header: {v.header}")
    else:
        print(f"{args.ip}{':' + str(args.port) if args.port else ''}: not found")
    return 0 if reply.found else 1


def _open_reputation(path: str):
    import sqlite3

    from fingerprintd.reputation import Reputation, SqliteStore

    try:
        return Reputation(SqliteStore(path))
    except sqlite3.Error as exc:
        raise UsageError(f"{path}: {exc}") from None


def cmd_learn(args: argparse.Namespace) -> int:
    from fingerprintd.learn import LearnError, feedback_sender, learn_messages

    if args.db:
        rep = _open_reputation(args.db)

        def send(key: str, spam: bool, client: str, message_id: str) -> tuple[str, float]:
            result = rep.record(key, spam, client, message_id)
            return result, rep.adjustment(key)
    else:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        send = feedback_sender(args.server, args.token or "", args.timeout)
    try:
        summary = learn_messages(args.messages, args.spam, send, print if args.json else None)
    except LearnError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(summary.items()) if k != "messages")
        print(f"fingerprintd: {summary['messages']} messages read as {'spam' if args.spam else 'ham'}: {parts or '-'}")
    return 0


def cmd_reputation(args: argparse.Namespace) -> int:
    if not os.path.exists(args.db):
        raise UsageError(f"{args.db}: no such file")
    rep = _open_reputation(args.db)
    for key in args.reset or ():
        print(f"{key}: {'reset' if rep.reset(key) else 'nothing learned'}")
    if args.reset:
        return 0
    rows = rep.explain()
    if args.json:
        print(json.dumps([{"id": r.key, "spam": round(r.spam, 2), "ham": round(r.ham, 2),
                           "adjustment": r.adjustment, "why": r.why, "first": r.first, "last": r.last}
                          for r in rows], indent=2))
        return 0
    if not rows:
        print("nothing learned yet")
    for r in sorted(rows, key=lambda r: (-abs(r.adjustment), r.key)):
        print(f"{r.key:<44} spam {r.spam:7.1f}  ham {r.ham:7.1f}  adjustment {r.adjustment:+.2f}  {r.why}")
    return 0


def cmd_signatures_explain(args: argparse.Namespace) -> int:
    from fingerprintd.matcher import guess_dist, parse_raw_sig

    db = load_db(args.signatures)
    try:
        probe = parse_raw_sig(args.raw_sig.strip())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    matcher = Matcher(db)
    to_server = not args.syn_ack
    sig, fuzzy, dist = matcher.find_probe(probe, to_server)
    fallback = matcher.family_fallback(probe, to_server) if sig is None else None
    if fallback is not None:
        print(f"verdict: {fallback[0].text} (generic family fallback, dist {fallback[1]}): {fallback[2]}")
    elif sig is None:
        print(f"verdict: ??? (no line matches; dist {guess_dist(probe.ttl)})")
    else:
        kind = "generic " if sig.generic else ""
        print(f"verdict: {sig.label.text} ({kind}{'fuzzy ' if fuzzy else ''}match, line {sig.line}, dist {dist})")
    section = "tcp:request" if to_server else "tcp:response"
    other = 0
    for ref, status, why in matcher.explain(probe, to_server):
        if ref.layout != probe.layout and not args.all:
            other += 1
            continue
        mark = {"exact": "=", "fuzzy": "~", None: "x"}[status]
        print(f"  {mark} line {ref.line:4d} {'g' if ref.generic else 's'} {ref.label.text:<40} {why}")
    if other:
        print(f"  ({other} more lines of [{section}] want another option layout; --all lists them)")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        words = sys.argv[1:] if argv is None else argv
        command = next((w for w in words if not w.startswith("-")), None)  # the subcommand, if it comes first
        args = build_parser(command).parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"fingerprintd: {exc}" if not str(exc).startswith("fingerprintd") else str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth a trace.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
