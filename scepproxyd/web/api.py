"""Small JSON API plumbing shared by the admin and agent APIs.

A route table of (method, path pattern, handler); bearer-token checks in
constant time; every refusal is JSON ``{"error": ..., "field": ...}`` with the
status that tells the caller what to fix.

Work that grows with an admin's input stays off the reactor thread, so
devices are answered while an admin uploads or lists a lot: a JSON body over
``LARGE_BODY`` bytes is parsed on a worker thread, and a list page is encoded
there. Lists are pages (``limit``, an opaque ``cursor``, ``next`` in the
answer), found by keyset in the store.
"""

import base64
import binascii
import functools
import json
import re

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.web import resource

from scepproxyd.jsoninput import JsonInputError, read_json
from scepproxyd.keys import tokens_match
from scepproxyd.daemon.logs import get_logger
from scepproxyd.store.models import StoreUnavailable
from scepproxyd.web.later import answer_later

log = get_logger(__name__)

JSON = b"application/json"
#: The one refusal for a missing, unknown or (agent API) other host's credential.
WRONG_TOKEN = "missing or wrong bearer token"
#: The 503 answer while the database cannot be written; nothing was changed.
UNAVAILABLE = "the database cannot be written right now: %s; nothing was changed, try again later"
_INTERNAL_ERROR = {"error": "internal error; see the daemon's log"}


class HttpRefusal(Exception):
    """
    A refusal with its HTTP status; ``field`` names the input at fault, if one is.

    Raised only in the web layer: domain code raises its own errors, which
    the routes translate into one of these.
    """

    status = 400

    def __init__(self, message: str, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class BadRequest(HttpRefusal):
    status = 400


class Unauthorized(HttpRefusal):
    status = 401


class NotFound(HttpRefusal):
    status = 404


class Conflict(HttpRefusal):
    status = 409


class Invalid(HttpRefusal):
    status = 422


def refusing(error_type, refusal):
    """
    A route decorator: a domain error ``error_type`` from the handler becomes ``refusal(error)``, an L{HttpRefusal}.

    Domain modules define their own errors and know nothing of HTTP; each
    route module says once how its domain's errors are answered.
    """

    def decorate(handler):
        @functools.wraps(handler)
        async def translated(*args, **kwargs):
            try:
                return await handler(*args, **kwargs)
            except error_type as e:
                raise refusal(e) from None

        return translated

    return decorate


#: A JSON body larger than this is parsed on a worker thread, not the reactor's.
LARGE_BODY = 64 * 1024
#: Rows in a list page when the caller gives no ``limit``, and the most it may ask for.
DEFAULT_PAGE = 500
MAX_PAGE = 5000


def raw_body(handler):
    """Mark a route handler that reads its own (non-JSON) body, so it is not parsed as JSON first."""
    handler.raw_body = True
    return handler


def _parse_json(raw: bytes):
    """``("ok", value)`` or ``("error", JsonInputError)``: the strict reader's outcome, safe to hand across threads."""
    try:
        return ("ok", read_json(raw))
    except JsonInputError as e:
        return ("error", e)


def json_body(request, required: bool = True):
    """The request body as a JSON object, or a 400/422 that says why not (L{read_json}'s rules).

    A large body was parsed on a worker thread before the handler ran; a
    small one is parsed here.
    """
    parsed = getattr(request, "_scepproxyd_json", None)
    if parsed is None:
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            if required:
                raise BadRequest("request body must be a JSON object")
            return {}
        parsed = _parse_json(raw)
    outcome, value = parsed
    if outcome == "error":
        raise HttpRefusal(value.message, field=value.field, status=value.status)
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


def one_of(value, name: str, allowed):
    """``value`` when it is absent (None) or one of ``allowed``; else a 422 that lists the choices.

    Every filter and field with a fixed set of values (platform, status)
    refuses an unknown one with this same message, so the admin sees what is
    accepted whichever route they called.
    """
    if value is not None and value not in allowed:
        raise Invalid("%s must be one of %s" % (name, ", ".join(allowed)), field=name)
    return value


def query_choice(request, name: str, allowed) -> str | None:
    """The query parameter ``name`` (L{query_parameter}), which must be one of ``allowed`` (L{one_of})."""
    return one_of(query_parameter(request, name), name, allowed)


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


def off_reactor(reactor, fn, *args, **kwargs) -> defer.Deferred:
    """Run ``fn`` on the reactor's worker threads (CPU-heavy work on admin input)."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)


class Page:
    """
    One page of a list: ``limit`` and ``after`` (the sort key the cursor names) from the query.

    A cursor is the base64url of ``[list name, key values...]``: opaque to
    callers, tied to its list (another list's cursor is refused), carrying
    nothing but the sort key of the last row shown.
    """

    def __init__(self, request, name: str, key_length: int):
        self.name = name
        self._key_length = key_length
        limit = query_parameter(request, "limit")
        if limit is None:
            self.limit = DEFAULT_PAGE
        else:
            self.limit = int(limit) if limit.isascii() and limit.isdigit() else 0
            if not 1 <= self.limit <= MAX_PAGE:
                raise Invalid("limit must be a whole number from 1 to %d" % (MAX_PAGE,), field="limit")
        cursor = query_parameter(request, "cursor")
        self.after = None if cursor in (None, "") else self._decode(cursor)

    def _decode(self, cursor: str) -> tuple:
        refused = BadRequest(
            "cursor is not one this list gave out; start again without a cursor and follow \"next\"",
            field="cursor",
        )
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            value = json.loads(raw)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise refused from None
        if (
            not isinstance(value, list)
            or len(value) != self._key_length + 1
            or value[0] != self.name
            or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value[1:])
        ):
            raise refused
        return tuple(value[1:])

    def encode(self, key) -> str:
        raw = json.dumps([self.name, *key], separators=(",", ":")).encode("utf-8")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def answer(self, rows, key, to_json, **extra) -> "PageAnswer":
        """
        The answer for ``rows`` fetched with ``limit + 1``: at most ``limit`` of them, and ``next``.

        ``key(row)`` is a row's sort key; ``to_json(row)`` its JSON form.
        """
        rows = list(rows)
        more = len(rows) > self.limit
        rows = rows[:self.limit]
        body = PageAnswer({self.name: [to_json(row) for row in rows]})
        body["next"] = self.encode(key(rows[-1])) if more else None
        body.update(extra)
        return body


class PageAnswer(dict):
    """A list page: encoded on a worker thread, since it can hold thousands of rows."""


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

    def __init__(self, credentials, routes, realm: str, *, reactor):
        super().__init__()
        self._reactor = reactor
        self._credentials = SharedToken(credentials) if isinstance(credentials, str) else credentials
        self._realm = realm
        self._routes = [(m.encode("ascii"), re.compile(p), h) for m, p, h in routes]

    def render(self, request):
        d = defer.ensureDeferred(self._dispatch(request))
        d.addErrback(self._unexpected)
        d.addCallback(self._encoded)
        return answer_later(request, d, self._write)

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
                await self._parse_large_json(request, handler)
                result = await handler(request, **match.groupdict())
                if isinstance(result, tuple):
                    return result
                return (200, result)
            if allowed:
                raise HttpRefusal("method not allowed; use %s" % (", ".join(sorted(set(allowed))),), status=405)
            raise NotFound("no such endpoint: %s %s" % (request.method.decode(), path))
        except HttpRefusal as e:
            body = {"error": e.message}
            if e.field is not None:
                body["field"] = e.field
            return (e.status, body)
        except StoreUnavailable as e:
            return (503, {"error": UNAVAILABLE % (e.reason,)})

    async def _parse_large_json(self, request, handler) -> None:
        """A large JSON body is parsed on a worker thread before the handler's ``json_body`` reads it."""
        if getattr(handler, "raw_body", False) or request.content is None:
            return
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size > LARGE_BODY:
            request._scepproxyd_json = await off_reactor(self._reactor, lambda: _parse_json(content.read()))
            # A handler that reads the body as it came (a PEM bundle, say) still finds all of it.
            content.seek(0)

    def _unexpected(self, failure):
        log.failure("{realm} API request failed unexpectedly", failure, realm=self._realm)
        return (500, _INTERNAL_ERROR)

    def _encoded(self, answer):
        """``(status, JSON bytes or None)``; a list page is encoded on a worker thread."""
        status, body = answer
        if status == 204 or body is None:
            return (status, None)
        if isinstance(body, PageAnswer):
            d = off_reactor(self._reactor, _encode, body)
            d.addCallback(lambda data: (status, data))
            d.addErrback(self._unencodable)
            return d
        return (status, _encode(body))

    def _unencodable(self, failure):
        log.failure("{realm} API answer failed", failure, realm=self._realm)
        return (500, _encode(_INTERNAL_ERROR))

    def _write(self, request, answer):
        status, data = answer
        request.setResponseCode(status)
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="%s"' % (self._realm.encode(),))
        if data is None:
            request.finish()
            return
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Content-Length", b"%d" % (len(data),))
        request.write(data)
        request.finish()


def _encode(body) -> bytes:
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"
