"""An HTTP site that refuses oversized request bodies before reading them whole.

twisted.web buffers a request body completely before any resource sees it, so
the limit has to act while the body streams in: a declared Content-Length
over the limit is answered at once, and a chunked body is cut as soon as it
crosses the limit. Either way the answer is 413 and the connection closes.

A site can also hold a smaller limit for one route (the admin API's profile
upload), found from the request line, which the channel has parsed by the
time the headers are in.
"""

import io
import json

from scepproxyd.daemon.logs import get_logger
from twisted.web import server

log = get_logger(__name__)


class BodyLimitedRequest(server.Request):
    _body_seen = 0
    _refused = False
    _deadline = None

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        timeout = getattr(site, "request_timeout", None)
        if timeout:
            # Idle timeouts reset on every byte; this bounds the whole request,
            # so a client dribbling headers or body cannot hold a connection.
            self._deadline = site.reactor.callLater(timeout, self._too_slow)

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def _too_slow(self):
        log.info("cut a client that took over {timeout:.0f} s to send one request (outcome=too_slow status=408)",
                 timeout=self.channel.site.request_timeout)
        self._refused = True
        self.content = io.BytesIO()
        body = b"request took too long to arrive\n"
        transport = self.channel.transport
        if transport is not None:
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            transport.loseConnection()

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)

    _limit = None

    def _body_limit(self):
        """``(bytes, message or None, field or None)``: the site's limit, or a smaller one for this route."""
        if self._limit is None:
            site = self.channel.site
            self._limit = (site.max_body_bytes, None, None)
            # HTTPChannel keeps the request line here until the body is in.
            method, uri = getattr(self.channel, "_command", None), getattr(self.channel, "_path", None)
            for route_method, path, limit, message, field in getattr(site, "route_limits", ()):
                if method == route_method and uri is not None and uri.split(b"?", 1)[0] == path:
                    self._limit = (min(limit, site.max_body_bytes), message, field)
                    break
        return self._limit

    def gotLength(self, length):
        if length is not None and length > self._body_limit()[0]:
            self._refuse_too_large()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self._body_limit()[0]:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self):
        self._cancel_deadline()
        self._refused = True
        self.content = io.BytesIO()
        limit, message, field = self._body_limit()
        message = message or "request body larger than %d bytes" % (limit,)
        content_type = b"text/plain; charset=utf-8"
        body = message.encode("utf-8") + b"\n"
        if getattr(self.channel.site, "json_refusals", False):
            refusal = {"error": message}
            if field is not None:
                refusal["field"] = field
            content_type, body = b"application/json", json.dumps(refusal).encode("utf-8") + b"\n"
        # The request line is not parsed into this object yet; the peer is known.
        peer = self.getClientAddress()
        log.info(
            "refused request from {peer}: body over {limit} bytes (outcome=too_large status=413)",
            peer=getattr(peer, "host", "-"),
            limit=limit,
        )
        self.channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: %s\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (content_type, len(body), body)
        )
        self.channel.transport.loseConnection()

    def requestReceived(self, command, path, version):
        self._cancel_deadline()
        if self._refused:
            return
        in_flight = getattr(self.channel.site, "in_flight", None)
        if in_flight is not None:
            in_flight.started(self)
        super().requestReceived(command, path, version)


class BodyLimitedSite(server.Site):
    """A Site with a request body limit and an idle timeout for slow clients."""

    requestFactory = BodyLimitedRequest
    # Access logging is done per request by the proxy, with the fields operators need.
    noisy = False

    def __init__(self, resource, max_body_bytes: int, idle_timeout: float, reactor=None, in_flight=None,
                 request_timeout: float | None = None, route_limits=(), json_refusals: bool = False):
        """
        ``route_limits``: ``(method, path, bytes, message, field)`` for routes with a smaller
        limit (method and path as bytes, the path without a query). ``json_refusals``:
        the 413 is ``{"error": ..., "field": ...}`` as a JSON API answers, not plain text.
        """
        kwargs = {"timeout": idle_timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.route_limits = tuple(route_limits)
        self.json_refusals = json_refusals
        self.request_timeout = request_timeout
        #: Counts requests being served, for a graceful stop (lifecycle.InFlight).
        self.in_flight = in_flight

    def log(self, request):
        """The proxy writes its own request lines; skip the combined access log."""
