"""Helpers shared by test modules and benchmarks (test modules import from here, never from each other).

Plain Python only: benchmark servers import it too, so it pulls in neither scapy nor pytest. SYNs shaped
down to the byte with scapy are in tests/craft.py; `raw_syns` here is the fast bulk builder for floods.
"""

from __future__ import annotations

import email
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.netns import NetnsPair

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "kernel-syn.pcap"
SA_CONTRIB = ROOT / "contrib" / "spamassassin"

# The TCP options of a Linux SYN (mss 1460, sok, ts, nop, ws 7): 20 bytes, so the data offset is 10.
_LINUX_OPTIONS = bytes.fromhex("020405b4") + b"\x04\x02" + b"\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"


def fpd(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m fingerprintd ARGS` as a user runs it, from the checkout."""
    proc = subprocess.run([sys.executable, "-m", "fingerprintd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def raw_syns(n: int, dst_ip: str, src_base: int = 0x0B000000,
             dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02") -> list[bytes]:
    """n Linux-shaped SYNs to dst_ip:25 as Ethernet frames, from n spoofed sources (src_base + i * 7919
    within a /8, source port 1024 + i % 60000); built with struct, fast enough for floods."""
    dst = socket.inet_aton(dst_ip)
    opts = _LINUX_OPTIONS
    out = []
    for i in range(n):
        src = struct.pack("!I", src_base + i * 7919 % (1 << 24))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(opts), i & 0xFFFF or 1, 0x4000, 50, 6, 0, src, dst)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 25, i + 1, 0, (5 + len(opts) // 4) << 4, 0x02, 29200, 0, 0)
        out.append(dst_mac + b"\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + opts)
    return out


def raw_syn_source(i: int, src_base: int = 0x0B000000) -> tuple[str, int]:
    """The source address and port of raw_syns' i-th SYN."""
    return socket.inet_ntoa(struct.pack("!I", src_base + i * 7919 % (1 << 24))), 1024 + i % 60000


def sa_site_dir() -> Path:
    """A SpamAssassin site config dir spamd's unprivileged children can read, with the stock .pre files
    (they load the Check plugin and friends; --siteconfigpath replaces the whole directory)."""
    site = Path(tempfile.mkdtemp(prefix="fpd-sa-"))
    os.chmod(site, 0o755)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    return site


class Served:
    """`fingerprintd serve` in the server namespace of a NetnsPair, on its veth, its API on a unix socket."""

    def __init__(self, pair: NetnsPair, sock: str, log: str, *extra: str,
                 program: tuple[str, ...] = ("-m", "fingerprintd"), wait: bool = True) -> None:
        self.pair = pair
        self.sock = sock
        self.logfile = open(log, "w")
        self.log = log
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.srv, sys.executable, *program, "serve", "-i", pair.vsrv,
             "--grpc", f"unix:{sock}", *extra], stderr=self.logfile, cwd=ROOT)
        if wait:
            self.wait_for('"msg": "serving"')

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in open(self.log).read():
                return
            assert self.proc.poll() is None, open(self.log).read()
            time.sleep(0.05)
        raise RuntimeError(f"no {needle} in the log: " + open(self.log).read())

    def events(self) -> list[dict]:
        return [json.loads(ln) for ln in open(self.log).read().splitlines() if ln.startswith("{")]

    def scrape(self, port: int) -> dict[str, float]:
        """GET /metrics inside the server's namespace, parsed: {sample name{labels}: value}."""
        from prometheus_client.parser import text_string_to_metric_families

        out = self.pair.ns(self.pair.srv, sys.executable, "-c",
                           f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',"
                           f" timeout=10).read().decode())")
        samples = {}
        self.metric_names = set()  # every family, with or without samples yet
        for family in text_string_to_metric_families(out.stdout):
            self.metric_names.add(family.name + ("_total" if family.type == "counter" else ""))
            for sm in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sm.labels.items()))
                samples[f"{sm.name}{{{labels}}}" if labels else sm.name] = sm.value
        return samples

    def lookup(self, ip: str, port: int = 0, wait_ms: int = 0) -> dict:
        out = fpd("lookup", ip, "--port", str(port), "--wait-ms", str(wait_ms), "--server", f"unix:{self.sock}",
                  "--json")
        assert out.returncode in (0, 1), out.stderr
        return json.loads(out.stdout)

    def stats(self) -> dict:
        import grpc

        from fingerprintd.v1 import fingerprintd_pb2 as pb
        from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

        with grpc.insecure_channel(f"unix:{self.sock}") as ch:
            s = pb_grpc.FingerprintStub(ch).Stats(pb.StatsRequest(), timeout=5)
        return {"packets": s.packets, "fingerprinted": s.fingerprinted, "skipped": dict(s.skipped),
                "kernel_dropped": s.kernel_dropped, "connections": s.connections, "hosts": s.hosts}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(10)
        self.logfile.close()
        return rc


# --- a private Postfix with the mail filters (tests/test_mail.py, benchmarks/test_mail.py) ------------

SMTP_PORT = 2525
POLICY_NO_TRUST = """[settings]
trusted_networks = []
[[rule]]
name = "linux"
os_name = "^Linux$"
score = -0.1
[[rule]]
name = "unknown"
unknown = true
score = 0.8
"""

# Postfix (main.cf, a template of {d}): mail for user@test.example goes to the Maildir {d}/vmail/user
# (read with delivered_to), owned by nobody.
TEST_MAILBOX_CF = """virtual_mailbox_domains = test.example
virtual_mailbox_base = {d}/vmail
virtual_mailbox_maps = inline:{{ user@test.example=user/ }}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
"""
POSTFIX_MAIN_CF = """compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/lib
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
myhostname = mx.test.example
mydomain = test.example
inet_interfaces = loopback-only
inet_protocols = all
mydestination =
mynetworks = 127.0.0.0/8 [::1]/128
alias_maps =
alias_database =
smtpd_client_port_logging = yes
""" + TEST_MAILBOX_CF + """smtpd_milters = {{ unix:{d}/milter.sock, default_action=accept }}
milter_connect_macros = j {{daemon_name}} {{daemon_addr}} v _ {{client_addr}} {{client_port}}
smtpd_recipient_restrictions = check_policy_service {{ unix:{d}/policy.sock, default_action=DUNNO }},
    permit_mynetworks, reject_unauth_destination
"""


def wait_until(predicate, seconds: float = 15, step: float = 0.1, what: str = ""):
    """predicate()'s first true value, polled until `seconds` pass (then TimeoutError(what))."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(what)


def delivered_to(maildir: Path, subject: str) -> email.message.Message | None:
    """The message with this Subject among those delivered into the Maildir `maildir` (its new/), or None."""
    for path in (maildir / "new").glob("*"):
        msg = email.message_from_bytes(path.read_bytes())
        if msg["Subject"] == subject:
            return msg
    return None


class MailStack:
    """A private Postfix instance on loopback port SMTP_PORT with the service, the milter and the policy
    service, all in directory d (mail is delivered to d/vmail)."""

    def __init__(self, d: Path, policy: str) -> None:
        self.d = d
        # Client ports are pinned (each message is checked against its own
        # connection); a fresh range per run avoids the last run's TIME_WAITs.
        self.base = random.randrange(42000, 60000, 10)
        self.procs: dict[str, subprocess.Popen] = {}
        self.policy = d / "policy.toml"
        self.policy.write_text(policy)

    def start_service(self) -> None:
        log = open(self.d / "serve.log", "a")
        self.procs["serve"] = subprocess.Popen(
            [sys.executable, "-m", "fingerprintd", "serve", "-i", "lo", "--port", str(SMTP_PORT),
             "--grpc", f"unix:{self.d}/api.sock", "--policy", str(self.policy)], stderr=log, cwd=ROOT)
        wait_until(lambda: '"msg": "serving"' in (self.d / "serve.log").read_text())

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    def start_filters(self, *extra: str) -> None:
        for kind in ("milter", "policyd"):
            sock = self.d / ("milter.sock" if kind == "milter" else "policy.sock")
            log = open(self.d / f"{kind}.log", "a")
            self.procs[kind] = subprocess.Popen(
                [sys.executable, "-m", "fingerprintd", kind, "--listen", f"unix:{sock}",
                 "--server", f"unix:{self.d}/api.sock", "--log-level", "debug", *extra], stderr=log, cwd=ROOT)
            wait_until(lambda s=sock: s.exists())

    def start_postfix(self) -> None:
        d = self.d
        etc = d / "etc"
        for sub in ("etc", "spool", "lib", "vmail"):
            (d / sub).mkdir(exist_ok=True)
        shutil.chown(d / "lib", "postfix")
        os.chown(d / "vmail", 65534, 65534)
        (etc / "main.cf").write_text(POSTFIX_MAIN_CF.format(d=d))
        master = []
        for line in Path("/usr/share/postfix/master.cf.dist").read_text().splitlines():
            fields = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                fields[4] = "n"  # no chroot: a private queue has no chroot files
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = str(SMTP_PORT)
                line = "  ".join(fields)
            master.append(line)
        (etc / "master.cf").write_text("\n".join(master) + "\n")
        out = subprocess.run(["postfix", "-c", str(etc), "start"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", SMTP_PORT)) == 0)

    def stop_postfix(self) -> None:
        subprocess.run(["postfix", "-c", str(self.d / "etc"), "stop"], capture_output=True, timeout=30)

    def send(self, server: str, local_port: int, extra: list[str] = ()) -> subprocess.CompletedProcess:
        return subprocess.run(["swaks", "--server", server, "--port", str(SMTP_PORT), "--local-port",
                               str(local_port), "--from", "sender@example.net", "--to", "user@test.example",
                               "--header", f"Subject: test {local_port}", "--body", "hello", *extra],
                              capture_output=True, text=True, timeout=60)

    def delivered(self, subject: str) -> email.message.Message:
        return wait_until(lambda: delivered_to(self.d / "vmail" / "user", subject), 20)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_rspamd(conf: Path, p0f_conf: str) -> tuple[int, subprocess.Popen]:
    """Debian's rspamd in the foreground on a private config directory `conf`, its p0f module
    configured by `p0f_conf` (local.d/p0f.conf). Returns its scanning worker's port and the process:
    wait for the port with `wait_for_port`, terminate the process when done."""
    for sub in ("local.d", "override.d", "run", "db", "log"):
        (conf / sub).mkdir(parents=True)
    port, ctl = free_port(), free_port()
    (conf / "local.d" / "p0f.conf").write_text(p0f_conf)
    (conf / "local.d" / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    (conf / "local.d" / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{ctl}";\n')
    (conf / "local.d" / "worker-proxy.inc").write_text("enabled = false;\n")
    (conf / "local.d" / "logging.inc").write_text(f'type = "file";\nfilename = "{conf}/log/rspamd.log";\n')
    (conf / "local.d" / "options.inc").write_text('dns { nameserver = ["127.0.0.1:53"]; timeout = 0.2s; }\n')
    # rspamd treats private networks as local and skips p0f for them (local.d would
    # merge with its list): override it to loopback only.
    (conf / "override.d" / "options.inc").write_text('local_addrs = ["127.0.0.0/8", "::1"];\n')
    proc = subprocess.Popen(["rspamd", "-f", "-u", "root", "-g", "root", "-i", "--var", f"LOCAL_CONFDIR={conf}",
                             "--var", f"RUNDIR={conf}/run", "--var", f"DBDIR={conf}/db", "--var",
                             f"LOGDIR={conf}/log", "-c", "/etc/rspamd/rspamd.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return port, proc


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until `proc` accepts on 127.0.0.1:`port`; fails if it exits first or takes over `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, f"{proc.args[0]} exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"{proc.args[0]} did not start"
        time.sleep(0.5)


# Runs in the client namespace: the hex frames on stdin out of the veth named in argv[1], pausing
# argv[3] seconds after every argv[2] of them; prints how many went out.
_FRAME_SENDER = r"""
import socket, sys, time
frames = [bytes.fromhex(l) for l in sys.stdin.read().split()]
every, pause = int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for i, f in enumerate(frames):
    s.send(f)
    if i % every == every - 1:
        time.sleep(pause)
print(len(frames))
"""


def send_frames(pair: NetnsPair, frames: list[bytes], every: int, pause: float) -> None:
    """Send raw Ethernet `frames` from the client side of `pair`, sleeping `pause` s after every `every`
    (a paced stream, not one burst); fails unless all of them went out."""
    out = subprocess.run(["ip", "netns", "exec", pair.cli, sys.executable, "-c", _FRAME_SENDER, pair.vcli,
                          str(every), str(pause)], input="\n".join(f.hex() for f in frames), capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == str(len(frames)), out.stderr


def rspamc_symbols(port: int, ip: str, message: bytes) -> tuple[dict[str, str], str]:
    """rspamd on 127.0.0.1:`port` scans `message` as if from `ip` (`rspamc symbols`): {symbol: its line}
    and the whole output."""
    out = subprocess.run(["rspamc", "-h", f"127.0.0.1:{port}", "--ip", ip, "symbols"], input=message,
                         capture_output=True, timeout=60)
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    return {ln.split()[1]: ln for ln in text.splitlines() if ln.startswith("Symbol: ")}, text
