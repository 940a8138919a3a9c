"""Drive deploy/haproxy.cfg and deploy/nginx.conf against a stub worker on 127.0.0.1.

    python3 deploy/check_proxies.py CERT_PEM

First `haproxy -c` and `nginx -t` on the files as shipped. Then each file is copied with only
its addresses changed (listeners and servers moved to free loopback ports; HAProxy keeps its TLS
listener, with the test certificate CERT_PEM, and its process maxconn is lowered to fit a
sandbox's file limit), started,
and asked for every route: the telephony WebSocket routes reach the worker, the routes the
public side must not serve answer 404 without reaching it, HAProxy's `fleet_available` check
takes a worker with no free slot out and accepts one with 17+, and nginx forwards `Upgrade`
only when the client asks for it. Standard library only. Starts and stops its own processes.
"""

from __future__ import annotations

import http.client
import http.server
import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

DEPLOY = pathlib.Path(__file__).resolve().parent
TELEPHONY = ["/ws/", "/exotel/", "/twilio/", "/telnyx/", "/plivo/", "/vonage/"]
# Not on the public side of HAProxy (contract §10: 404 for /attach and /livekit/*).
HAPROXY_404 = ["/attach", "/livekit/dispatch", "/livekit/dialout", "/livekit/widget", "/admin/outbox",
               "/metrics", "/recordings/2025/01/01/x.wav", "/health", "/"]
DEADLINE_S = 8.0


class Stub:
    """A worker stand-in: /health/fleet with a settable fleet_available, 200 elsewhere, and a
    log of what reached it (path and Connection header)."""

    def __init__(self) -> None:
        self.available = 120
        self.seen: list[tuple[str, str, str]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path == "/health/fleet":
                    body = ('{"status":"ok","fleet_calls":0,"fleet_max":200,"fleet_available":%d,'
                            '"workers":[]}' % stub.available).encode()
                else:
                    stub.seen.append((self.command, self.path, self.headers.get("Connection", "")))
                    body = b"stub"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reached(self, path: str) -> bool:
        return any(p == path for _, p, _ in self.seen)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, path: str, method: str = "GET", tls: bool = False, headers=None) -> tuple[int, bytes]:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as e:
        return 0, str(e).encode()
    finally:
        conn.close()


def wait_status(port: int, path: str, want: int, tls: bool = False) -> int:
    """Polls until `path` answers `want` (health checks and start-up take a moment)."""
    end = time.monotonic() + DEADLINE_S
    got = None
    while time.monotonic() < end:
        got = request(port, path, tls=tls)[0]
        if got == want:
            return got
        time.sleep(0.2)
    return got


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def expect(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  FAIL {what}")


def start(cmd: list[str], log: pathlib.Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def syntax_check(cmd: list[str], checks: Checks, env: dict | None = None) -> None:
    shown = " ".join(f"{k}=... " for k in env or {}) + " ".join(cmd)
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    print(f"$ {shown}\n{(run.stdout + run.stderr).strip()}")
    checks.expect(run.returncode == 0, f"{cmd[0]} accepts the file (exit {run.returncode})")


def check_haproxy(tmp: pathlib.Path, cert: str, stub: Stub, checks: Checks) -> None:
    port = free_port()
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    cfg, binds = re.subn(r"(?m)^(\s*bind )\S+", rf"\g<1>127.0.0.1:{port}", cfg)
    cfg, servers = re.subn(r"(?m)^(\s*server \S+ )\S+", rf"\g<1>127.0.0.1:{stub.port}", cfg)
    # The process maxconn needs twice as many file descriptors; a sandbox may allow fewer.
    cfg = re.sub(r"(?m)^(\s*maxconn )\d+", r"\g<1>1000", cfg)
    checks.expect(binds == 1 and servers >= 1, f"haproxy.cfg: one bind and servers to redirect ({binds}, {servers})")
    path = tmp / "haproxy.cfg"
    path.write_text(cfg)
    proc = start(["haproxy", "-db", "-f", str(path)], tmp / "haproxy.log", env={**os.environ, "CXB_TLS_CERT": cert})
    try:
        # Servers start UP: first show the check taking a worker with no free slot (full or
        # draining) out, then bringing one with 120 (more than the documented 16) back.
        stub.available = 0
        checks.expect(wait_status(port, "/haproxy-health", 200, tls=True) == 200, "haproxy: /haproxy-health answers 200")
        checks.expect(wait_status(port, "/ws/bot-0", 503, tls=True) == 503,
                      "haproxy: a worker with fleet_available 0 gets no new calls (503)")
        stub.available = 120
        checks.expect(wait_status(port, "/ws/bot-0", 200, tls=True) == 200,
                      "haproxy: a worker with fleet_available 120 is UP")
        for prefix in TELEPHONY:
            path_ = f"{prefix}bot-1"
            status = request(port, path_, tls=True)[0]
            checks.expect(status == 200 and stub.reached(path_), f"haproxy: {path_} reaches the worker (got {status})")
        for path_ in HAPROXY_404:
            for method in ("GET", "POST"):
                status = request(port, path_, method=method, tls=True)[0]
                checks.expect(status == 404 and not stub.reached(path_),
                              f"haproxy: {method} {path_} answers 404 without reaching the worker (got {status})")
    finally:
        stop(proc)
    if checks.failures:
        print((tmp / "haproxy.log").read_text())


def check_nginx(tmp: pathlib.Path, stub: Stub, checks: Checks) -> None:
    public, internal = free_port(), free_port()
    conf = (DEPLOY / "nginx.conf").read_text()
    conf, n_public = re.subn(r"(?m)^(\s*listen )80;", rf"\g<1>127.0.0.1:{public};", conf)
    conf, n_internal = re.subn(r"(?m)^(\s*listen )127\.0\.0\.1:9180;", rf"\g<1>127.0.0.1:{internal};", conf)
    conf, n_servers = re.subn(r"(?m)^(\s*server )127\.0\.0\.1:\d+", rf"\g<1>127.0.0.1:{stub.port}", conf)
    checks.expect(n_public == 1 and n_internal == 1 and n_servers == 1,
                  f"nginx.conf: listeners and upstream to redirect ({n_public}, {n_internal}, {n_servers})")
    (tmp / "site.conf").write_text(conf)
    main = tmp / "nginx-main.conf"
    main.write_text(wrapper_conf(tmp, tmp / "site.conf"))
    proc = start(["nginx", "-p", str(tmp), "-c", str(main), "-e", str(tmp / "nginx-error.log"),
                  "-g", "daemon off;"], tmp / "nginx.log")
    try:
        checks.expect(wait_status(public, "/health/fleet", 200) == 200, "nginx: public /health/fleet answers 200")
        for prefix in TELEPHONY:
            path_ = f"{prefix}bot-1"
            status = request(public, path_)[0]
            checks.expect(status == 200 and stub.reached(path_), f"nginx: public {path_} reaches the worker ({status})")
        for path_ in ("/attach", "/livekit/dialout", "/livekit/widget", "/livekit/dispatch"):
            status = request(public, path_, method="POST")[0]
            checks.expect(status == 200 and stub.reached(path_), f"nginx: public POST {path_} reaches the worker")
        for path_ in ("/admin/outbox", "/admin/outbox/stats", "/metrics"):
            status = request(public, path_)[0]
            checks.expect(status == 404 and not stub.reached(path_),
                          f"nginx: public {path_} answers 404 without reaching the worker (got {status})")
        for path_ in ("/metrics", "/admin/outbox"):
            status = request(internal, path_)[0]
            checks.expect(status == 200 and stub.reached(path_), f"nginx: internal {path_} reaches the worker")
        status = request(internal, "/ws/bot-internal")[0]
        checks.expect(status == 404 and not stub.reached("/ws/bot-internal"), "nginx: internal listener serves no calls")
        # The map: "Connection: upgrade" goes upstream for a WebSocket handshake only; any other
        # request gets "close" (a hard-coded "upgrade" breaks POST /livekit/dialout).
        request(public, "/ws/bot-upgrade", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        request(public, "/recordings/plain")
        conn = {p: c.lower() for _, p, c in stub.seen}
        checks.expect(conn.get("/ws/bot-upgrade") == "upgrade" and conn.get("/recordings/plain") == "close",
                      f"nginx: Connection upgrade only for an upgrade request ({conn.get('/ws/bot-upgrade')}, "
                      f"{conn.get('/recordings/plain')})")
    finally:
        stop(proc)
    if checks.failures:
        print((tmp / "nginx-error.log").read_text() if (tmp / "nginx-error.log").exists() else "")


def wrapper_conf(prefix: pathlib.Path, site: pathlib.Path) -> str:
    """A main nginx.conf around the site file, with every path under `prefix` (no root paths)."""
    temp = "\n".join(f"    {k}_temp_path {prefix}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log;
events {{}}
http {{
    access_log off;
{temp}
    include {site};
}}
"""


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    cert = sys.argv[1]
    checks = Checks()
    stub = Stub()
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        # The files as shipped: syntax and semantics as each proxy reads them.
        syntax_check(["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")], checks, env={"CXB_TLS_CERT": cert})
        (tmp / "nginx-t.conf").write_text(wrapper_conf(tmp, DEPLOY / "nginx.conf"))
        syntax_check(["nginx", "-t", "-p", str(tmp), "-c", str(tmp / "nginx-t.conf"), "-e", str(tmp / "nginx-t.log")],
                     checks)
        check_haproxy(tmp, cert, stub, checks)
        check_nginx(tmp, stub, checks)
    stub.server.shutdown()
    print(f"check_proxies: {checks.passed} passed, {len(checks.failures)} failed")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
