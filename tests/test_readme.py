"""README.md's snippets outside the deployment sections, run as written.

Each command line is the README's own text, run by sh in a directory the test
prepares so that it means what the README says (the files it names, made from
samples/kernel-syn.pcap: real kernel SYNs), with this tree's entry point first on
PATH as `fingerprintd` (tests/test_deploy.py does the same for the units).
The service lines (root; run under `flock /tmp/fpd-peers.lock` like every
root test, though they use no port of the machine's) run inside network
namespaces made here, with a private
mount namespace over /etc, /run and /var (overlays: the machine's files are
never touched), the users and directories the deployment snippets make, and
clients at the README's documentation addresses; each is asked something
(a lookup, a p0f-socket query, an analyzer datagram, the --log file) and
stopped with SIGTERM. `make run`/`make test` are checked with `make -n`.
The scoring section's learning block, the Redis serve line (a redis-server on the
namespace's own loopback, its name in the private /etc/hosts) and the accuracy
benchmark's lines (its tables against the README's figures) are run the same way.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import IP, TCP, PcapNgWriter, rdpcap  # type: ignore[attr-defined]

from tests import snippets
from tests.conftest import ROOT
from tests.helpers import SAMPLE

BIN = Path(sys.executable).parent  # this tree's install: its `fingerprintd` entry point
TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\]) ")


def _env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    assert shutil.which("fingerprintd", path=env["PATH"]) == str(BIN / "fingerprintd")
    return env


def lines(ref: tuple) -> list[str]:
    """A snippet's command lines, continuations joined, as written (comments left to sh)."""
    return [ln for ln in snippets.snippet(*ref).replace("\\\n", " ").splitlines() if ln.strip()]


def sh(line: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", line], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


# --- make run / make test -------------------------------------------------------------------------------


def _make_n(target: str) -> list[list[str]]:
    """What `make TARGET` would run from scratch (-B: as on a fresh machine), without running it."""
    # Run as its own make, not as a sub-make of `make test` (CI): a sub-make inherits MAKEFLAGS and
    # MAKELEVEL and prints "Entering/Leaving directory" lines among the commands.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return [shlex.split(ln) for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith(("if ", "\t"))]


def test_make_run_and_make_test_do_what_the_readme_says():
    from tests.conftest import need

    need(shutil.which("make") is not None, "make is not installed")
    make = {words(ln)[1]: ln.partition("#")[2] for ln in lines(snippets.MAKE)}
    assert set(make) == {"run", "test"}
    assert "creates .venv, installs, starts the service on embedded defaults" in make["run"]
    run = _make_n("run")
    assert ["python3", "-m", "venv", ".venv"] in run
    assert any(cmd[:2] == [".venv/bin/python", "-m"] and cmd[2:5] == ["pip", "install", "-q"] and "-e" in cmd
               for cmd in run), run
    # It ends by starting the README's `fingerprintd serve` (embedded defaults: no flag, no config file).
    serve = words(lines(snippets.SERVE)[0])
    assert serve == ["fingerprintd", "serve"]
    assert run[-1] == [".venv/bin/fingerprintd", *serve[1:]], run[-1]
    test = _make_n("test")
    debs = next(cmd for cmd in test if cmd[:2] == ["sh", "scripts/debs.sh"])
    documented = make["test"].split("also installs ")[1].split("...")[0]
    for package in re.findall(r"[\w.+-]+", documented):
        assert package in debs, (package, debs)
    assert [".venv/bin/ruff", "check", "."] in test and test[-1][:1] == [".venv/bin/pytest"], test


# --- the output formats and Layout --------------------------------------------------------------------------


def _untimed(line: str) -> str:
    assert TIME.match(line), line
    return TIME.sub("", line, count=1)


@pytest.mark.parametrize("ref, fmt", [(snippets.TEXT_EXAMPLE, "text"), (snippets.P0F_LOG_EXAMPLE, "p0f-log")])
def test_the_output_examples_are_what_a_replay_prints(ref, fmt, tmp_path):
    """The example lines, but for their time, are lines a replay of the bundled capture prints."""
    out = sh(f"fingerprintd replay --format {fmt} {SAMPLE}", tmp_path)
    assert out.returncode == 0, out.stderr
    got = [_untimed(ln) for ln in out.stdout.splitlines()]
    example = [_untimed(ln) for ln in snippets.snippet(*ref).splitlines()]
    assert example and all(ln in got for ln in example), [ln for ln in example if ln not in got]
    # In the order the replay prints them (a mod=mtu line follows its syn).
    at = [got.index(ln) for ln in example]
    assert at == sorted(at) and at[-1] - at[0] == len(at) - 1, at


def test_the_jsonl_fields_are_the_documented_ones(tmp_path):
    """The jsonl paragraph of "Output formats" names every key of an observation, and only those."""
    para = snippets.README.read_text().split("\n`jsonl`: ", 1)[1].split("\n\n", 1)[0]
    top = re.sub(r"`\{[^}]*\}`", "", re.sub(r"\([^)]*\)", "", para.split("; an uptime read")[0]))
    documented = re.findall(r"`([a-z_]+)`", top)
    out = sh(f"fingerprintd replay --format jsonl {SAMPLE}", tmp_path)
    objs = [json.loads(ln) for ln in out.stdout.splitlines()]
    assert objs and all(sorted(o) == sorted(documented) for o in objs if o["mod"] in ("syn", "syn+ack")), (
        documented, list(objs[0]))
    nested = {"client": ["ip", "port"], "server": ["ip", "port"],
              "os": re.search(r"`os` `\{([^}]*)\}`", para)[1].split(", ")}
    for o in objs:
        for key, fields in nested.items():
            assert o[key] is None or list(o[key]) == fields, (key, o[key])


def test_the_layout_names_every_module():
    layout = snippets.snippet(*snippets.LAYOUT)
    named = {w for ln in layout.splitlines() for w in ln.split() if re.match(r"^[\w.]+/[\w./]*$", w)}
    assert all((ROOT / w).exists() for w in named), [w for w in named if not (ROOT / w).exists()]
    modules = {f"fingerprintd/{p.name}" for p in (ROOT / "fingerprintd").glob("*.py")} - {
        "fingerprintd/__init__.py", "fingerprintd/__main__.py"}
    assert modules <= named, sorted(modules - named)


# --- replay -------------------------------------------------------------------------------------------------


def _rewritten(pkts, n: int, **fields) -> list:
    """n of the capture's SYNs with some header fields changed (checksums recomputed), after its end."""
    out, end = [], float(pkts[-1].time)
    syns = [p for p in pkts if TCP in p and IP in p and p[TCP].flags == "S"]
    for i, p in enumerate(syns[:n]):
        q = p.copy()
        for key, value in fields.items():
            layer, _, name = key.partition("_")
            setattr(q[IP if layer == "ip" else TCP], name, value(i) if callable(value) else value)
        del q[IP].chksum, q[TCP].chksum
        q.time = end + 1 + i
        out.append(q.__class__(bytes(q)))
        out[-1].time = q.time
    return out


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    """The files the replay block names: mail.pcap (the sample and some SYNs to 587), mail.pcapng.gz (the
    same as gzip'd pcapng), dump.pcap (the sample, SYNs to 8080 and SYNs within 192.0.2.0/24)."""
    d = tmp_path_factory.mktemp("replay")
    pkts = rdpcap(str(SAMPLE))
    mail = list(pkts) + _rewritten(pkts, 10, tcp_dport=587, tcp_sport=lambda i: 40000 + i)
    from scapy.utils import wrpcap

    wrpcap(str(d / "mail.pcap"), mail)
    with PcapNgWriter(str(d / "mail.pcapng")) as w:
        for p in mail:
            w.write(p)
    (d / "mail.pcapng.gz").write_bytes(gzip.compress((d / "mail.pcapng").read_bytes()))
    (d / "mail.pcapng").unlink()
    dump = (list(pkts) + _rewritten(pkts, 20, tcp_dport=8080, tcp_sport=lambda i: 41000 + i)
            + _rewritten(pkts, 20, ip_src="192.0.2.2", ip_dst="192.0.2.1", tcp_sport=lambda i: 42000 + i))
    wrpcap(str(d / "dump.pcap"), dump)
    return d


def _text(stdout: str) -> list[tuple[str, str, int, str, int]]:
    """(mod, client ip, client port, server ip, server port) of each text line."""
    out = []
    for ln in stdout.splitlines():
        m = re.match(r"^\S+ \S+ (syn|syn\+ack)\s+(\S+):(\d+) (?:->|<-) (\S+):(\d+)  ", ln)
        assert m, ln
        out.append((m[1], m[2].strip("[]"), int(m[3]), m[4].strip("[]"), int(m[5])))
    return out


def test_the_replay_lines_as_written(captures):
    block = lines(snippets.REPLAY)
    assert len(block) == 6
    ran = {}
    for line in block:
        out = sh(line, captures)
        assert out.returncode == 0, (line, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        ran[" ".join(words(line)[2:])] = out
    sample = _text(sh(f"fingerprintd replay {SAMPLE}", captures).stdout)
    # readable text: SYNs to port 25 and their SYN+ACKs (not the SYNs to 587)
    text = _text(ran["mail.pcap"].stdout)
    assert text == sample and {r[4] for r in text} == {25} and {r[0] for r in text} == {"syn", "syn+ack"}
    # one JSON object per observation, from the gzip'd pcapng: the same observations
    objs = [json.loads(ln) for ln in ran["--format jsonl mail.pcapng.gz"].stdout.splitlines()]
    syns = [o for o in objs if o["mod"] in ("syn", "syn+ack")]
    assert [(o["mod"], o["client"]["ip"], o["client"]["port"], o["server"]["port"]) for o in syns] == [
        (m, c, cp, sp) for m, c, cp, _s, sp in text]
    # p0f's log, of both captures the glob names (sorted by the shell: dump.pcap, then mail.pcap)
    log = (captures / "p0f.log").read_text().splitlines()
    assert ran["--format p0f-log -o p0f.log *.pcap"].stdout == ""
    assert all(re.match(r"^\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] mod=", ln) for ln in log)
    syn_log = [dict(kv.split("=", 1) for kv in ln.partition("] ")[2].split("|")) for ln in log
               if ln.partition("] ")[2].startswith("mod=syn|")]
    assert {e["srv"].rpartition("/")[2] for e in syn_log} == {"25"}
    assert sum(e["cli"].startswith("192.0.2.2/") for e in syn_log) == 20  # dump.pcap's own
    assert sum(not e["cli"].startswith("192.0.2.2/") for e in syn_log) == sum(r[0] == "syn" for r in text)
    # the submission ports too: the ten SYNs to 587
    ports = _text(ran["--port 25 --port 587 --port 465 mail.pcap"].stdout)
    assert [r for r in ports if r[4] == 587] == [("syn", "10.77.0.2", 40000 + i, "10.77.0.1", 587) for i in range(10)]
    assert [r for r in ports if r[4] == 25] == text
    # every TCP port: the SYNs to 8080 as well
    every = _text(ran["--all-ports dump.pcap"].stdout)
    assert sorted(r[2] for r in every if r[4] == 8080) == list(range(41000, 41020))
    assert sum(r[1] == "192.0.2.2" for r in every) == 20
    # a filter of one's own: that network only
    net = _text(ran["--bpf tcp and net 192.0.2.0/24 dump.pcap"].stdout)
    assert sorted(r[2] for r in net) == list(range(42000, 42020)) and {r[1] for r in net} == {"192.0.2.2"}


# --- checking a database ------------------------------------------------------------------------------------


def test_the_signatures_lines_as_written(captures, tmp_path):
    shutil.copy(ROOT / "signatures" / "p0f.fp", tmp_path / "my.fp")
    shutil.copy(SAMPLE, tmp_path / "a.pcap")
    with PcapNgWriter(str(tmp_path / "b.pcapng")) as w:
        for p in rdpcap(str(captures / "mail.pcap")):
            w.write(p)
    block = lines(snippets.SIGNATURES)
    assert len(block) == 4
    out = [sh(line, tmp_path) for line in block]
    for line, o in zip(block, out, strict=True):
        assert o.returncode == 0, (line, o.stderr)
    assert out[0].stdout.startswith(f"{ROOT / 'signatures' / 'p0f.fp'}: OK, ")  # the bundled one
    counts = json.loads(out[1].stdout)  # counts per section and class
    assert counts["path"] == "my.fp" and counts["sections"]["tcp:request"] > 0
    assert counts["classes"]["tcp:request"]["unix (specific)"] > 0
    # the added lines no packet backs: notes name file:line; the line the sample's SYNs match is not one
    explain = out[3].stdout.splitlines()
    verdict = re.match(r"^verdict: (.+) \(match, line (\d+), dist 0\)$", explain[0])
    assert verdict, explain[0]
    notes = [ln for ln in out[2].stdout.splitlines() + out[2].stderr.splitlines() if ": note: " in ln]
    assert notes and f"p0f.fp:{verdict[2]}: note" not in "\n".join(notes)
    # explain names the verdict the text example shows for this very raw signature
    example = snippets.snippet(*snippets.TEXT_EXAMPLE)
    raw = words(block[3])[3]
    assert f"  {verdict[1]}  " in example and f"raw_sig={raw}" in example
    assert any(ln.startswith(("  = ", "  ~ ", "  x ")) for ln in explain[1:])


def test_the_documented_database_error(tmp_path):
    """`my.fp:212: unknown quirk 'ttl+'; expected one of df, id+, ...` (exit 2), one line."""
    fp = (ROOT / "signatures" / "p0f.fp").read_text().splitlines()[:211]
    assert [ln for ln in fp if ln.startswith("[")][-1].startswith("[tcp:"), "line 212 is not in a tcp section"
    bad = "sig   = *:64:0:*:mss*16,*:mss,nop,ws:df,ttl+:0"  # the bundled file's line, one quirk changed
    (tmp_path / "my.fp").write_text("\n".join([*fp, bad]) + "\n")
    out = sh(lines(snippets.SIGNATURES)[1], tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("fingerprintd: my.fp:212: unknown quirk 'ttl+'; expected one of df, id+, "), out.stderr
    assert out.stderr.count("\n") <= 1


# --- the service: `serve` and `lookup` as written, in namespaces ----------------------------------------

SERVER, CLIENT = "203.0.113.1", "203.0.113.7"  # RFC 5737 addresses, inside namespaces made here
# A private view of the machine for the holder's namespaces: writes to these land in the test's directory.
OVERLAID = ("/etc", "/run", "/var/spool", "/var/log", "/var/lib")
CONNECT = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[3])))
s.settimeout(5)
try:
    s.connect((sys.argv[2], int(sys.argv[4])))
except ConnectionRefusedError:
    pass  # the SYN went out; the service sees SYNs whether or not something listens
s.close()
"""
QUERY_P0F = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(struct.pack("=IB16s", 0x50304601, 4, socket.inet_aton(sys.argv[2])))  # p0f.h's p0f_api_query
got = b""
while len(got) < 232:
    got += s.recv(232 - len(got))
f = struct.unpack("=IIIIIIIIIhBB32s32s32s32s32s32s", got)
print(json.dumps({"magic": f[0], "status": f[1], "count": f[4], "os": f[12].rstrip(b"\0").decode()}))
"""
QUERY_ANALYZER = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(sys.argv[2].encode(), ("127.0.0.1", int(sys.argv[1])))
print(json.dumps(s.recv(2048).decode()))  # JSON: the reply's own line end, untouched
"""


class Mx:
    """A server namespace whose interface is really named eth0 (address SERVER) and a client namespace
    at CLIENT; a holder process in the server one, in a mount namespace of its own where OVERLAID are
    overlays, and where the README's deployment setup snippet ran (users, directories, units)."""

    def __init__(self, pair, d: Path) -> None:
        self.pair, self.d = pair, d
        pair.ns(pair.srv, "ip", "link", "set", pair.vsrv, "down")
        pair.ns(pair.srv, "ip", "link", "set", pair.vsrv, "name", "eth0")
        pair.ns(pair.srv, "ip", "link", "set", "eth0", "up")
        pair.vsrv = "eth0"
        mounts = "\n".join(f"mkdir -p {d}/ov{i}/up {d}/ov{i}/work && mount -t overlay overlay "
                           f"-o lowerdir={p},upperdir={d}/ov{i}/up,workdir={d}/ov{i}/work {p}"
                           for i, p in enumerate(OVERLAID))
        script = f"set -e\n{mounts}\ncd {ROOT}\n{snippets.snippet(*snippets.SETUP)}\necho ready\nexec sleep infinity\n"
        self.holder = subprocess.Popen(["ip", "netns", "exec", pair.srv, "unshare", "-m", "--propagation", "private",
                                        "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        pair.procs.append(self.holder)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.wait(10)
            raise AssertionError("the setup snippet failed: " + (self.holder.stderr.read() or ""))
        self.n = 0

    def argv(self, line: str, cwd: Path) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "sh", "-c", f"cd {cwd} && exec {line}"]

    def sh(self, line: str, cwd: Path = ROOT, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(line, cwd), env=_env() | env, capture_output=True, text=True,
                              timeout=timeout)

    def python(self, code: str, *args: str) -> str:
        out = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "-n", sys.executable, "-c", code, *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, line: str) -> tuple[subprocess.Popen, Path]:
        """A long-running line, its stderr in a file; once its log says it serves."""
        self.n += 1
        log = self.d / f"run{self.n}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(self.argv(line, ROOT), env=_env(), stdout=fh, stderr=fh)
        self.pair.procs.append(proc)
        return proc, log

    def syn(self, sport: int, dport: int = 25) -> None:
        out = self.pair.ns(self.pair.cli, sys.executable, "-c", CONNECT, CLIENT, SERVER, str(sport), str(dport))
        assert out.returncode == 0, out.stderr


def _wait_for(proc: subprocess.Popen, log: Path, needle: str, seconds: float = 60) -> None:
    import time

    deadline = time.monotonic() + seconds
    while needle not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {needle!r}: " + log.read_text()[-3000:]
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, log: Path, filter_: bool = False) -> None:
    proc.terminate()
    # The filters leave SIGTERM's default action in place: systemd counts that as a clean stop.
    assert proc.wait(20) in ((0, -signal.SIGTERM) if filter_ else (0,)), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    from tests.conftest import need
    from tests.netns import NetnsPair, can_use_netns

    ok, why = can_use_netns()
    need(ok, why)
    for tool in ("nsenter", "unshare", "systemd-sysusers", "systemd-tmpfiles"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (util-linux, systemd)")
    d = tmp_path_factory.mktemp("mx")
    os.chmod(d, 0o755)
    pair = NetnsPair(net=88)
    pair.server4, pair.client4 = SERVER, CLIENT
    pair.server6, pair.client6 = "2001:db8:88::1", "2001:db8:88::7"
    with pair:
        yield Mx(pair, d)


def test_serve_on_defaults_and_the_lookup_lines(mx):
    """`fingerprintd serve` (what `make run` starts): all interfaces, port 25, 127.0.0.1:50051; the
    lookup block as written, from the source tree: not found (exit 1), then a real SYN found."""
    from tests.conftest import need

    need((ROOT / ".venv" / "bin" / "fingerprintd").exists(), "no .venv in the tree (make .venv/.installed)")
    proc, log = mx.start(lines(snippets.SERVE)[0])
    try:
        _wait_for(proc, log, '"msg": "serving"')
        latest, exact = lines(snippets.LOOKUP)
        port = int(words(exact)[words(exact).index("--port") + 1])
        out = mx.sh(latest)
        assert (out.returncode, out.stdout) == (1, f"{CLIENT}: not found\n"), out.stdout + out.stderr
        out = mx.sh(exact)
        assert out.returncode == 1 and json.loads(out.stdout)["found"] is False, out.stdout + out.stderr
        mx.syn(port)
        out = mx.sh(exact)  # first: it waits (200 ms) for the SYN if the capture has not handed it over yet
        assert out.returncode == 0, out.stdout + out.stderr
        found = json.loads(out.stdout)
        assert found["found"] is True and found["observation"]["client_port"] == port
        assert found["observation"]["server_port"] == 25 and found["observation"]["label"].startswith("Linux")
        out = mx.sh(latest)
        assert out.returncode == 0 and out.stdout.startswith(f"{CLIENT}:{port} Linux"), out.stdout + out.stderr
    finally:
        _stop(proc, log)
    # "2 on bad input or an unreachable server", in one line
    out = mx.sh(latest)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("fingerprintd: 127.0.0.1:50051: UNAVAILABLE"), out.stderr


def test_serve_on_eth0_with_submission_a_unix_socket_and_a_user(mx):
    """The second serve line as written (its user and /run/fingerprintd from the setup snippet), and the
    filters' command lines of "Use with Postfix" against it: a policy request gets its PREPEND."""
    proc, log = mx.start(lines(snippets.SERVE)[1])
    filters = []
    try:
        _wait_for(proc, log, '"msg": "serving"')
        uid = int(mx.sh("id -u fingerprintd").stdout)
        status = Path(f"/proc/{proc.pid}/status").read_text()  # nsenter and sh exec: this is serve
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t" in status, status
        mx.syn(51235, 587)
        out = mx.sh(f"fingerprintd lookup {CLIENT} --port 51235 --wait-ms 2000 --server unix:/run/fingerprintd/api.sock"
                    " --json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["observation"]["server_port"] == 587
        found = out
        for line in lines(snippets.COMMANDS):
            filters.append(mx.start(line))
        policy, milter = "/var/spool/postfix/fingerprintd/policy.sock", "/var/spool/postfix/fingerprintd/milter.sock"
        for sock in (policy, milter):
            mx.python("import os, sys, time\nfor _ in range(600):\n    if os.path.exists(sys.argv[1]): break\n"
                            "    time.sleep(0.05)\nelse: sys.exit('no ' + sys.argv[1])", sock)
        reply = mx.python(POLICY_REQUEST, policy, CLIENT, "51235")
        label = json.loads(found.stdout)["observation"]["label"]
        assert reply.startswith(f"action=PREPEND X-OS-Fingerprint: {label}; "), reply
        # The milter answers a milter's option negotiation (what Postfix sends first).
        assert mx.python(MILTER_OPTNEG, milter) == "O\n"
    finally:
        for fproc, flog in filters:
            _stop(fproc, flog, filter_=True)
        _stop(proc, log)


POLICY_REQUEST = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
instance = sys.argv[4] if len(sys.argv) > 4 else "1.readme"  # one per message: a repeat gets DUNNO
s.sendall(("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
           f"instance={instance}\nclient_address={sys.argv[2]}\nclient_port={sys.argv[3]}\nsender=a@example.net\n"
           "recipient=b@example.org\n\n").encode())
got = b""
while not got.endswith(b"\n\n"):
    got += s.recv(4096)
print(got.decode(), end="")
"""
MILTER_OPTNEG = r"""
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(struct.pack("!IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF))  # SMFIC_OPTNEG, as Postfix sends it
size = struct.unpack("!I", s.recv(4, socket.MSG_WAITALL))[0]
print(s.recv(size, socket.MSG_WAITALL)[:1].decode())
"""


def test_serve_with_the_shipped_config_file(mx):
    """`--config /etc/fingerprintd/fingerprintd.toml`, the file contrib/ ships, installed where the line
    says: every option at its default, so it serves as `serve` does (a missing file: exit 2)."""
    line = lines(snippets.SERVE)[2]
    assert mx.sh(line).returncode == 2  # not there yet: the line does read that path
    assert mx.sh("install -D -m 644 contrib/fingerprintd.toml /etc/fingerprintd/fingerprintd.toml").returncode == 0
    proc, log = mx.start(line)
    try:
        _wait_for(proc, log, '"msg": "serving"')
        mx.syn(51236)
        out = mx.sh(f".venv/bin/fingerprintd lookup {CLIENT} --port 51236 --wait-ms 2000")
        assert out.returncode == 0 and out.stdout.startswith(f"{CLIENT}:51236 Linux"), out.stdout + out.stderr
    finally:
        _stop(proc, log)
        mx.sh("rm -rf /etc/fingerprintd")


def test_the_p0f_drop_in_line_and_the_shipped_logrotate(mx):
    """The drop-in line as written: the p0f socket answers p0f's query, the analyzer amavisd's datagram,
    the --log file gets p0f's lines; contrib/logrotate/fingerprintd, installed as its comment says, rotates
    that file, and the service's next lines go to the new one after the SIGHUP its postrotate sends."""
    need_logrotate = shutil.which("logrotate") is not None
    from tests.conftest import need

    need(need_logrotate, "logrotate is not installed (make test installs it)")
    # What the unit's LogsDirectory=fingerprintd makes before serve starts.
    assert mx.sh("install -d -o fingerprintd -g fingerprintd -m 0755 /var/log/fingerprintd").returncode == 0
    line = lines(snippets.P0F_DROPIN)[0]
    argv = words(line)
    sock, udp = argv[argv.index("--p0f-socket") + 1], argv[argv.index("--analyzer-udp") + 1]
    p0f_log = argv[argv.index("--log") + 1]
    proc, log = mx.start(line)
    try:
        _wait_for(proc, log, '"msg": "serving"')
        mx.syn(51237)
        out = mx.sh(f"fingerprintd lookup {CLIENT} --port 51237 --server 127.0.0.1:50051 --wait-ms 2000 --json")
        label = json.loads(out.stdout)["observation"]["label"]
        assert mx.sh(f"stat -c %a {sock}").stdout.strip() == "660"  # "Mode 0660 by default"
        answer = json.loads(mx.python(QUERY_P0F, sock, CLIENT))
        assert answer["magic"] == 0x50304602 and answer["status"] == 0x10 and answer["count"] == 1, answer
        assert label.startswith(answer["os"]) and answer["os"] == "Linux", (label, answer)
        reply = json.loads(mx.python(QUERY_ANALYZER, udp.rpartition(":")[2], f"[{CLIENT}]:51237 readme1"))
        assert reply.startswith(f"[{CLIENT}]:51237 readme1 {label}; dist: 0; link: ") and reply.endswith("\r\n")
        logged = mx.sh(f"cat {p0f_log}").stdout
        assert f"|mod=syn|cli={CLIENT}/51237|" in logged.replace("] mod=", "]|mod="), logged
        # logrotate, with the file as shipped
        assert mx.sh("install -D -m 644 contrib/logrotate/fingerprintd /etc/logrotate.d/fingerprintd").returncode == 0
        rotated = mx.sh(f"logrotate -f -s {mx.d}/logrotate.state /etc/logrotate.d/fingerprintd")
        assert rotated.returncode == 0, rotated.stderr
        assert f"cli={CLIENT}/51237|" in mx.sh(f"cat {p0f_log}.1").stdout
        st = mx.sh(f"stat -c '%U %G %a %s' {p0f_log}").stdout.split()
        assert st == ["fingerprintd", "adm", "640", "0"], st  # its `create` line
        # postrotate's `systemctl kill --kill-whom=main --signal=HUP fingerprintd.service`: SIGHUP to the
        # unit's main process (no systemd here to do it, so the test does what it does).
        os.kill(proc.pid, 1)
        _wait_for(proc, log, '"msg": "reloaded"')
        mx.syn(51238)
        assert mx.sh(f"fingerprintd lookup {CLIENT} --port 51238 --wait-ms 2000").returncode == 0
        import time

        deadline = time.monotonic() + 10
        while f"cli={CLIENT}/51238|" not in mx.sh(f"cat {p0f_log}").stdout:
            assert time.monotonic() < deadline, mx.sh(f"cat {p0f_log}").stdout
            time.sleep(0.05)
        assert f"cli={CLIENT}/51238|" not in mx.sh(f"cat {p0f_log}.1").stdout
    finally:
        _stop(proc, log)


# --- Scoring: learning from outcomes, as written --------------------------------------------------------

HAM_CLIENT = "203.0.113.8"  # a second client address: one address counts once per id


def _message(header: str, n: int) -> str:
    return (f"From: sender{n}@example.net\nTo: postmaster@example.org\nSubject: outcome {n}\n"
            f"Message-ID: <outcome-{n}@example.net>\nX-OS-Fingerprint: {header}\n\nbody {n}\n")


def test_the_learning_lines_as_written(mx, tmp_path):
    """The block of "Learning from outcomes", line by line: serve keeps a store; a Junk Maildir and a ham
    mbox whose messages carry the header the policy service PREPENDed for real SYNs (two clients) are
    learned, one into the file, one through the Feedback RPC; `reputation` lists the id with one spam
    and one ham; the reset line (the id the header carries) forgets it."""
    block = lines(snippets.LEARNING)
    assert len(block) == 6
    home = tmp_path / "home"
    os.chmod(tmp_path, 0o755)
    assert mx.sh(block[0]).returncode == 0  # install -d
    proc, log = mx.start(block[1])
    policyd = None
    try:
        _wait_for(proc, log, '"msg": "serving"')
        policyd = mx.start(lines(snippets.COMMANDS)[1])
        sock = "/var/spool/postfix/fingerprintd/policy.sock"
        mx.python("import os, sys, time\nfor _ in range(600):\n    if os.path.exists(sys.argv[1]): break\n"
                  "    time.sleep(0.05)\nelse: sys.exit('no ' + sys.argv[1])", sock)
        mx.pair.ns(mx.pair.cli, "ip", "addr", "add", f"{HAM_CLIENT}/24", "dev", mx.pair.vcli)
        headers = {}
        for client, port in ((CLIENT, 51301), (HAM_CLIENT, 51302)):
            out = mx.pair.ns(mx.pair.cli, sys.executable, "-c", CONNECT, client, SERVER, str(port), "25")
            assert out.returncode == 0, out.stderr
            assert mx.sh(f"fingerprintd lookup {client} --port {port} --wait-ms 2000 "
                         "--server unix:/run/fingerprintd/api.sock").returncode == 0
            reply = mx.python(POLICY_REQUEST, sock, client, str(port), f"{port}.learn")
            assert reply.startswith("action=PREPEND X-OS-Fingerprint: "), reply
            headers[client] = reply.splitlines()[0].split(": ", 1)[1]
        ids = {c: re.search(r"\bid: (\S+?);", h)[1] for c, h in headers.items()}
        assert ids[CLIENT] == ids[HAM_CLIENT], ids
        key = ids[CLIENT]
        assert f"client: {CLIENT}" in headers[CLIENT], headers
        # ~/Maildir/.Junk: a Maildir++ folder (cur, new, tmp), two spam messages from the first client
        junk = home / "Maildir" / ".Junk"
        for sub in ("cur", "new", "tmp"):
            (junk / sub).mkdir(parents=True)
        (junk / "cur" / "1700000000.1.mx:2,S").write_text(_message(headers[CLIENT], 1))
        (junk / "new" / "1700000001.2.mx").write_text(_message(headers[CLIENT], 2))
        (tmp_path / "ham.mbox").write_text(
            "From sender3@example.net Tue Dec  1 10:00:00 2026\n" + _message(headers[HAM_CLIENT], 3) + "\n")
        spam = mx.sh(block[2], tmp_path, HOME=str(home))  # ~ is the test's home
        assert spam.returncode == 0, spam.stdout + spam.stderr
        ham = mx.sh(block[3], tmp_path)
        assert ham.returncode == 0, ham.stdout + ham.stderr
        listed = mx.sh(block[4], tmp_path)
        assert listed.returncode == 0, listed.stderr
        row = re.search(rf"^{re.escape(key)} +spam +([\d.]+) +ham +([\d.]+) ", listed.stdout, re.M)
        assert row and (row[1], row[2]) == ("1.0", "1.0"), listed.stdout  # the second spam: the same client
        reset_id = words(block[5])[-1]
        assert reset_id == key, (reset_id, key)  # the README's id is the one these SYNs get
        out = mx.sh(block[5], tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert key not in mx.sh(block[4], tmp_path).stdout
    finally:
        if policyd:
            _stop(*policyd, filter_=True)
        _stop(proc, log)
        mx.pair.ns(mx.pair.cli, "ip", "addr", "del", f"{HAM_CLIENT}/24", "dev", mx.pair.vcli)
        mx.sh("rm -rf /var/lib/fingerprintd")


# --- Several MX hosts: the Redis serve line as written ---------------------------------------------------

REDIS_HOST = "redis.example.internal"


def test_the_redis_serve_line_as_written(mx, tmp_path):
    """The serve line of "Several MX hosts" against a real redis-server on the server namespace's own
    loopback (port 6379 there is nobody else's), its name in the private /etc/hosts, the README's ACL user
    (tests/test_redis.py checks what it may and may not do) and its password in the documented file: a
    kernel SYN lands as the per-connection, host and rspamd p0f keys, written as that user."""
    from tests.conftest import need

    need(shutil.which("redis-server") is not None, "redis-server is not installed (make test installs it)")
    line = lines(snippets.REDIS_SERVE)[0]
    argv = words(line)
    url, pw_file = argv[argv.index("--redis") + 1], argv[argv.index("--redis-password-file") + 1]
    assert url == f"redis://fingerprintd@{REDIS_HOST}:6379/0", url
    os.chmod(tmp_path, 0o755)
    redis, rlog = mx.start(f"redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --dir {tmp_path}")
    proc = None
    try:
        _wait_for(redis, rlog, "Ready to accept connections")
        acl = snippets.snippet(*snippets.REDIS_ACL).strip()
        assert mx.sh("redis-cli " + " ".join(map(shlex.quote, acl.split()))).stdout.strip() == "OK"
        password = re.search(r" >(\S+) ", acl)[1]
        assert mx.sh(f"echo '127.0.0.1 {REDIS_HOST}' >> /etc/hosts").returncode == 0
        for cmd in ("install -d /etc/fingerprintd", f"echo {password} > {pw_file}", f"chmod 600 {pw_file}"):
            assert mx.sh(cmd).returncode == 0, cmd  # each its own: Mx.sh execs the line
        proc, log = mx.start(line)
        _wait_for(proc, log, '"msg": "serving"')
        mx.syn(51401)
        out = mx.sh(f"fingerprintd lookup {CLIENT} --port 51401 --wait-ms 2000 --json")
        assert out.returncode == 0, out.stdout + out.stderr
        label = json.loads(out.stdout)["observation"]["label"]
        import time

        deadline = time.monotonic() + 20
        while f'"p0f{CLIENT}"' not in (keys := mx.sh("redis-cli --no-raw --scan").stdout.split()):  # quoted
            assert time.monotonic() < deadline, (keys, log.read_text()[-2000:])
            time.sleep(0.05)
        assert any(k.startswith('"fpd:c:') for k in keys) and any(k.startswith('"fpd:h:') for k in keys), keys
        answer = mx.sh(f"redis-cli --raw GETRANGE p0f{CLIENT} 0 3 | od -An -tx1").stdout.split()
        assert answer[:4] == ["02", "46", "30", "50"], answer  # p0f's answer magic, little-endian (then the newline)
        assert label.startswith("Linux") and "redis unreachable" not in log.read_text()
        # written as the ACL user: its connections are the ones redis lists with that name
        clients = mx.sh("redis-cli CLIENT LIST").stdout
        assert re.search(r" user=fingerprintd ", clients), clients
    finally:
        if proc:
            _stop(proc, log)
        redis.terminate()
        redis.wait(20)
        mx.sh(f"sed -i '/ {REDIS_HOST}$/d' /etc/hosts")
        mx.sh("rm -rf /etc/fingerprintd")


# --- Accuracy on labeled captures: the benchmark's lines and the README's figures --------------------------

ACCURACY_COLUMNS = ["family", "database", "hosts", "family ok", "specific", "generic", "unknown", "wrong"]


def _accuracy_tables(stdout: str) -> dict[str, dict[tuple[str, str], tuple[int, list[float]]]]:
    """Each `# title` table the benchmark prints: (family, database) -> (hosts, its five shares in %)."""
    tables: dict[str, dict] = {}
    for part in re.split(r"^# ", stdout, flags=re.M)[1:]:
        title, *rows = part.splitlines()
        if title.startswith("kernel variants"):
            continue
        assert re.split(r"\s{2,}", rows[0].strip()) == ACCURACY_COLUMNS, rows[0]
        table = tables.setdefault(title, {})
        for row in rows[1:]:
            m = re.match(r"^(\S+) +(fingerprintd|p0f 3\.09b) +(\d+)((?: +\d+\.\d%){5})$", row)
            assert m, row
            table[m[1], m[2]] = (int(m[3]), [float(x) for x in m[4].replace("%", "").split()])
    return tables


def test_the_accuracy_lines_as_written_and_the_readmes_figures(tmp_path):
    """Both lines of the block, run from the tree (the corpus at ../shared/corpus; --netns under the peers
    lock: root, namespaces; a few seconds): tables of the documented shape, and the "Measured" table's
    figures are what they print."""
    from tests.conftest import need

    need((ROOT.parent / "shared" / "corpus" / "labels.csv").exists(), "no corpus at ../shared/corpus")
    need(shutil.which("p0f") is not None, "p0f is not installed (make test installs it)")
    block = lines(snippets.ACCURACY)
    assert len(block) == 2 and words(block[1])[-1] == "--netns"
    printed = {}
    for line in block:
        out = sh(line, ROOT)  # `python`: this tree's, first on PATH
        assert out.returncode == 0, (line, out.stderr[-3000:])
        printed[line] = _accuracy_tables(out.stdout)
    corpus, netns = printed[block[0]], printed[block[1]]
    assert list(corpus) == ["labeled corpus"] and list(netns) == ["labeled corpus", "kernel SYNs made here"]
    assert netns["labeled corpus"] == corpus["labeled corpus"]  # the same corpus, the same figures
    for table in netns.values():
        for (family, db), (hosts, (ok, specific, generic, unknown, wrong)) in table.items():
            assert (family, "fingerprintd" if db != "fingerprintd" else "p0f 3.09b") in table  # both databases
            assert hosts > 0 and abs(specific + generic + unknown + wrong - 100) <= 0.25, (family, db)
            assert abs(ok - specific - generic) <= 0.15, (family, db)
    # The README's "Measured" table
    text = snippets.README.read_text().split("### Accuracy on labeled captures", 1)[1].split("\n## ", 1)[0]
    measured = {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| ([^|]+?) \| ([^|]+) \| ([^|]+) \|$", text, re.M)}

    def shares(cell: str) -> list[float]:
        return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)%", cell)]

    dbs = ("fingerprintd", "p0f 3.09b")
    every, kernel = corpus["labeled corpus"], netns["kernel SYNs made here"]
    row = f"labeled corpus, {every['all', dbs[0]][0]} hosts: family right / specific"
    assert [shares(c) for c in measured[row]] == [every["all", db][1][:2] for db in dbs], (row, measured)
    row = f"corpus, OS from 2015 or later ({every['2015+', dbs[0]][0]}): specific"
    assert [shares(c) for c in measured[row]] == [[every["2015+", db][1][1]] for db in dbs], (row, measured)
    row = f"kernel sweep, {kernel['all', dbs[0]][0]} SYNs and SYN+ACKs: Linux / specific / `???`"
    assert [shares(c) for c in measured[row]] == [[kernel["all", db][1][i] for i in (0, 1, 3)] for db in dbs], (
        row, measured)


# --- contrib/spamassassin: the plugin installed as fingerprintd.cf's comment says -------------------------


def _plugin_usage() -> list[str]:
    """The configuration lines of FingerprintD.pm's usage comment, as written."""
    head = (ROOT / "contrib" / "spamassassin" / "FingerprintD.pm").read_text().split("\npackage ", 1)[0]
    return [ln[4:] for ln in head.splitlines() if ln.startswith("#   ") and ln[4:].strip()]


def _sa_site(d: Path, with_pre: bool) -> Path:
    """/etc/spamassassin as the install comment leaves it: the stock .pre files, FingerprintD.pm (with its
    .pre, or the usage's own loadplugin line) and the usage's settings and rules."""
    site = d / ("site-pre" if with_pre else "site-usage")
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    contrib = ROOT / "contrib" / "spamassassin"
    shutil.copy(contrib / "FingerprintD.pm", site / "FingerprintD.pm")
    usage = _plugin_usage()
    assert usage[0] == (contrib / "FingerprintD.pre").read_text().splitlines()[-1]  # the same loadplugin line
    if with_pre:
        shutil.copy(contrib / "FingerprintD.pre", site / "FingerprintD.pre")
        usage = usage[1:]
    (site / "fingerprintd-plugin.cf").write_text("\n".join(usage) + "\nuse_bayes 0\nskip_rbl_checks 1\n")
    return site


@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "usage"])
def test_the_spamassassin_plugin_loads_as_shipped(with_pre, tmp_path):
    from tests.conftest import need

    need(shutil.which("spamassassin") is not None, "SpamAssassin is not installed")
    os.chmod(tmp_path, 0o755)
    site = _sa_site(tmp_path, with_pre)
    out = subprocess.run(["spamassassin", "--lint", "-D", "plugin", f"--siteconfigpath={site}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plugin: loading Mail::SpamAssassin::Plugin::FingerprintD from " + str(site / "FingerprintD.pm") \
        in out.stderr, out.stderr[-3000:]
