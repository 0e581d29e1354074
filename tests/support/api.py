"""The one client for the daemon's bearer-token JSON APIs (admin, agent): status and body.

Blocking calls (``request``/``call``, plain ``http.client``) for a daemon in
another process; Twisted calls (``arequest``/``acall``, treq) for a server in
the test's own reactor, which a blocking call would never let answer.
Answers are parsed as JSON, or kept as text when they are not JSON.
"""

import http.client
import json
import re
from urllib.parse import urlsplit

_AGENT_HOST = re.compile(r"/api/v1/agent/hosts/([^/?]+)")


def _parsed(data: bytes):
    text = data.decode("utf-8", "replace")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class Api:
    """JSON calls to one listener with one bearer token (``None``: no Authorization header).

    ``base`` is a URL (``http://127.0.0.1:PORT``) or a loopback port. Every
    answer body is kept in ``seen``, for the checks that no secret is in one.
    ``keep_alive``: one persistent connection for all blocking calls, and
    ``record=False``: no ``seen`` list (bench's long runs).
    """

    def __init__(self, base, token: str | None = None, timeout: float = 120.0, keep_alive: bool = False,
                 record: bool = True):
        self.url = base if isinstance(base, str) else "http://127.0.0.1:%d" % (base,)
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self.token = token
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.seen: list[bytes] | None = [] if record else None
        self._connection = None

    def _record(self, answer: bytes) -> None:
        if self.seen is not None:
            self.seen.append(answer)

    def _token(self, method: str, path: str, token):
        """``token=""`` means this client's own token."""
        return self.token if token == "" else token

    def _headers_and_data(self, token, body, raw, content_type):
        headers = {}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            if content_type:
                headers["Content-Type"] = content_type
        return headers, data

    def exchange(self, method: str, path: str, body=None, raw: bytes | None = None, content_type: str | None = None,
                 token: str | None = "", timeout: float | None = None) -> tuple[int, bytes]:
        """(status, body bytes) of one blocking request."""
        headers, data = self._headers_and_data(self._token(method, path, token), body, raw, content_type)
        for attempt in (1, 2):
            connection = self._connection or http.client.HTTPConnection(self.host, self.port,
                                                                         timeout=timeout or self.timeout)
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed meanwhile: once more on a new one.
                connection.close()
                self._connection = None
                if not self.keep_alive or attempt == 2:
                    raise
            finally:
                if not self.keep_alive:
                    connection.close()
        if self.keep_alive:
            self._connection = connection
        self._record(answer)
        return response.status, answer

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, content_type: str | None = None,
                token: str | None = "", timeout: float | None = None):
        """(status, parsed JSON or text) of one blocking request."""
        status, answer = self.exchange(method, path, body, raw, content_type, token, timeout)
        return status, _parsed(answer)

    def call(self, method: str, path: str, body=None, **kwargs):
        """Like request(), but the answer must be a success; returns its body."""
        status, parsed = self.request(method, path, body, **kwargs)
        assert status < 300, (method, path, status, parsed)
        return parsed

    async def arequest(self, method: str, path: str, body=None, raw: bytes | None = None,
                       content_type: str | None = None, token: str | None = ""):
        """(status, parsed JSON or text) of one request through treq, in the test's reactor."""
        import treq

        headers, data = self._headers_and_data(self._token(method, path, token), body, raw, content_type)
        response = await treq.request(method, self.url + path, data=data,
                                      headers={k.encode(): [v.encode()] for k, v in headers.items()})
        answer = await response.content()
        self._record(answer)
        return response.code, _parsed(answer)

    async def acall(self, method: str, path: str, body=None, **kwargs):
        """Like arequest(), but the answer must be a success; returns its body."""
        status, parsed = await self.arequest(method, path, body, **kwargs)
        assert status < 300, (method, path, status, parsed)
        return parsed

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


async def json_call(base_url, method, path, token, body=None, raw=None, content_type=None):
    """(status, JSON or None) of one call through treq, as a function."""
    return await Api(base_url, token).arequest(method, path, body, raw=raw, content_type=content_type)


def http_call(port, method, path, token=None, body=None):
    """(status, body text) of one blocking request to 127.0.0.1:port (JSON body and bearer token optional)."""
    status, answer = Api(port, token, timeout=10).exchange(method, path, body)
    return status, answer.decode()


def issue_agent_credential(admin: Api, host: str) -> str:
    """A new agent credential for ``host``, the documented way (replacing any it had)."""
    return admin.call("POST", "/api/v1/hosts/%s/agent-credential" % (host,))["token"]


async def aissue_agent_credential(admin: Api, host: str) -> str:
    """issue_agent_credential() through treq."""
    return (await admin.acall("POST", "/api/v1/hosts/%s/agent-credential" % (host,)))["token"]


class AgentApi(Api):
    """The agents of a site: a request carries the credential of the host its path names.

    Each host's credential is issued through the admin API the first time that
    host is used. The issuing answers are the one admin answer that carries a
    credential, by design, so they go through a client of their own and stay
    out of any ``seen`` list that secret checks read.
    """

    def __init__(self, base, admin: Api):
        super().__init__(base, None)
        self._issuer = Api(admin.url, admin.token)
        self.credentials: dict[str, str] = {}

    def credential(self, host: str) -> str:
        if host not in self.credentials:
            self.credentials[host] = issue_agent_credential(self._issuer, host)
        return self.credentials[host]

    def issue_bulk(self, hosts) -> None:
        """Credentials for many hosts in one admin call (the bulk endpoint), replacing any they had."""
        answer = self._issuer.call("POST", "/api/v1/agent-credentials", {"hosts": list(hosts), "rotate": True})
        self.credentials.update((item["host_uuid"], item["token"]) for item in answer["issued"])
        assert set(hosts) <= set(self.credentials), answer

    def _token(self, method: str, path: str, token):
        """``token=""``: the credential of the host in ``path`` (issued now if need be)."""
        if token == "":
            match = _AGENT_HOST.match(path)
            return self.credential(match.group(1)) if match else None
        return token


def apis(daemon) -> tuple[Api, AgentApi]:
    """The admin API and the agents of a running daemon."""
    admin = Api(daemon.admin_url, daemon.admin_token)
    return admin, AgentApi(daemon.url, admin)


def webhook_token(daemon) -> str:
    return (daemon.directory / "state" / "nanomdm-webhook.token").read_text().strip()
