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


# The client sysctl variants exercised, each with IPv4 and IPv6 connections.
VARIANTS: list[dict] = [
    {"name": "defaults"},
    {"name": "ttl128", "net.ipv4.ip_default_ttl": 128, "hop_limit": 128},
    {"name": "no-timestamps", "net.ipv4.tcp_timestamps": 0},
    {"name": "no-sack", "net.ipv4.tcp_sack": 0},
    {"name": "no-wscale", "net.ipv4.tcp_window_scaling": 0},
    {"name": "ecn", "net.ipv4.tcp_ecn": 1},
    {"name": "small-rmem", "net.ipv4.tcp_rmem": "4096 65536 1048576"},
    {"name": "bare", "net.ipv4.tcp_timestamps": 0, "net.ipv4.tcp_sack": 0, "net.ipv4.tcp_window_scaling": 0},
    {"name": "flowlabel0", "net.ipv6.auto_flowlabels": 0},
    {"name": "rcvbuf8k", "rcvbuf": 8192},
    {"name": "mtu1400", "mtu": 1400},
    {"name": "mtu9000", "mtu": 9000},
    # The window's MSS multiple at other MTUs (1460: 46; 1440: 46 over IPv4, 47 over IPv6; 1400: 48),
    # for each option set, and the scale that tcp_rmem's maximum sets (7, 8, 9), alone and at those MTUs.
    {"name": "mtu1440", "mtu": 1440},
    {"name": "no-timestamps-mtu1440", "net.ipv4.tcp_timestamps": 0, "mtu": 1440},
    {"name": "no-timestamps-mtu1400", "net.ipv4.tcp_timestamps": 0, "mtu": 1400},
    {"name": "no-sack-mtu1440", "net.ipv4.tcp_sack": 0, "mtu": 1440},
    {"name": "no-sack-mtu1400", "net.ipv4.tcp_sack": 0, "mtu": 1400},
    {"name": "no-wscale-mtu1440", "net.ipv4.tcp_window_scaling": 0, "mtu": 1440},
    {"name": "no-wscale-mtu1400", "net.ipv4.tcp_window_scaling": 0, "mtu": 1400},
    {"name": "bare-mtu1440", "net.ipv4.tcp_timestamps": 0, "net.ipv4.tcp_sack": 0,
     "net.ipv4.tcp_window_scaling": 0, "mtu": 1440},
    {"name": "bare-mtu1400", "net.ipv4.tcp_timestamps": 0, "net.ipv4.tcp_sack": 0,
     "net.ipv4.tcp_window_scaling": 0, "mtu": 1400},
    {"name": "rmem6m", "net.ipv4.tcp_rmem": "4096 131072 6291456"},
    {"name": "rmem8m", "net.ipv4.tcp_rmem": "4096 131072 8388608"},
    {"name": "rmem16m", "net.ipv4.tcp_rmem": "4096 131072 16777216"},
    {"name": "mtu1460", "mtu": 1460},
    {"name": "rmem6m-mtu1440", "net.ipv4.tcp_rmem": "4096 131072 6291456", "mtu": 1440},
    {"name": "rmem8m-mtu1440", "net.ipv4.tcp_rmem": "4096 131072 8388608", "mtu": 1440},
    {"name": "rmem16m-mtu1440", "net.ipv4.tcp_rmem": "4096 131072 16777216", "mtu": 1440},
    {"name": "rmem6m-mtu1400", "net.ipv4.tcp_rmem": "4096 131072 6291456", "mtu": 1400},
    {"name": "rmem8m-mtu1400", "net.ipv4.tcp_rmem": "4096 131072 8388608", "mtu": 1400},
    {"name": "rmem16m-mtu1400", "net.ipv4.tcp_rmem": "4096 131072 16777216", "mtu": 1400},
    {"name": "no-sack-mtu1460", "net.ipv4.tcp_sack": 0, "mtu": 1460},
    {"name": "no-wscale-mtu1460", "net.ipv4.tcp_window_scaling": 0, "mtu": 1460},
    # The listener's own tcp_rmem sets the SYN+ACK's scale ("server:" keys are the server's sysctls).
    {"name": "server-rmem8m", "server:net.ipv4.tcp_rmem": "4096 131072 8388608"},
    {"name": "server-rmem16m", "server:net.ipv4.tcp_rmem": "4096 131072 16777216"},
]


def capture_kernel_syns(path: Path, variants: list[dict] = VARIANTS, per_variant: int = 2, net: int = 77) -> list:
    """Capture real client SYNs (and server SYN+ACKs) for each variant; returns what was sent."""
    sent = []
    with NetnsPair(net=net) as pair:
        pair.start_listener()
        cap = pair.capture(path)
        try:
            for i, var in enumerate(variants):
                pair.set_mtu(var.get("mtu", 1500))
                for key, value in var.items():
                    if key.startswith("net."):
                        pair.sysctl(pair.cli, key, value)
                    elif key.startswith("server:"):
                        pair.sysctl(pair.srv, key[len("server:"):], value)
                pair.sysctl(pair.cli, f"net.ipv6.conf.{pair.vcli}.hop_limit", var.get("hop_limit", 64))
                for server in (pair.server4, pair.server6):
                    port = 30000 + i * 100 + (50 if ":" in server else 0)
                    pair.connect(server, per_variant, var.get("rcvbuf", 0), port)
                    sent.append((var["name"], server, port, per_variant))
                for key in var:
                    if key.startswith("net."):
                        # Fresh namespace defaults for the next variant.
                        default = pair.ns(pair.srv, "sysctl", "-n", key).stdout.strip()
                        pair.sysctl(pair.cli, key, default)
                    elif key.startswith("server:"):
                        default = pair.ns(pair.cli, "sysctl", "-n", key[len("server:"):]).stdout.strip()
                        pair.sysctl(pair.srv, key[len("server:"):], default)
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
