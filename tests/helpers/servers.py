"""Real git servers on 127.0.0.1: ``git daemon``, ``git http-backend`` behind a small HTTP
server, and a TCP proxy that can hold connections (a stalled server) until released."""

from __future__ import annotations

import base64
import contextlib
import getpass
import hmac
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .ports import accepts_connections, free_port
from .waiting import wait_for


class GitDaemon:
    """``git daemon`` exporting every repository under ``base``; packets traced to a file.

    ``trace`` is where upload-pack writes the packets it receives (default: beside ``base``),
    or False for no trace (tracing costs time, which a benchmark may not want); ``log`` is
    where the daemon's output goes (default: beside ``base``); ``env`` adds to the
    environment of the daemon and its upload-packs.
    """

    def __init__(
        self,
        base: Path,
        port: int | None = None,
        *,
        trace: Path | bool = True,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base = base
        if trace is True:
            trace = base.parent / f"{base.name}-packets.trace"
        self.trace: Path | None = trace or None
        self.port = port or free_port()
        full_env = {**os.environ, **(env or {})}
        if self.trace is not None:
            full_env["GIT_TRACE_PACKET"] = str(self.trace)
        log = log or base.parent / f"{base.name}-daemon.log"
        self._log = open(log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                f"--base-path={base}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(base),
            ],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: accepts_connections(self.port),
                10,
                "git daemon to listen",
                while_alive=self._alive,
            )
        except BaseException:
            self.stop()
            raise

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"git daemon exited with {self.process.returncode}")

    def url(self, name: str, port: int | None = None) -> str:
        return f"git://127.0.0.1:{port or self.port}/{name}"

    def trace_mark(self) -> int:
        """Where the trace ends now: pass it as ``since`` to look only at what comes after."""
        if self.trace is None or not self.trace.exists():
            return 0
        return self.trace.stat().st_size

    def packets(self, since: int = 0) -> list[str]:
        """Every pkt-line upload-pack received (after the mark ``since``), as text."""
        if self.trace is None or not self.trace.exists():
            return []
        with open(self.trace, "rb") as trace:
            trace.seek(since)
            lines = trace.read().decode(errors="replace").splitlines()
        return [m[1] for line in lines if (m := re.search(r"upload-pack< (.*)$", line))]

    def wanted(self, since: int = 0) -> list[str]:
        """Object ids clients asked for with ``want``, in order, duplicates kept."""
        return [p.split()[1] for p in self.packets(since) if p.startswith("want ")]

    def fetch_commands(self, since: int = 0) -> int:
        return sum(1 for p in self.packets(since) if p == "command=fetch")

    def clear_trace(self) -> None:
        if self.trace is not None:
            self.trace.write_bytes(b"")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class GitProxy:
    """Forwards TCP connections to a git daemon on ``upstream_port``.

    While ``held``, accepted connections wait: a server that accepts a connection and then
    answers nothing, until released. ``hide_capability`` removes one capability from the
    protocol v2 advertisement: a server that does not offer it (git 2.39 cannot be configured
    to stop advertising ``object-info``). ``hold_when`` is asked at every accept: once it says
    yes, that connection and every later one are held, with no window for a fast client to
    race past a test that would call ``hold`` itself.
    """

    def __init__(
        self,
        upstream_port: int,
        held: bool = False,
        hide_capability: bytes | None = None,
        port: int | None = None,
        hold_when: Callable[[], bool] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.hold_when = hold_when
        self.held_from: int | None = None  # the number of the first connection held by hold_when
        self.hide_capability = hide_capability
        self.accepted = 0
        self.upstream_failures: list[str] = []
        self._released = threading.Event()
        if not held:
            self._released.set()
        self._closing = threading.Event()
        # port 0 unless asked: the kernel's choice, with no window for another socket to take it
        self._listener = socket.create_server(("127.0.0.1", port or 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._released.set()

    def hold(self) -> None:
        """From now on, new connections wait until ``release``."""
        self._released.clear()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closing.is_set():
                client.close()
                return
            self.accepted += 1
            if self.held_from is None and self.hold_when is not None and self.hold_when():
                self.held_from = self.accepted
                self.hold()
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._released.wait()
        if self._closing.is_set():
            return
        upstream = self._connect_upstream()
        if upstream is None:
            client.close()
            return
        self._sockets.append(upstream)
        threading.Thread(target=self._downstream, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def _connect_upstream(self) -> socket.socket | None:
        """A connection to the daemon, tried for a few seconds (a busy host can refuse one for
        a moment; the proxy must not turn that into a reset the test did not ask for). What
        failed is kept in ``upstream_failures`` for the test's report."""
        deadline = time.monotonic() + 5
        while True:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
                return upstream
            except OSError as exc:
                self.upstream_failures.append(repr(exc))
                if self._closing.is_set() or time.monotonic() > deadline:
                    return None
                self._closing.wait(0.1)

    def _downstream(self, upstream: socket.socket, client: socket.socket) -> None:
        if self.hide_capability is not None:
            try:
                client.sendall(_filtered_advertisement(upstream, self.hide_capability))
            except OSError:
                return
        _pump(upstream, client)

    def stop(self) -> None:
        self._closing.set()
        self._released.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _filtered_advertisement(upstream: socket.socket, hidden: bytes) -> bytes:
    """Read pkt-lines up to the first flush, dropping the ``hidden`` capability."""
    out = b""
    while True:
        length = _read_exactly(upstream, 4)
        if length == b"0000":
            return out + length
        payload = _read_exactly(upstream, int(length, 16) - 4)
        if payload.strip() != hidden:
            out += length + payload


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class HttpGitServer:
    """Smart HTTP: ``git http-backend`` as a CGI program behind a threaded HTTP server.

    With a ``token`` it behaves like a git host serving a private repository: every request
    must carry HTTP basic auth with that token as the password (and ``username``, if given;
    any username otherwise, as GitLab accepts). A request without credentials gets 401 with
    ``WWW-Authenticate: Basic realm="git"``; one with wrong credentials gets ``refusal_status``
    (401, or 403 as some hosts answer for a token without access). ``token`` may be changed
    while serving (a rotation); ``refused`` counts the requests turned away, and
    ``authorizations`` keeps every ``Authorization`` header received.
    """

    def __init__(
        self,
        base: Path,
        protocol_v2: bool = True,
        *,
        token: str | None = None,
        username: str | None = None,
        refusal_status: int = 401,
    ) -> None:
        self.base = base
        self.protocol_v2 = protocol_v2
        self.token = token
        self.username = username
        self.refusal_status = refusal_status
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._cgi(self)

            def do_POST(self) -> None:
                server._cgi(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def _cgi(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        self.requests.append(f"{handler.command} {handler.path}")
        body = _read_body(handler)  # read even when refusing: the client is still sending it
        status = self._refusal(handler.headers.get("Authorization"))
        if status is not None:
            with self._lock:
                self.refused += 1
            handler.send_response(status)
            if status == 401:
                handler.send_header("WWW-Authenticate", 'Basic realm="git"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": handler.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": handler.headers.get("Git-Protocol", "") if self.protocol_v2 else "",
            "HTTP_CONTENT_ENCODING": handler.headers.get("Content-Encoding", ""),
        }
        result = subprocess.run(
            ["git", "http-backend"], input=body, capture_output=True, env=env, check=False
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _refusal(self, authorization: str | None) -> int | None:
        """The status to refuse a request with, or None to serve it."""
        if authorization is not None:
            self.authorizations.append(authorization)
        if self.token is None:
            return None
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return 401
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return 401
        right_user = self.username is None or hmac.compare_digest(
            username.encode(), self.username.encode()
        )
        if right_user and hmac.compare_digest(password.encode(), self.token.encode()):
            return None
        return self.refusal_status

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class SshServer:
    """OpenSSH's sshd on 127.0.0.1 with a throw-away host key and client key.

    Clients connect as the current user with ``ssh_command`` (set it as GIT_SSH_COMMAND);
    ``GIT_PROTOCOL`` is accepted so git speaks protocol v2 over it.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)],
                check=True,
            )
        (directory / "authorized_keys").write_bytes((directory / "client_key.pub").read_bytes())
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'pid'}\n"
            "PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nAcceptEnv GIT_PROTOCOL\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self._log = open(directory / "sshd.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: accepts_connections(self.port), 10, "sshd to listen", while_alive=self._alive
        )
        self.ssh_command = (
            f"ssh -i {directory / 'client_key'} -o StrictHostKeyChecking=no"
            " -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
        )

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"sshd exited: {(self.directory / 'sshd.log').read_text()}")

    def url(self, path: Path) -> str:
        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
