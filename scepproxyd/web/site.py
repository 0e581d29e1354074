"""An HTTP site that refuses oversized request bodies before reading them whole.

twisted.web buffers a request body completely before any resource sees it, so
the limit has to act while the body streams in: a declared Content-Length
over the limit is answered at once, and a chunked body is cut as soon as it
crosses the limit. Either way the answer is 413 and the connection closes.
"""

import io

from scepproxyd.logs import get_logger
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

    def gotLength(self, length):
        if length is not None and length > self.channel.site.max_body_bytes:
            self._refuse_too_large()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self.channel.site.max_body_bytes:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self):
        self._cancel_deadline()
        self._refused = True
        self.content = io.BytesIO()
        limit = self.channel.site.max_body_bytes
        body = b"request body larger than %d bytes\n" % (limit,)
        # The request line is not parsed into this object yet; the peer is known.
        peer = self.getClientAddress()
        log.info(
            "refused request from {peer}: body over {limit} bytes (outcome=too_large status=413)",
            peer=getattr(peer, "host", "-"),
            limit=limit,
        )
        self.channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
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
                 request_timeout: float | None = None):
        kwargs = {"timeout": idle_timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        #: Counts requests being served, for a graceful stop (lifecycle.InFlight).
        self.in_flight = in_flight

    def log(self, request):
        """The proxy writes its own request lines; skip the combined access log."""
