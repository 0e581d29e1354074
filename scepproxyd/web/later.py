"""Answering a request when its answer is ready, if the client is still there.

Most answers are worked out asynchronously (the database thread, an upstream
CA, a worker thread), and a client may hang up meanwhile. Twisted then
refuses ``request.finish()`` (RuntimeError, an unhandled error in the log),
so every resource that answers later must remember whether its request went
away. This is the one place that does it, for the proxy, the built-in CA,
the JSON APIs, the health checks and the NanoMDM webhook.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.web import server


def answer_later(request, work: defer.Deferred, write) -> int:
    """
    Call ``write(request, result)`` when ``work`` fires, unless the connection was lost first.

    Returns ``NOT_DONE_YET``, for ``render()`` to return. The work itself is
    never cancelled: what it changed and logged stands; only the answer has
    nobody to go to. ``work`` should turn its failures into answers first
    (a 500, a 503), since a failure reaching here is only logged by Twisted.
    """
    gone = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))
    work.addCallback(lambda result: None if gone else write(request, result))
    return server.NOT_DONE_YET
