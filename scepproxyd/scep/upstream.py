"""Talk to upstream SCEP CAs: one pooled HTTP client, strict timeouts, a caps cache.

The proxy must tell two kinds of failure apart. If the upstream *never
answered* (refused, reset before headers, no headers in time) the device's
one-time challenge may be put back so its retry works. Once headers have
arrived the upstream has acted on the request, and the challenge stays spent
so that it can never reach the upstream twice.
"""

from urllib.parse import quote

import attrs
from twisted.internet import defer, error
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from zope.interface import Interface, implementer

from scepproxyd.httpbody import BodyTooLarge, read_limited

from scepproxyd.scep.query import encode_message

PKI_MESSAGE_TYPE = b"application/x-pki-message"


class UpstreamError(Exception):
    """The upstream CA could not give a usable answer.

    ``answered`` says whether the upstream received the request and started to
    answer; ``timed_out`` whether the cause was slowness (504) or failure (502).
    """

    def __init__(self, reason: str, answered: bool, timed_out: bool = False, status=None):
        super().__init__(reason)
        self.reason = reason
        self.answered = answered
        self.timed_out = timed_out
        self.status = status


@attrs.frozen
class UpstreamAnswer:
    status: int
    content_type: bytes
    body: bytes = attrs.field(repr=False)


@attrs.frozen
class UpstreamTimeouts:
    connect: float = 5.0
    response: float = 30.0
    body: float = 30.0
    max_response_bytes: int = 1024 * 1024


class IUpstream(Interface):
    """What the proxy, the admin routes and the readiness check ask of an upstream CA.

    Three classes provide it: L{UpstreamClient} (HTTP), the built-in CA's
    in-process C{LocalUpstream}, and C{UpstreamRouter}, which picks one of
    those two by URL. Each call names the CA by its URL; answers are
    L{UpstreamAnswer}s and failures L{UpstreamError}s, whichever provider
    gave them, so callers never need to know which one they hold.
    """

    def get_ca_caps(ca_url):
        """GetCACaps; a Deferred firing with an L{UpstreamAnswer} (may be cached)."""

    def get_ca_cert(ca_url, message=None):
        """GetCACert (with the device's optional C{message}); a Deferred firing with an L{UpstreamAnswer}."""

    def supports_post(ca_url):
        """A Deferred firing with whether the CA takes PKIOperation by POST."""

    def answer_in_memory(ca_url, operation, message=None):
        """
        The GetCACaps or GetCACert answer, synchronously, when it is at hand without any I/O; else None.

        The proxy's hot path asks this first and awaits C{get_ca_caps} /
        C{get_ca_cert} only when it gets None, so a cached answer costs no
        Deferred. It returns only what those calls would give right now.
        """

    def pki_operation(ca_url, message, use_post):
        """Send the PKIOperation bytes untouched; a Deferred firing with the CA's L{UpstreamAnswer}."""

    def forget(ca_url):
        """Drop anything cached for C{ca_url} (after an admin changed that CA)."""

    def drop_connections():
        """Close idle pooled connections, so a changed TLS trust applies to the next request; a Deferred."""


def make_http_client(reactor, connect_timeout: float, tls_policy=None):
    """One treq client over a persistent pool; the caller closes the pool on stop.

    ``tls_policy`` (tls.UpstreamTrust) decides how each CA's HTTPS is verified;
    without one, Twisted's default verifies against the system trust store.
    """
    import treq.client

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    # Automatic retries could send a PKIOperation twice; idempotent GETs retry below instead.
    pool.retryAutomatically = False
    kwargs = {"contextFactory": tls_policy} if tls_policy is not None else {}
    agent = Agent(reactor, connectTimeout=connect_timeout, pool=pool, **kwargs)
    return treq.client.HTTPClient(agent), pool


def _url(base: str, operation: str, message: str | None = None) -> str:
    joiner = "&" if "?" in base else "?"
    url = "%s%soperation=%s" % (base, joiner, operation)
    if message is not None:
        url += "&message=" + quote(message, safe="")
    return url


@implementer(IUpstream)
class UpstreamClient:
    """GetCACaps, GetCACert and PKIOperation against upstream SCEP CAs."""

    #: Bound on cached GetCACaps / GetCACert answers: the key includes the
    #: device-chosen GetCACert message, so the cache must not grow with it.
    MAX_CACHE_ENTRIES = 256

    def __init__(self, http_client, clock, timeouts: UpstreamTimeouts, caps_cache_seconds: float, metrics=None,
                 pool=None):
        self._http = http_client
        self._pool = pool
        self._clock = clock
        self._timeouts = timeouts
        self._cache_seconds = caps_cache_seconds
        self._cache: dict[tuple, tuple[float, UpstreamAnswer]] = {}
        self._metrics = metrics

    async def _request(self, method: str, url: str, operation: str, **kwargs) -> UpstreamAnswer:
        began = self._clock.seconds()
        pending = self._http.request(
            method, url, unbuffered=True, allow_redirects=False, reactor=self._clock, **kwargs
        )
        # Our own deadline rather than treq's, so that a cancellation is known
        # to be ours whatever exception the HTTP stack wraps it in.
        expired = []

        def give_up():
            expired.append(True)
            pending.cancel()

        deadline = self._clock.callLater(self._timeouts.response, give_up)
        try:
            response = await pending
        except Exception as e:
            if expired or isinstance(e, (TimeoutError, error.TimeoutError, error.TCPTimedOutError)):
                raise UpstreamError(
                    "upstream CA sent no answer in time", answered=False, timed_out=True
                ) from None
            if isinstance(e, ResponseFailed) and not isinstance(e, ResponseNeverReceived):
                # Bytes came back that are not HTTP: the CA got the request and answered badly.
                raise UpstreamError("upstream CA sent a malformed HTTP answer", answered=True) from None
            raise UpstreamError(
                "upstream CA unreachable (%s)" % (type(e).__name__,), answered=False
            ) from None
        finally:
            if deadline.active():
                deadline.cancel()
        body = await self._read_body(response)
        content_type = (response.headers.getRawHeaders(b"Content-Type") or [b""])[0]
        if self._metrics is not None:
            self._metrics.upstream_answered(operation, self._clock.seconds() - began)
        return UpstreamAnswer(response.code, content_type, body)

    def _read_body(self, response) -> defer.Deferred:
        """The answer's body within the size limit and the body timeout."""
        limit = self._timeouts.max_response_bytes
        d = read_limited(response, limit)
        d.addTimeout(self._timeouts.body, self._clock)

        def failed(failure):
            if failure.check(BodyTooLarge):
                raise UpstreamError("upstream answer larger than %d bytes" % (limit,), answered=True,
                                    status=response.code)
            if failure.check(defer.TimeoutError):
                raise UpstreamError("upstream CA did not finish its answer in time", answered=True, timed_out=True)
            raise UpstreamError("upstream connection failed while sending its answer", answered=True)

        return d.addErrback(failed)

    async def _get_idempotent(self, url: str, operation: str) -> UpstreamAnswer:
        """GET once more when a pooled connection turned out to be dead before any answer."""
        try:
            return await self._request("GET", url, operation)
        except UpstreamError as e:
            if e.answered or e.timed_out:
                raise
            return await self._request("GET", url, operation)

    def answer_in_memory(self, ca_url: str, operation: str, message: str | None = None) -> UpstreamAnswer | None:
        """The cached GetCACaps / GetCACert answer while it is fresh, else None."""
        hit = self._cache.get((ca_url, operation, message))
        if hit is not None and hit[0] > self._clock.seconds():
            return hit[1]
        return None

    async def _cached(self, key: tuple, url: str) -> UpstreamAnswer:
        now = self._clock.seconds()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        answer = await self._get_idempotent(url, key[1])
        if answer.status == 200 and self._cache_seconds > 0:
            self._cache.pop(key, None)
            while len(self._cache) >= self.MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[key] = (now + self._cache_seconds, answer)
        return answer

    def get_ca_caps(self, ca_url: str) -> defer.Deferred:
        return defer.ensureDeferred(self._cached((ca_url, "GetCACaps", None), _url(ca_url, "GetCACaps")))

    def get_ca_cert(self, ca_url: str, message: str | None = None) -> defer.Deferred:
        return defer.ensureDeferred(
            self._cached((ca_url, "GetCACert", message), _url(ca_url, "GetCACert", message))
        )

    async def _supports_post(self, ca_url: str) -> bool:
        caps = await self.get_ca_caps(ca_url)
        if caps.status != 200:
            return False
        lines = {line.strip().lower() for line in caps.body.split(b"\n")}
        return b"postpkioperation" in lines

    def supports_post(self, ca_url: str) -> defer.Deferred:
        """Whether the CA accepts PKIOperation by POST (from its cached GetCACaps)."""
        return defer.ensureDeferred(self._supports_post(ca_url))

    def pki_operation(self, ca_url: str, message: bytes, use_post: bool) -> defer.Deferred:
        """Forward the request bytes untouched, by POST when the CA allows it."""
        if use_post:
            return defer.ensureDeferred(
                self._request(
                    "POST",
                    _url(ca_url, "PKIOperation"),
                    "PKIOperation",
                    data=message,
                    headers={b"Content-Type": [PKI_MESSAGE_TYPE]},
                )
            )
        return defer.ensureDeferred(
            self._request("GET", _url(ca_url, "PKIOperation", encode_message(message)), "PKIOperation")
        )

    def drop_connections(self):
        """Close idle pooled connections, so a changed TLS trust applies to the next request."""
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    def forget(self, ca_url: str) -> None:
        """Drop cached answers of one CA (after the admin changes it)."""
        for key in [k for k in self._cache if k[0] == ca_url]:
            del self._cache[key]
