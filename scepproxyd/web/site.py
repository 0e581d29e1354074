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
        if self._refused:
            return
        super().requestReceived(command, path, version)


class BodyLimitedSite(server.Site):
    """A Site with a request body limit and an idle timeout for slow clients."""

    requestFactory = BodyLimitedRequest
    # Access logging is done per request by the proxy, with the fields operators need.
    noisy = False

    def __init__(self, resource, max_body_bytes: int, idle_timeout: float, reactor=None):
        kwargs = {"timeout": idle_timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes

    def log(self, request):
        """The proxy writes its own request lines; skip the combined access log."""
