"""Small JSON API plumbing shared by the admin and agent APIs.

A route table of (method, path pattern, handler); bearer-token checks in
constant time; every refusal is JSON ``{"error": ..., "field": ...}`` with the
status that tells the caller what to fix.
"""

import json
import re

from twisted.internet import defer
from twisted.web import resource, server

from scepproxyd.jsoninput import JsonInputError, read_json
from scepproxyd.keys import tokens_match
from scepproxyd.logs import get_logger

log = get_logger(__name__)

JSON = b"application/json"
#: The one refusal for a missing, unknown or (agent API) other host's credential.
WRONG_TOKEN = "missing or wrong bearer token"


class ApiError(Exception):
    """A refusal with its HTTP status; ``field`` names the input at fault, if one is."""

    status = 400

    def __init__(self, message: str, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Invalid(ApiError):
    status = 422


def json_body(request, required: bool = True):
    """The request body as a JSON object, or a 400/422 that says why not (L{read_json}'s rules)."""
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        if required:
            raise BadRequest("request body must be a JSON object")
        return {}
    try:
        value = read_json(raw)
    except JsonInputError as e:
        raise ApiError(e.message, field=e.field, status=e.status) from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def query_parameter(request, name: str, stored: bool = False) -> str | None:
    """A query parameter as UTF-8 text, or a 422 naming it; a value to be ``stored`` must not hold a NUL."""
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        value = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("query parameter %s is not valid UTF-8" % (name,), field=name) from None
    if stored and "\0" in value:
        raise Invalid("query parameter %s must not contain a NUL character" % (name,), field=name)
    return value


def field(body: dict, name: str, kind=str, required: bool = True, default=None):
    """One typed field of a JSON body, refused by name when missing or of the wrong type."""
    if name not in body or body[name] is None:
        if required:
            raise Invalid("%s is required" % (name,), field=name)
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", list: "a list", bool: "true or false", dict: "an object"}
        raise Invalid("%s must be %s" % (name, names.get(kind, kind.__name__)), field=name)
    return value


class SharedToken:
    """One bearer token for the whole API (the admin API's): compared in constant time."""

    def __init__(self, token: str):
        self._token = token

    async def identify(self, presented: bytes):
        return True if tokens_match(presented, self._token) else None

    def permits(self, identity, params: dict) -> bool:
        return True


class JsonApi(resource.Resource):
    """
    Dispatches ``/api/v1/...`` paths to async handlers after checking the bearer token.

    ``credentials`` is a token string (one shared token) or an object with
    ``async identify(presented) -> identity or None`` and ``permits(identity,
    route parameters) -> bool``; both refusals give the same 401, so a
    refused route says nothing that an unknown token would not.
    """

    isLeaf = True

    def __init__(self, credentials, routes, realm: str):
        super().__init__()
        self._credentials = SharedToken(credentials) if isinstance(credentials, str) else credentials
        self._realm = realm
        self._routes = [(m.encode("ascii"), re.compile(p), h) for m, p, h in routes]

    def render(self, request):
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.ensureDeferred(self._dispatch(request))
        d.addErrback(self._unexpected)
        d.addCallback(lambda answer: None if gone else self._write(request, *answer))
        return server.NOT_DONE_YET

    async def _identify(self, request):
        header = request.getHeader(b"Authorization") or b""
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        return await self._credentials.identify(presented.strip())

    async def _dispatch(self, request):
        try:
            identity = await self._identify(request)
            if identity is None:
                raise Unauthorized(WRONG_TOKEN)
            path = request.path.decode("utf-8", "replace")
            allowed = []
            for method, pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                if method != request.method:
                    allowed.append(method.decode())
                    continue
                if not self._credentials.permits(identity, match.groupdict()):
                    raise Unauthorized(WRONG_TOKEN)
                result = await handler(request, **match.groupdict())
                if isinstance(result, tuple):
                    return result
                return (200, result)
            if allowed:
                raise ApiError("method not allowed; use %s" % (", ".join(sorted(set(allowed))),), status=405)
            raise NotFound("no such endpoint: %s %s" % (request.method.decode(), path))
        except ApiError as e:
            body = {"error": e.message}
            if e.field is not None:
                body["field"] = e.field
            return (e.status, body)

    def _unexpected(self, failure):
        log.failure("{realm} API request failed unexpectedly", failure, realm=self._realm)
        return (500, {"error": "internal error; see the daemon's log"})

    def _write(self, request, status, body):
        request.setResponseCode(status)
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="%s"' % (self._realm.encode(),))
        if status == 204 or body is None:
            request.finish()
            return
        data = json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Content-Length", b"%d" % (len(data),))
        request.write(data)
        request.finish()
