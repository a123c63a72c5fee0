"""The deployment, done the way the docs say, on Debian's own packages.

As root and under `flock /tmp/fpd-peers.lock` (it uses port 25, Postfix's own
queue directory /var/spool/postfix, /run/fingerprintd, rspamd and amavisd):

* the setup snippet of README.md runs as written (sysusers, tmpfiles, units);
* the three units are started as systemd would start them: their ExecStart
  (only the binary's path is this tree's), as their User/Group/SupplementaryGroups,
  with their ambient and bounding capabilities, NoNewPrivileges, LimitNOFILE and
  UMask (setpriv and prlimit; the mount sandboxing is left to systemd-analyze);
* Debian's Postfix configuration (a copy of /etc/postfix: Debian's main.cf and
  master.cf, smtpd chrooted into /var/spool/postfix, chroot files synced by
  Debian's configure-instance.sh) with contrib/postfix/README.md's main.cf and
  master.cf blocks appended as written, plus a test-only virtual mailbox;
* mail from the README's network namespace (198.51.100.2, local to no filter),
  with forged headers: the delivered copy carries the milter's and the policy
  service's headers for that connection and not the forged ones;
* Debian's rspamd as `_rspamd`, joined to group fingerprintd by the README's
  snippet, with the README's p0f.conf, reads the service's p0f socket;
* Debian's amavisd-new with the README's `$os_fingerprint_method` line asks
  `--analyzer-udp` about the XFORWARDed client and adds X-Amavis-OS-Fingerprint.
"""

from __future__ import annotations

import email
import email.utils
import grp
import json
import os
import pwd
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import snippets
from tests.conftest import ROOT, need
from tests.helpers import TEST_MAILBOX_CF, delivered_to, free_port, rspamc_symbols, wait_until

FINGERPRINTD = Path(sys.executable).parent / "fingerprintd"
API = "/run/fingerprintd/api.sock"
SOCKET_DIRS = (Path("/run/fingerprintd"), Path("/var/spool/postfix/fingerprintd"))
HOST, CLIENT = "198.51.100.1", "198.51.100.2"  # the README's one-machine namespace
FORGED = "X-OS-Fingerprint: FreeBSD 9.x; dist: 0; score: -1"
FORGED_SCORE = "X-OS-Fingerprint-Score: -1"
# Test only: where mail for test.example goes, and Postfix's log in a file.
TEST_MAIN_CF = """
# --- test only ---
""" + TEST_MAILBOX_CF + """maillog_file_prefixes = {d}
maillog_file = {d}/maillog
smtpd_peername_lookup = no
"""
AMAVIS_CF = """use strict;
$MYHOME = '{d}/amavis';
$TEMPBASE = "$MYHOME/tmp";
$db_home = "$MYHOME/db";
$QUARANTINEDIR = undef;
$pid_file = "$MYHOME/amavisd.pid";
$lock_file = "$MYHOME/amavisd.lock";
$inet_socket_port = {port};
$inet_socket_bind = '127.0.0.1';
$forward_method = 'smtp:[127.0.0.1]:25';
$notify_method = $forward_method;
@bypass_virus_checks_maps = (1);
@bypass_spam_checks_maps = (1);
@local_domains_acl = ('test.example');
$max_servers = 1;
$DO_SYSLOG = 0;
$LOGFILE = "$MYHOME/amavis.log";
$log_level = 3;
$enable_db = 0;
$enable_global_cache = 0;
$myhostname = 'mx.test.example';
$mydomain = 'test.example';
# --- README.md, as written ---
{readme}
1;
"""


def unit_command(name: str) -> tuple[list[str], int]:
    """The command line systemd would run for a unit, and its umask."""
    keys = snippets.unit(snippets.UNITS / name)
    argv = snippets.commands(keys["ExecStart"])[0]
    assert argv[0] == "/usr/local/bin/fingerprintd", argv
    argv[0] = str(FINGERPRINTD)  # this tree's install instead of pip install's
    user = keys["User"]
    groups = {g.gr_name for g in grp.getgrall() if user in g.gr_mem} | set(keys.get("SupplementaryGroups", "").split())
    caps = [c.lower().removeprefix("cap_") for c in keys.get("AmbientCapabilities", "").split()]
    bounding = [c.lower().removeprefix("cap_") for c in keys.get("CapabilityBoundingSet", "").split()]
    nofile = keys["LimitNOFILE"]
    cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "setpriv", f"--reuid={user}",
           f"--regid={keys.get('Group', user)}",
           f"--groups={','.join(sorted(groups))}" if groups else "--clear-groups",
           "--bounding-set=" + ",".join(["-all", *(f"+{c}" for c in bounding)])]
    if caps:
        cmd += ["--inh-caps=" + ",".join(f"+{c}" for c in caps), "--ambient-caps=" + ",".join(f"+{c}" for c in caps)]
    if keys.get("NoNewPrivileges") == "yes":
        cmd.append("--no-new-privs")
    return cmd + argv, int(keys.get("UMask", "0022"), 8)


class Deployment:
    def __init__(self, d: Path) -> None:
        self.d = d
        self.etc = d / "etc"
        self.procs: dict[str, subprocess.Popen] = {}
        self.installed: list[Path] = []
        self.port = random.randrange(42000, 60000, 10)

    def sh(self, text: str, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run(["sh", "-ec", text], cwd=ROOT, capture_output=True, text=True, timeout=60, **kw)
        assert out.returncode == 0, text + out.stdout + out.stderr
        return out

    def setup(self) -> None:
        setup = snippets.snippet(*snippets.SETUP)
        for cmd in snippets.commands(setup):
            if cmd[:1] == ["install"]:  # install -D -m 644 -t DIR FILE...: remove what was not there before
                dest = Path(cmd[cmd.index("-t") + 1])
                self.installed += [dest / Path(src).name for src in cmd[cmd.index("-t") + 2:]
                                   if not (dest / Path(src).name).exists()]
        self.sh(setup)

    def start_unit(self, name: str) -> None:
        cmd, umask = unit_command(name)
        log = open(self.d / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=log, cwd="/",
                                            preexec_fn=lambda: os.umask(umask))

    def wait_serving(self) -> None:
        def serving() -> bool:
            proc = self.procs["fingerprintd.service"]
            assert proc.poll() is None, "serve exited: " + self.log("fingerprintd.service.log")[-2000:]
            return '"msg": "serving"' in self.log("fingerprintd.service.log").rpartition('"msg": "stopping"')[2]

        wait_until(serving, 30, what="serve did not start")

    def stop_unit(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        proc.wait(20)

    def postconf(self, setting: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), "-e", setting], check=True, capture_output=True, timeout=30)
        subprocess.run(["postfix", "-c", str(self.etc), "reload"], check=True, capture_output=True, timeout=30)

    def log(self, name: str) -> str:
        path = self.d / name
        return path.read_text(errors="replace") if path.exists() else ""

    def start_postfix(self) -> None:
        shutil.copytree("/etc/postfix", self.etc)
        for sub in ("vmail",):
            (self.d / sub).mkdir()
        os.chown(self.d / "vmail", 65534, 65534)
        with open(self.etc / "main.cf", "a") as f:
            f.write("\n# --- contrib/postfix/README.md, as written ---\n" + snippets.snippet(*snippets.MAIN_CF))
            f.write(TEST_MAIN_CF.format(d=self.d))
        with open(self.etc / "master.cf", "a") as f:
            f.write("\n# --- contrib/postfix/README.md, as written ---\n" + snippets.snippet(*snippets.MASTER_CF))
        env = dict(os.environ, MAIL_CONFIG=str(self.etc))
        # Debian's own preparation of the chroot (what postfix@.service runs first).
        subprocess.run(["/usr/lib/postfix/configure-instance.sh", "-"], env=env, check=True, capture_output=True,
                       timeout=60)
        out = subprocess.run(["postfix", "-c", str(self.etc), "start"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, timeout=30)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def send(self, port: int, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", "mailclient", "swaks", "--server", HOST, "--local-port",
                               str(port), "--from", "sender@example.net", "--to", "user@test.example",
                               "--header", f"Subject: deploy {port}", "--body", "hello", *extra],
                              capture_output=True, text=True, timeout=60)

    def delivered(self, subject: str) -> email.message.Message:
        return wait_until(lambda: delivered_to(self.d / "vmail" / "user", subject), 30,
                     what=f"no delivery of {subject!r}: {self.log('maillog')[-3000:]}")


def _postfix_running() -> bool:
    return subprocess.run(["postfix", "status"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def deployed():
    need(os.geteuid() == 0, "needs root (system users, Postfix's queue directory, capture, namespaces)")
    for tool in ("postfix", "swaks", "ip", "setpriv", "prlimit", "systemd-sysusers", "systemd-tmpfiles"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (make test installs the Debian packages)")
    need(not _postfix_running(), "the system's Postfix is running: it owns /var/spool/postfix and port 25")
    need(not any(p.exists() for p in SOCKET_DIRS), "a real fingerprintd deployment exists (/run/fingerprintd)")
    need(subprocess.run(["ip", "netns", "pids", "mailclient"], capture_output=True).returncode != 0,
         "network namespace 'mailclient' exists already")
    d = Path(tempfile.mkdtemp(prefix="fpd-deploy-"))
    os.chmod(d, 0o755)  # Postfix's virtual(8) (uid 65534) and the units' users must reach it
    dep = Deployment(d)
    try:
        dep.setup()
        dep.start_unit("fingerprintd.service")
        dep.wait_serving()
        dep.start_unit("fingerprintd-milter.service")
        dep.start_unit("fingerprintd-policyd.service")
        for sock in ("milter.sock", "policy.sock"):
            wait_until(lambda s=sock: (SOCKET_DIRS[1] / s).exists(), 30, what=sock)
        dep.start_postfix()
        dep.sh(snippets.snippet(*snippets.NETNS))
        yield dep
    finally:
        dep.stop()
        subprocess.run(["ip", "netns", "del", "mailclient"], capture_output=True)
        for path in dep.installed:
            path.unlink(missing_ok=True)
        for path in SOCKET_DIRS:
            shutil.rmtree(path, ignore_errors=True)
        if not os.environ.get("FPD_KEEP"):  # FPD_KEEP=1 keeps the logs
            shutil.rmtree(d, ignore_errors=True)


def test_units_verify(tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed (Debian's systemd)")
    # verify insists that ExecStart's binary exists: point it at this tree's.
    for path in snippets.UNITS.glob("*.service"):
        (tmp_path / path.name).write_text(path.read_text().replace("/usr/local/bin/fingerprintd", str(FINGERPRINTD)))
    out = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.glob("*.service")))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    names = {p.name for p in snippets.UNITS.glob("*.service")}
    assert names == {"fingerprintd.service", "fingerprintd-milter.service", "fingerprintd-policyd.service"}


def _status_as(pid: int, uid: int) -> str:
    """/proc/PID/status once the process runs as `uid` (prlimit and setpriv exec in place)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return status if f"Uid:\t{uid}\t" in status else ""


def test_users_groups_and_socket_modes(deployed):
    """Who can reach which socket, as the units left them."""
    serve, mail = pwd.getpwnam("fingerprintd"), pwd.getpwnam("fingerprintd-mail")
    assert "fingerprintd-mail" in grp.getgrnam("fingerprintd").gr_mem
    run_dir, spool_dir = (os.stat(p) for p in SOCKET_DIRS)
    assert (run_dir.st_uid, run_dir.st_gid, run_dir.st_mode & 0o7777) == (serve.pw_uid, serve.pw_gid, 0o750)
    postfix_gid = grp.getgrnam("postfix").gr_gid
    assert (spool_dir.st_uid, spool_dir.st_gid, spool_dir.st_mode & 0o7777) == (mail.pw_uid, postfix_gid, 0o2750)
    for name in ("api.sock", "p0f.sock"):
        st = os.stat(SOCKET_DIRS[0] / name)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (serve.pw_uid, serve.pw_gid, 0o660), name
    for name in ("milter.sock", "policy.sock"):
        st = os.stat(SOCKET_DIRS[1] / name)
        assert (st.st_uid, st.st_gid) == (mail.pw_uid, postfix_gid), name
        assert st.st_mode & 0o006 == 0o006, name  # smtpd connects through the directory's group
    # The processes run as their users, with the limits and capabilities of their units.
    for name, user, caps in (("fingerprintd.service", serve, 0x2000), ("fingerprintd-milter.service", mail, 0),
                             ("fingerprintd-policyd.service", mail, 0)):
        pid = deployed.procs[name].pid
        status = wait_until(lambda p=pid, u=user.pw_uid: _status_as(p, u), 10, what=name)
        fields = dict(line.split(":\t", 1) for line in status.splitlines())
        assert int(fields["CapEff"], 16) == caps and int(fields["CapBnd"], 16) == caps, (name, fields["CapEff"])
        assert fields["NoNewPrivs"].strip() == "1", name
        nofile = snippets.unit(snippets.UNITS / name)["LimitNOFILE"]
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(ln.startswith("Max open files") and ln.split()[3] == nofile for ln in limits.splitlines()), limits


def test_postconf_has_no_warnings(deployed):
    """An undefined parameter (the old `${other_milters}`) warns on every postfix command."""
    out = subprocess.run(["postconf", "-c", str(deployed.etc), "-n"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    master = subprocess.run(["postconf", "-c", str(deployed.etc), "-M", "smtp/inet"], capture_output=True,
                            text=True, timeout=30).stdout.split()
    assert master[:5] == ["smtp", "inet", "n", "-", "y"], master  # Debian's chrooted smtpd, unchanged
    sub = subprocess.run(["postconf", "-c", str(deployed.etc), "-P", "submission/inet/smtpd_milters"],
                         capture_output=True, text=True, timeout=30)
    assert sub.stdout.strip() == "submission/inet/smtpd_milters =", sub.stdout + sub.stderr


def test_mail_from_another_host_is_tagged_and_forgeries_removed(deployed):
    port = deployed.port
    sent = deployed.send(port, "--add-header", FORGED, "--add-header", FORGED_SCORE)
    assert sent.returncode == 0, sent.stdout[-3000:] + sent.stderr[-2000:]
    msg = deployed.delivered(f"deploy {port}")
    found = subprocess.run([str(FINGERPRINTD), "lookup", CLIENT, "--port", str(port), "--server", f"unix:{API}",
                            "--json"], capture_output=True, text=True, timeout=30)
    assert found.returncode == 0, found.stdout + found.stderr
    os_name = json.loads(found.stdout)["observation"]["label"]
    values = msg.get_all("X-OS-Fingerprint")
    # The policy service's PREPEND and the milter's header, both for this connection; the forged one is gone.
    assert values is not None and len(values) == 2, msg.as_string()[:3000]
    assert all(v.startswith(os_name) for v in values), (os_name, values)
    assert msg.get_all("X-OS-Fingerprint-Score") is not None and len(msg.get_all("X-OS-Fingerprint-Score")) == 1
    assert "FreeBSD" not in msg.as_string() and "-1" not in msg.get_all("X-OS-Fingerprint-Score")
    # The milter (the only one adding the score header) was reached through the chroot-relative path.
    assert msg["X-OS-Fingerprint-Score"] == json.loads(found.stdout)["verdict"]["header"].rpartition("score: ")[2]
    assert "warning" not in deployed.log("maillog"), deployed.log("maillog")[-3000:]


@pytest.fixture
def rspamd_user(deployed):
    need(shutil.which("rspamd") is not None and shutil.which("rspamc") is not None,
         "rspamd is not installed (make test installs Debian's rspamd when root)")
    need(shutil.which("adduser") is not None, "adduser is not installed")
    deployed.sh(snippets.snippet(*snippets.RSPAMD_GROUP))
    yield
    subprocess.run(["gpasswd", "-d", "_rspamd", "fingerprintd"], capture_output=True, timeout=30)


def test_rspamd_reads_the_p0f_socket_as_its_own_user(deployed, rspamd_user):
    conf = deployed.d / "rspamd"
    for sub in ("local.d", "run", "db", "log"):
        (conf / sub).mkdir(parents=True)
    port, ctl = free_port(), free_port()
    (conf / "local.d" / "p0f.conf").write_text(snippets.snippet(*snippets.RSPAMD_CONF))
    (conf / "local.d" / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    (conf / "local.d" / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{ctl}";\n')
    (conf / "local.d" / "worker-proxy.inc").write_text("enabled = false;\n")
    (conf / "local.d" / "logging.inc").write_text(f'type = "file";\nfilename = "{conf}/log/rspamd.log";\n')
    (conf / "local.d" / "options.inc").write_text('dns { nameserver = ["127.0.0.1:53"]; timeout = 0.2s; }\n')
    for sub in ("run", "db", "log"):
        shutil.chown(conf / sub, "_rspamd", "_rspamd")
    first = deployed.port + 1
    assert deployed.send(first).returncode == 0  # a SYN from the client for the IP-only p0f query
    proc = subprocess.Popen(["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "--var",
                             f"LOCAL_CONFDIR={conf}", "--var", f"RUNDIR={conf}/run", "--var", f"DBDIR={conf}/db",
                             "--var", f"LOGDIR={conf}/log", "-c", "/etc/rspamd/rspamd.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            assert proc.poll() is None, "rspamd exited: " + deployed.log("rspamd/log/rspamd.log")[-2000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(up, 90, 0.5, "rspamd did not start")
        message = f"From: a@example.org\r\nTo: b@example.net\r\nSubject: deploy {first}\r\n\r\nhello\r\n".encode()
        lines, text = rspamc_symbols(port, CLIENT, message)
        assert "link=Ethernet or modem" in lines.get("P0F", ""), text + deployed.log("rspamd/log/rspamd.log")[-3000:]
        # It was rspamd's worker, as _rspamd, that read the socket (no -i: workers never run as root).
        workers = subprocess.run(["ps", "-o", "user=,args=", "--ppid", str(proc.pid)], capture_output=True,
                                 text=True).stdout.splitlines()
        assert workers and all(w.split()[0] == "_rspamd" for w in workers), workers
    finally:
        proc.terminate()
        proc.wait(30)


def test_amavisd_asks_the_analyzer_and_adds_its_header(deployed):
    need(shutil.which("amavisd") is not None, "amavisd-new is not installed (make test installs it as root)")
    port = deployed.port + 2
    # The client's connection to Postfix (its SYN is what amavisd asks about, by XFORWARD's ADDR and PORT).
    assert deployed.send(port).returncode == 0
    home = deployed.d / "amavis"
    for sub in ("tmp", "db"):
        (home / sub).mkdir(parents=True)
    amavis_port = free_port()
    cf = deployed.d / "amavisd.conf"
    cf.write_text(AMAVIS_CF.replace("{d}", str(deployed.d)).replace("{port}", str(amavis_port))
                  .replace("{readme}", snippets.snippet(*snippets.AMAVIS_CONF)))
    os.chmod(cf, 0o644)
    shutil.chown(home, "amavis", "amavis")
    for sub in ("tmp", "db"):
        shutil.chown(home / sub, "amavis", "amavis")
    # Debian's own configuration first, in the order amavisd reads it without -c.
    debian = [f for conf_d in ("/usr/share/amavis/conf.d", "/etc/amavis/conf.d")
              for f in subprocess.run(["run-parts", "--list", conf_d], capture_output=True, text=True,
                                      check=True).stdout.split()]
    args = [a for f in [*debian, str(cf)] for a in ("-c", f)]
    proc = subprocess.Popen(["amavisd", *args, "foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            assert proc.poll() is None, "amavisd exited: " + proc.stderr.read().decode()[-3000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", amavis_port)) == 0

        wait_until(up, 90, 0.5, "amavisd did not start")
        subject = f"amavis {port}"
        with smtplib.SMTP("127.0.0.1", amavis_port, timeout=60) as smtp:
            smtp.ehlo("mx.test.example")
            # What Postfix's amavis transport sends with smtp_send_xforward_command=yes.
            code, reply = smtp.docmd("XFORWARD", f"NAME=client.example ADDR={CLIENT} PORT={port}")
            assert code == 250, reply
            smtp.sendmail("sender@example.net", ["user@test.example"],
                          f"From: sender@example.net\r\nTo: user@test.example\r\nSubject: {subject}\r\n"
                          f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{port}@example.net>\r\n\r\nhello\r\n")
        msg = deployed.delivered(subject)
        value = msg["X-Amavis-OS-Fingerprint"]
        found = subprocess.run([str(FINGERPRINTD), "lookup", CLIENT, "--port", str(port), "--server", f"unix:{API}",
                                "--json"], capture_output=True, text=True, timeout=30)
        os_name = json.loads(found.stdout)["observation"]["label"]
        assert value is not None and value.startswith(os_name + "; dist: "), msg.as_string()[:3000]
        assert value.endswith(f", [{CLIENT}]:{port}"), value
        # amavisd's own record of the answer it got (and would hand to SpamAssassin).
        assert f"OS_fingerprint: {CLIENT} " in deployed.log("amavis/amavis.log")
    finally:
        proc.terminate()
        proc.wait(30)


def _no_fingerprint_headers(msg: email.message.Message) -> bool:
    return msg.get_all("X-OS-Fingerprint") is None and msg.get_all("X-OS-Fingerprint-Score") is None


def test_service_down_mail_flows_and_forgeries_are_still_removed(deployed):
    port = deployed.port + 3
    deployed.stop_unit("fingerprintd.service")
    try:
        sent = deployed.send(port, "--add-header", FORGED, "--add-header", FORGED_SCORE)
        assert sent.returncode == 0, sent.stdout[-3000:]  # fail open: accepted, not deferred
        msg = deployed.delivered(f"deploy {port}")
        assert _no_fingerprint_headers(msg), msg.as_string()[:3000]  # the milter removed the forgeries
    finally:
        deployed.start_unit("fingerprintd.service")
        deployed.wait_serving()


def test_policy_service_alone_never_leaves_a_forged_header_first(deployed):
    """Without a verdict the policy service still PREPENDs (no rule scores it): the forgery is never first."""
    port = deployed.port + 4
    milters = subprocess.run(["postconf", "-c", str(deployed.etc), "-h", "smtpd_milters"], capture_output=True,
                             text=True, check=True).stdout.strip()
    deployed.postconf("smtpd_milters =")
    deployed.stop_unit("fingerprintd.service")
    try:
        sent = deployed.send(port, "--add-header", FORGED)
        assert sent.returncode == 0, sent.stdout[-3000:]
        msg = deployed.delivered(f"deploy {port}")
        values = msg.get_all("X-OS-Fingerprint") or [""]
        assert values[0].startswith("unavailable"), msg.as_string()[:3000]
        assert values[1:] == [FORGED.partition(": ")[2]]  # a PREPEND cannot remove it; the rules read the first
    finally:
        deployed.postconf(f"smtpd_milters = {milters}")
        deployed.start_unit("fingerprintd.service")
        deployed.wait_serving()


def test_headers_right_after_the_service_restarts(deployed):
    """The filters' gRPC channels reconnect at once, not after their backoff (seen: ~9 s without verdicts)."""
    port = deployed.port + 5
    deployed.stop_unit("fingerprintd.service")
    assert deployed.send(port).returncode == 0  # the filters find the service gone
    deployed.delivered(f"deploy {port}")
    deployed.start_unit("fingerprintd.service")
    deployed.wait_serving()
    sent = deployed.send(port + 1)
    assert sent.returncode == 0, sent.stdout[-3000:]
    msg = deployed.delivered(f"deploy {port + 1}")
    assert len(msg.get_all("X-OS-Fingerprint") or []) == 2, msg.as_string()[:3000]
