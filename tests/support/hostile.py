"""Tools for the adversarial tests: a misbehaving upstream CA, raw HTTP, and the daemon's state.

Everything here is synchronous and thread-based on purpose. The daemon runs
in its own process (``support.daemon.Daemon``); the misbehaving CA runs in threads of
the test process, so it answers the daemon even while a test blocks on a
plain socket or runs hypothesis examples, whatever the test's reactor does.
"""

import base64
import os
import re
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections import Counter

from support.certs import self_signed_der, signed_blob
from support.processes import free_port

CA_CAPS = b"POSTPKIOperation\nSHA-256\nAES\nSCEPStandard\n"
PKI_MESSAGE = b"application/x-pki-message"

# -- a misbehaving upstream CA ----------------------------------------------------


def _rst_close(conn: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


def _read_request(conn: socket.socket, stop: threading.Event):
    """One HTTP request: (method, target, headers dict, body), or None if the peer went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        if stop.is_set():
            return None
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    while len(body) < length:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            if stop.is_set():
                return None
            continue
        except OSError:
            return None
        if not chunk:
            return None
        body += chunk
    return method.decode(), target.decode(), headers, body


def _answer(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status.encode(), content_type, len(body), body)
    )


class HostileCA:
    """A SCEP CA on loopback that answers GetCACaps/GetCACert properly and misbehaves on PKIOperation.

    The first path segment of the URL picks the behaviour, so one server
    plays many CAs: ``ca.url("hang")`` is ``http://127.0.0.1:PORT/hang/scep``.
    Every answer closes the connection (no keep-alive), so no pooled
    connection carries one test's misbehaviour into the next.

    Behaviours for PKIOperation:

    ``ok``                   200, application/x-pki-message, a CMS blob
    ``hold``                 nothing until ``release()``, then like ``ok``
    ``hang``                 reads the request, never answers
    ``reset_before_headers`` reads the request, then RST
    ``reset_after_headers``  headers with Content-Length 4096, 100 bytes, then RST
    ``reset_close_delimited`` headers without a length (body ends at close), 100 bytes, then RST
    ``headers_trickle``      the status line and headers, one byte a second, forever
    ``trickle``              headers with Content-Length 4096, then one byte a second
    ``http500``              500 Internal Server Error
    ``garbage``              bytes that are not HTTP, then close
    ``huge_declared``        headers with Content-Length 10 MB, then bytes as fast as possible
    ``huge_streamed``        headers without a length, then bytes as fast as possible until 10 MB

    ``hold_all`` holds GetCACaps and GetCACert as well. Requests are held only
    between ``hold()`` and ``release()``.
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.counts: Counter = Counter()  # (behaviour, operation) -> requests fully received
        self.open_holds = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._release = threading.Event()
        self._stalled = threading.Event()
        self._fillers: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.ca_der = self_signed_der("Hostile Test CA")
        self._cert_rep = signed_blob()

    def url(self, behaviour: str) -> str:
        return "http://127.0.0.1:%d/%s/scep" % (self.port, behaviour)

    def pki_requests(self, behaviour: str) -> int:
        with self._lock:
            return self.counts[(behaviour, "PKIOperation")]

    def requests(self, behaviour: str, operation: str) -> int:
        with self._lock:
            return self.counts[(behaviour, operation)]

    # lifecycle

    def start(self) -> "HostileCA":
        self._stop.clear()
        self._release.set()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, name="hostile-ca-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused from now on) and cut every open connection."""
        self._stop.set()
        self._release.set()
        for filler in self._fillers:
            filler.close()
        self._fillers = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(10)
        self._threads = []

    def stall(self) -> None:
        """Stop accepting and fill the accept queue: a new connection to the CA hangs in its handshake.

        The CA stays up (nothing is refused) but no request can reach it, which
        holds a proxied PKIOperation between spending its challenge and
        reaching the CA for as long as ``connect_timeout``.
        """
        self._stalled.set()
        self._listener.listen(0)
        while True:
            filler = socket.socket()
            filler.settimeout(0.5)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                return
            self._fillers.append(filler)

    def unstall(self) -> None:
        """Accept again. Connections queued meanwhile are reset unread: the CA never saw them."""
        for filler in self._fillers:
            filler.close()
        self._fillers = []
        listener = self._listener
        listener.setblocking(False)
        try:
            while True:
                try:
                    queued, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                _rst_close(queued)
        finally:
            listener.settimeout(0.2)
        listener.listen(128)
        self._stalled.clear()

    def hold(self) -> None:
        """From now on, hold ``hold`` and ``hold_all`` requests until release()."""
        self._release.clear()

    def release(self) -> None:
        """Let every held request be answered."""
        self._release.set()

    # serving

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stop.is_set():
            if self._stalled.is_set():
                time.sleep(0.05)
                continue
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            with self._lock:
                self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-ca-conn", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = _read_request(conn, self._stop)
            if request is None:
                return
            method, target, _headers, _body = request
            path, _, query = target.partition("?")
            behaviour = path.strip("/").split("/")[0]
            operation = re.search(r"operation=([A-Za-z]+)", query)
            operation = operation.group(1) if operation else "-"
            with self._lock:
                self.counts[(behaviour, operation)] += 1
            holding = behaviour == "hold_all" or (behaviour == "hold" and operation == "PKIOperation")
            if holding and not self._release.is_set():
                with self._lock:
                    self.open_holds += 1
                try:
                    while not self._release.wait(0.1):
                        if self._stop.is_set():
                            return
                finally:
                    with self._lock:
                        self.open_holds -= 1
            if operation == "GetCACaps":
                conn.sendall(_answer("200 OK", b"text/plain", CA_CAPS))
            elif operation == "GetCACert":
                conn.sendall(_answer("200 OK", b"application/x-x509-ca-cert", self.ca_der))
            elif operation != "PKIOperation":
                conn.sendall(_answer("400 Bad Request", b"text/plain", b"unknown operation\n"))
            else:
                self._misbehave(conn, behaviour)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _wait_for_peer_close(self, conn: socket.socket, seconds: float | None = None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                if conn.recv(65536) == b"":
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def _dribble(self, conn: socket.socket, data: bytes, interval: float = 1.0) -> None:
        """Send ``data`` one byte per ``interval`` until it runs out or the peer goes away."""
        for i in range(len(data)):
            if self._stop.wait(interval if i else 0):
                return
            conn.sendall(data[i:i + 1])

    def _misbehave(self, conn: socket.socket, behaviour: str) -> None:
        if behaviour in ("ok", "hold", "hold_all"):
            conn.sendall(_answer("200 OK", PKI_MESSAGE, self._cert_rep))
        elif behaviour == "hang":
            self._wait_for_peer_close(conn)
        elif behaviour == "reset_before_headers":
            _rst_close(conn)
        elif behaviour == "reset_after_headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n"
                         b"Content-Length: 4096\r\n\r\n" + b"\x30" * 100)
            time.sleep(0.2)
            _rst_close(conn)
        elif behaviour == "reset_close_delimited":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n"
                         b"Connection: close\r\n\r\n" + b"\x30" * 100)
            time.sleep(0.2)
            _rst_close(conn)
        elif behaviour == "headers_trickle":
            self._dribble(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n" * 100)
        elif behaviour == "trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n"
                         b"Content-Length: 4096\r\n\r\n")
            self._dribble(conn, b"\x30" * 4096)
        elif behaviour == "http500":
            conn.sendall(_answer("500 Internal Server Error", b"text/plain", b"CA database is on fire\n"))
        elif behaviour == "garbage":
            conn.sendall(b"\x00\xff\xfeSSH-2.0-OpenSSH_9.2\r\n\x16\x03\x01\x02\x00" + os.urandom(512))
            time.sleep(0.2)
        elif behaviour in ("huge_declared", "huge_streamed"):
            header = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n"
            header += b"Content-Length: 10485760\r\n\r\n" if behaviour == "huge_declared" else b"Connection: close\r\n\r\n"
            conn.sendall(header)
            block = b"\x30" * 65536
            for _ in range(160):
                if self._stop.is_set():
                    return
                conn.sendall(block)
        else:
            conn.sendall(_answer("404 Not Found", b"text/plain", b"no such behaviour\n"))


# -- raw HTTP ---------------------------------------------------------------------


def raw_http(port: int, request: bytes, read_timeout: float = 30.0) -> bytes:
    """Send raw bytes, read until the daemon closes the connection (or resets it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def status_of(reply: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", reply)
    assert match, reply[:200]
    return int(match.group(1))


def body_of(reply: bytes) -> bytes:
    return reply.partition(b"\r\n\r\n")[2]


def request_once(port: int, method: str, target: bytes, body: bytes | None = None,
                 headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request on its own connection, with a raw (unvalidated) request target."""
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target), b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(b"%s: %s" % (name.encode(), value if isinstance(value, bytes) else value.encode()))
    if body is not None:
        lines.append(b"Content-Length: %d" % (len(body),))
    reply = raw_http(port, b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""), read_timeout=timeout)
    return status_of(reply), body_of(reply)


def pki_post(url: str, body: bytes | None = None, timeout: float = 60.0) -> tuple[int, bytes, float]:
    """POST a PKIOperation to a proxy URL; (status, body, seconds taken)."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    port = int(host_port.rsplit(":", 1)[1])
    started = time.monotonic()
    status, answer = request_once(port, "POST", ("/" + path + "?operation=PKIOperation").encode(),
                                  body=signed_blob() if body is None else body, timeout=timeout)
    return status, answer, time.monotonic() - started


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the daemon's state ---------------------------------------------------------------


def db(daemon) -> sqlite3.Connection:
    """A connection to the daemon's database file (WAL: safe next to the running daemon)."""
    conn = sqlite3.connect(str(daemon.database), timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def integrity(daemon) -> str:
    with db(daemon) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def kill9(daemon) -> None:
    """SIGKILL the daemon by its pid, as a power cut or the OOM killer would."""
    process = daemon.process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    daemon.process = None


def assert_log_clean(daemon, secrets=()) -> None:
    """No traceback, no 500 and none of ``secrets`` in the daemon's log."""
    log = daemon.log()
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000):][:6000]
    assert "outcome=internal_error" not in log
    assert "status=500" not in log
    for secret in secrets:
        assert secret and secret not in log, "a secret is in the daemon's log"
