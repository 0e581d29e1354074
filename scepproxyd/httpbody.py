"""Read an HTTP client response body with a size limit: one reader for every peer we call.

treq's own readers buffer without bound; a CA or an MDM answering with a
huge or endless body must not make us buffer it. Cancelling ``finished``
(e.g. from a timeout) drops the connection.
"""

from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss


class BodyTooLarge(Exception):
    """More than ``limit`` bytes arrived; the connection was dropped."""


class BodyBroken(Exception):
    """The connection failed before the body was complete."""


class LimitedBodyReader(protocol.Protocol):
    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished: defer.Deferred = defer.Deferred(lambda d: self._drop())

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(BodyTooLarge(self.limit))
            self._drop()
            return
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss, ConnectionDone):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(BodyBroken(reason.getErrorMessage()))


def read_limited(response, limit: int) -> defer.Deferred:
    """The body of ``response``, or BodyTooLarge (at once when the declared length is over)."""
    length = response.length
    if isinstance(length, int) and length > limit:
        response.deliverBody(protocol.Protocol())  # let the connection go
        return defer.fail(BodyTooLarge(limit))
    reader = LimitedBodyReader(limit)
    response.deliverBody(reader)
    return reader.finished
