"""Reaching the admin API: endpoint strings to connections, and one JSON request at a time.

Synchronous and stdlib-only on purpose: a command makes one or two requests
and exits, so it needs no reactor. The daemon's ``[admin] listen`` is a Twisted
server endpoint string; the few kinds an admin API sensibly listens on (TCP on
loopback, a unix socket) are mapped here to a client connection.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote, urlencode, urlsplit

from dataclasses import dataclass

#: Interfaces that mean "every address": the daemon is reachable on loopback then.
_ANY_INTERFACE = ("", "0.0.0.0", "::")


class CliError(Exception):
    """Something the person at the terminal has to fix; ``str()`` is the whole message."""

    exit_code = 1


class InvocationError(CliError):
    """
    The command cannot run as invoked: a bad option or argument, or a config naming no usable admin API.

    Exits 2 like argparse's own refusals. (The daemon's tap raises Twisted's
    ``usage.InvocationError``; this is the CLI's own, hence another name.)
    """

    exit_code = 2


class ApiError(CliError):
    """The admin API refused the request; ``message`` and ``field`` come from its JSON error."""

    def __init__(self, status: int, message: str, field: str | None = None):
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message + (" (field: %s)" % (field,) if field else ""))


@dataclass(frozen=True)
class Target:
    """Where the admin API is: ``host``/``port`` over TCP, or ``path`` of a unix socket."""

    scheme: str  # "http", "https" or "unix"
    host: str = "127.0.0.1"
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return "unix:" + self.path
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "%s://%s:%d" % (self.scheme, host, self.port)


def _split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    A Twisted endpoint description as (kind, positional args, keyword args).

    Follows Twisted's own syntax: ``:`` separates, ``=`` makes a keyword, and
    a backslash escapes the next character (``interface=\\:\\:1``).
    """
    parts: list[list[str]] = [[]]
    escaped = False
    for char in description:
        if escaped:
            parts[-1].append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append([])
        else:
            # Mark unescaped "=" so an escaped one stays part of the value.
            parts[-1].append("\x00" if char == "=" else char)
    kind, *rest = ["".join(p) for p in parts]
    args, kwargs = [], {}
    for part in rest:
        if "\x00" in part:
            key, _, value = part.partition("\x00")
            kwargs[key] = value.replace("\x00", "=")
        else:
            args.append(part)
    return kind.replace("\x00", "="), args, kwargs


def target_from_endpoint(description: str) -> Target:
    """
    Where a client connects to reach a server listening on ``description``.

    ``tcp:8081:interface=10.0.0.5`` -> http://10.0.0.5:8081; no interface, or
    ``0.0.0.0`` / ``::`` -> 127.0.0.1; ``unix:/run/x.sock:mode=600`` -> that socket.
    A ``systemd:`` socket is bound by a socket unit this process cannot see
    (and guessing a port could reach the wrong daemon), so that is refused
    with the way out: ``[admin] url`` or ``--url``.
    """
    kind, args, kwargs = _split_endpoint(description)
    if kind in ("tcp", "tcp6"):
        values = dict(zip(("port", "interface", "backlog"), args))
        values.update(kwargs)
        try:
            port = int(values.get("port", ""))
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise InvocationError("[admin] listen %r has no port a client can connect to" % (description,))
        interface = values.get("interface", "")
        return Target("http", "127.0.0.1" if interface in _ANY_INTERFACE else interface, port)
    if kind == "unix":
        path = kwargs.get("address") or (args[0] if args else "")
        if not path:
            raise InvocationError("[admin] listen %r names no socket path" % (description,))
        return Target("unix", path=path)
    if kind == "systemd":
        raise InvocationError(
            "[admin] listen %r is a socket that systemd opens, so it does not say where the admin API is; "
            "set [admin] url = http://HOST:PORT in the config (the address of the socket unit's ListenStream=), "
            "or pass --url http://HOST:PORT" % (description,)
        )
    raise InvocationError(
        "[admin] listen %r is not a tcp: or unix: endpoint scepproxyctl can connect to; "
        "pass --url http://HOST:PORT" % (description,)
    )


def target_from_url(url: str) -> Target:
    """``--url``: ``http://host:port`` or ``https://host:port``, nothing after the port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvocationError("--url %r is not a URL: %s" % (url, e)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvocationError("--url must look like http://HOST:PORT, got %r" % (url,))
    if parts.path.strip("/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise InvocationError(
            "--url takes only a scheme, host and port (the API is always under /api/v1/), got %r" % (url,)
        )
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over an AF_UNIX stream socket; the Host header says ``localhost``."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def connect(target: Target, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "unix":
        return UnixHTTPConnection(target.path, timeout)
    if target.scheme == "https":
        return http.client.HTTPSConnection(target.host, target.port, timeout=timeout)
    return http.client.HTTPConnection(target.host, target.port, timeout=timeout)


#: Rows asked for per page when a list command follows a list's pages (the API's maximum).
PAGE_LIMIT = 5000


def api_path(*segments: str, query: dict | None = None) -> str:
    """``/api/v1/`` plus path-escaped segments and an optional query (``None`` values dropped)."""
    path = "/api/v1/" + "/".join(quote(s, safe="") for s in segments)
    query = {k: v for k, v in (query or {}).items() if v is not None}
    return path + ("?" + urlencode(query) if query else "")


class AdminClient:
    """One request per call; answers are parsed JSON (or ``None`` for 204), refusals raise."""

    def __init__(self, target: Target, token: str, token_file: str, timeout: float = 60.0):
        self.target = target
        self._token = token
        self._token_file = token_file
        self._timeout = timeout

    def request(self, method: str, path: str, body=None, content_type: str = "application/json"):
        """Send ``body`` (bytes as-is, anything else as JSON); return (status, parsed answer)."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        headers = {"Authorization": "Bearer " + self._token, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        connection = connect(self.target, self._timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise CliError(
                "cannot reach the admin API at %s: %s; is scepproxyd running?" % (self.target, reason)
            ) from None
        finally:
            connection.close()
        return response.status, self._answer(response, data)

    def _answer(self, response, data: bytes):
        status = response.status
        parsed = None
        if data.strip():
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        if 200 <= status < 300:
            if data.strip() and parsed is None:
                raise CliError(
                    "the admin API at %s answered HTTP %d with something that is not JSON" % (self.target, status)
                )
            return parsed
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if status == 401:
            raise ApiError(
                status,
                "%s (HTTP 401): the admin API refused the token in %s; "
                "is it the token_file of the daemon at %s?"
                % (error or "unauthorized", self._token_file, self.target),
            )
        if not isinstance(error, str):
            raise ApiError(status, "the admin API at %s answered HTTP %d %s" % (self.target, status, response.reason))
        field = parsed.get("field")
        raise ApiError(status, error, field if isinstance(field, str) else None)


def list_all(api, name: str, *segments: str, query: dict | None = None) -> dict:
    """
    Every row of a paginated list: ``GET`` its pages, following ``next`` until it is null.

    Fires the last page's answer with ``name`` holding the rows of all pages
    (so ``--json`` prints one complete document, ``"next": null``).
    """
    query = dict(query or {}, limit=PAGE_LIMIT)
    rows = []
    while True:
        _, answer = api.request("GET", api_path(*segments, query=query))
        rows.extend(answer[name])
        cursor = answer.get("next")
        if not cursor:
            return dict(answer, **{name: rows})
        query["cursor"] = cursor
