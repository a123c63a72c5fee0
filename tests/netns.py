"""Real Linux-kernel SYNs: two network namespaces joined by a veth pair.

The server namespace runs a port-25 listener that greets like an MTA; the
client namespace connects with the sysctls and socket options under test;
tcpdump captures on the server's side of the veth.  Everything stays inside
namespaces this module creates and removes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_counter = itertools.count()

LISTENER = r"""
import socket, sys, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 25)); s.listen(128)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"220 test.invalid ESMTP\r\n"); c.settimeout(2); c.recv(100)
        except OSError:
            pass
        c.close()
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    threading.Thread(target=serve, args=(fam, addr), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
for i in range(int(sys.argv[2])):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if int(sys.argv[3]):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(sys.argv[3]))
    if int(sys.argv[4]):
        s.bind(("", int(sys.argv[4]) + i))
    s.settimeout(3)
    s.connect((sys.argv[1], 25))
    s.recv(100); s.sendall(b"QUIT\r\n"); s.close()
print("done", flush=True)
"""


def can_use_netns() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    if not shutil.which("ip"):
        return False, "iproute2 (ip) is not installed"
    if not shutil.which("tcpdump"):
        return False, "tcpdump is not installed"
    return True, ""


def run(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class NetnsPair:
    """Namespaces `<tag>s` (server) and `<tag>c` (client) on one veth link."""

    tag: str = field(default_factory=lambda: f"fpd{os.getpid() % 10000}x{next(_counter)}")
    net: int = 77
    server4: str = ""
    client4: str = ""
    server6: str = ""
    client6: str = ""
    procs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.srv, self.cli = f"{self.tag}s", f"{self.tag}c"
        self.vsrv, self.vcli = f"{self.tag}vs"[:15], f"{self.tag}vc"[:15]
        self.server4, self.client4 = f"10.{self.net}.0.1", f"10.{self.net}.0.2"
        self.server6, self.client6 = f"fd00:{self.net}::1", f"fd00:{self.net}::2"

    def ns(self, name: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", name, *cmd, **kw)

    def __enter__(self) -> NetnsPair:
        run("ip", "netns", "add", self.srv)
        run("ip", "netns", "add", self.cli)
        try:
            run("ip", "link", "add", self.vsrv, "netns", self.srv, "type", "veth", "peer", "name", self.vcli,
                "netns", self.cli)
            for name, dev, a4, a6 in ((self.srv, self.vsrv, self.server4, self.server6),
                                      (self.cli, self.vcli, self.client4, self.client6)):
                self.ns(name, "ip", "link", "set", "lo", "up")
                self.ns(name, "ip", "addr", "add", f"{a4}/24", "dev", dev)
                self.ns(name, "ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
                self.ns(name, "ip", "link", "set", dev, "up")
                # Offloads would hand tcpdump merged super-frames; keep frames real.
                self.ns(name, "sh", "-c", f"ethtool -K {dev} tso off gso off gro off 2>/dev/null || true")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for name in (self.srv, self.cli):
            run("ip", "netns", "del", name, check=False)

    def sysctl(self, name: str, key: str, value: str | int) -> None:
        self.ns(name, "sysctl", "-qw", f"{key}={value}")

    def set_mtu(self, mtu: int) -> None:
        self.ns(self.srv, "ip", "link", "set", self.vsrv, "mtu", str(mtu))
        self.ns(self.cli, "ip", "link", "set", self.vcli, "mtu", str(mtu))

    def start_listener(self) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.srv, sys.executable, "-c", LISTENER,
                              self.server4, self.server6], stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def capture(self, path: Path, bpf: str = "tcp port 25") -> subprocess.Popen:
        # --immediate-mode: otherwise frames wait in libpcap's ring for a timeout
        # that SIGINT can cut short, and the capture misses its tail.
        cmd = ["tcpdump", "-i", self.vsrv, "-s", "256", "-U", "--immediate-mode", "-w", str(path), bpf]
        p = subprocess.Popen(["ip", "netns", "exec", self.srv, *cmd], stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stderr is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "listening on" in p.stderr.readline():
                return p
        raise RuntimeError("tcpdump did not start")

    def stop_capture(self, p: subprocess.Popen) -> None:
        time.sleep(0.3)  # let the last frames reach the file
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)

    def connect(self, server: str, count: int = 1, rcvbuf: int = 0, first_port: int = 0) -> None:
        out = self.ns(self.cli, sys.executable, "-c", CLIENT, server, str(count), str(rcvbuf), str(first_port),
                      timeout=60)
        assert "done" in out.stdout, out.stderr


# One long-lived agent per namespace takes commands on stdin, so a sweep of
# ~140 variants costs one interpreter per side instead of a handful of
# subprocesses per variant: a sysctl is a write under /proc/sys (per network
# namespace for the agent's own namespace), an MTU an ioctl, a connection a
# socket call.  Each command answers "ok" or the error.
AGENT = r"""
import fcntl, os, socket, struct, sys, threading
SIOCSIFMTU = 0x8922
saved = {}
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 25)); s.listen(128)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"220 test.invalid ESMTP\r\n"); c.settimeout(2); c.recv(100)
        except OSError:
            pass
        c.close()
def sysctl(key, value):
    path = "/proc/sys/" + key.replace(".", "/")
    if key not in saved:
        saved[key] = open(path).read().strip()
    with open(path, "w") as f:
        f.write(value)
def connect(server, count, rcvbuf, first_port):
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    for i in range(count):
        s = socket.socket(fam, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind(("", first_port + i))
        s.settimeout(3)
        s.connect((server, 25))
        s.recv(100); s.sendall(b"QUIT\r\n"); s.close()
if sys.argv[1] == "listen":
    for fam, addr in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
        threading.Thread(target=serve, args=(fam, addr), daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.rstrip("\n").partition(" ")
    try:
        if cmd == "sysctl":
            sysctl(*arg.split(" ", 1))
        elif cmd == "reset":
            for key, value in saved.items():
                open("/proc/sys/" + key.replace(".", "/"), "w").write(value)
            saved.clear()
        elif cmd == "mtu":
            dev, mtu = arg.split()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si20x", dev.encode(), int(mtu)))
        elif cmd == "connect":
            server, count, rcvbuf, port = arg.split()
            connect(server, int(count), int(rcvbuf), int(port))
        else:
            raise ValueError(f"unknown command {cmd!r}")
        print("ok", flush=True)
    except Exception as exc:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
"""


class Agent:
    """A command loop in one namespace (AGENT above)."""

    def __init__(self, pair: NetnsPair, ns: str, *args: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", AGENT, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pair.procs.append(self.proc)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def __call__(self, *words: object) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == "ok", (words, answer)


# The labels the bundled database should give, from the rules (tcp-stack-rules.md 1.4-1.6): the window is
# floor(65535/MSS) segments with the default buffers (the generated "Linux 4.19 and newer" lines), and
# what a receive buffer makes of it otherwise.
NEW = "Linux 4.19 and newer"
FALLBACK = "Linux (by option layout)"  # no line: the family named by its option writer (matcher.FALLBACK_FLAVOR)
OPTION_SETS = {  # (tcp_timestamps, tcp_sack, tcp_window_scaling)
    "all": (1, 1, 1), "no-ts": (0, 1, 1), "no-sack": (1, 0, 1), "no-ws": (1, 1, 0),
    "ws-only": (0, 0, 1), "sack-only": (0, 1, 0), "ts-only": (1, 0, 0), "bare": (0, 0, 0),
}
MTUS = (1280, 1300, 1380, 1400, 1420, 1440, 1460, 1480, 1492, 1500, 2000, 4000, 9000, 1006, 576)  # v6: 1280+


def _sweep() -> list[dict]:
    out: list[dict] = []
    for mtu in MTUS:
        for opts, (ts, sack, ws) in OPTION_SETS.items():
            out.append({"name": f"mtu{mtu}-{opts}", "mtu": mtu, "net.ipv4.tcp_timestamps": ts,
                        "net.ipv4.tcp_sack": sack, "net.ipv4.tcp_window_scaling": ws})
    return out


# Every variant's client SYNs and the listener's SYN+ACKs, IPv4 and IPv6 (IPv6 only at MTU 1280 and over:
# below it the kernel drops the IPv6 addresses).  "syn"/"synack": the expected label when not NEW.
VARIANTS: list[dict] = [
    {"name": "defaults"},
    {"name": "ttl128", "net.ipv4.ip_default_ttl": 128, "hop_limit": 128},
    {"name": "ttl255", "net.ipv4.ip_default_ttl": 255, "hop_limit": 255},
    {"name": "ecn", "net.ipv4.tcp_ecn": 1},
    {"name": "flowlabel0", "net.ipv6.auto_flowlabels": 0},
    # tcp_rmem's maximum sets the scale (7 by default; 8 at 16 MiB, 9 at 32 MiB); its default the window.
    {"name": "rmem-max16m", "net.ipv4.tcp_rmem": "4096 131072 16777216"},
    {"name": "rmem-max32m", "net.ipv4.tcp_rmem": "4096 131072 33554432"},
    {"name": "rmem-max1m", "net.ipv4.tcp_rmem": "4096 131072 1048576"},
    # tcp_rmem[1] 87380 (the pre-4.20 default): 29 segments (30 of IPv6's 1440), a whole-segment window the
    # rule gives at MSS 2185-2259 too; 16384: 5 segments (generic); 262144: the 65535 cap (Android's line).
    {"name": "rmem-def87380", "net.ipv4.tcp_rmem": "4096 87380 6291456"},
    {"name": "rmem-def16k", "net.ipv4.tcp_rmem": "4096 16384 4194304", "syn": "Linux 2.2.x-3.x"},
    {"name": "rmem-def256k", "net.ipv4.tcp_rmem": "4096 262144 6291456", "syn": "Linux Android 8 and newer"},
    # SO_RCVBUF before connect(): the kernel doubles it; the window is half of that in whole segments, capped at
    # 65535, and the scale shrinks with it (captured: ws 0 up to 32 KiB, 1 at 64 KiB, 5 at 1 MiB).
    {"name": "rcvbuf2k", "rcvbuf": 2048, "syn": "Linux 2.2.x-3.x"},
    {"name": "rcvbuf8k", "rcvbuf": 8192, "syn": "Linux 2.2.x-3.x"},
    {"name": "rcvbuf32k", "rcvbuf": 32768, "syn": "Linux 2.2.x"},  # 22 segments, scale 0: p0f's 2.2 line
    # 44 segments of 1460 at scale 1: p0f's Android line (IPv6: 45 of 1440, the 4.19+ line)
    {"name": "rcvbuf64k", "rcvbuf": 65536, "syn": "Linux (Android)", "syn6": NEW},
    {"name": "rcvbuf256k", "rcvbuf": 262144, "syn": "Linux Android 8 and newer"},
    {"name": "rcvbuf1m", "rcvbuf": 1048576, "syn": "Linux Android 8 and newer"},
    # a small buffer with options off: windows no line has, named by the option writer (the family fallback)
    {"name": "rcvbuf8k-no-sack", "rcvbuf": 8192, "net.ipv4.tcp_sack": 0, "syn": FALLBACK},
    {"name": "rcvbuf8k-ws-only", "rcvbuf": 8192, "net.ipv4.tcp_timestamps": 0, "net.ipv4.tcp_sack": 0,
     "syn": FALLBACK},
    {"name": "rcvbuf2k-no-ws", "rcvbuf": 2048, "net.ipv4.tcp_window_scaling": 0, "syn": FALLBACK},
    # the listener's own tcp_rmem sets the SYN+ACK's scale ("server:" keys are the server's sysctls)
    {"name": "server-rmem16m", "server:net.ipv4.tcp_rmem": "4096 131072 16777216"},
    {"name": "server-rmem-def16k", "server:net.ipv4.tcp_rmem": "4096 16384 4194304"},
    {"name": "server-no-ts", "server:net.ipv4.tcp_timestamps": 0},
    {"name": "server-bare", "server:net.ipv4.tcp_timestamps": 0, "server:net.ipv4.tcp_sack": 0,
     "server:net.ipv4.tcp_window_scaling": 0},
    *_sweep(),
]


def expected(variant: dict, syn: bool, ipv6: bool = False) -> str:
    key = "syn" if syn else "synack"
    return variant.get(key + "6", variant.get(key, NEW)) if ipv6 else variant.get(key, NEW)


def capture_kernel_syns(path: Path, variants: list[dict] = VARIANTS, per_variant: int = 2, net: int = 77) -> list:
    """Capture real client SYNs (and server SYN+ACKs) for each variant, in one capture with one agent per
    namespace; returns what was sent: (variant name, server address, first client port, count)."""
    sent = []
    with NetnsPair(net=net) as pair:
        server = Agent(pair, pair.srv, "listen", pair.server4, pair.server6)
        client = Agent(pair, pair.cli, "client")
        cap = pair.capture(path)
        v6 = True
        try:
            for i, var in enumerate(variants):
                mtu = var.get("mtu", 1500)
                server("mtu", pair.vsrv, mtu)
                client("mtu", pair.vcli, mtu)
                if mtu >= 1280 and not v6:  # the addresses went with an MTU under IPv6's minimum
                    for name, dev, addr in ((pair.srv, pair.vsrv, pair.server6), (pair.cli, pair.vcli, pair.client6)):
                        pair.ns(name, "ip", "-6", "addr", "replace", f"{addr}/64", "dev", dev, "nodad")
                v6 = mtu >= 1280
                for key, value in var.items():
                    if key.startswith("net."):
                        client("sysctl", key, value)
                    elif key.startswith("server:"):
                        server("sysctl", key[len("server:"):], value)
                if v6:  # under 1280 the device has no IPv6 settings at all
                    client("sysctl", f"net.ipv6.conf.{pair.vcli}.hop_limit", var.get("hop_limit", 64))
                for address in (pair.server4, pair.server6) if v6 else (pair.server4,):
                    port = 20000 + i * 10 + (5 if ":" in address else 0)
                    client("connect", address, per_variant, var.get("rcvbuf", 0), port)
                    sent.append((var["name"], address, port, per_variant))
                client("reset")
                server("reset")
        finally:
            pair.stop_capture(cap)
    return sent


if __name__ == "__main__":
    # python -m tests.netns OUT.pcap : make a sample capture of real kernel SYNs
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "kernel-syn.pcap")
    ok, why = can_use_netns()
    if not ok:
        sys.exit(f"cannot make the sample: {why}")
    capture_kernel_syns(out)
    print(out)
