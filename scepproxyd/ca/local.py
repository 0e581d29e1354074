"""The built-in CA as an upstream of the proxy, reached in process rather than over HTTP.

The CA integration row keeps a real URL (``public_url/scep``) so admins see
where devices could reach it, but a proxied request never loops back through
our own listener: ``UpstreamRouter`` sends calls for that URL to
``LocalUpstream``, which answers with the same ``UpstreamAnswer`` objects the
HTTP client returns, so the proxy cannot tell the difference.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from scepproxyd.scep.upstream import IUpstream, UpstreamAnswer


def _answer(ca_answer) -> UpstreamAnswer:
    return UpstreamAnswer(ca_answer.status, ca_answer.content_type, ca_answer.body)


@implementer(IUpstream)
class LocalUpstream:
    """UpstreamClient's methods, answered by a ScepCA."""

    def __init__(self, authority):
        self._ca = authority

    def get_ca_caps(self, ca_url: str) -> defer.Deferred:
        return defer.succeed(_answer(self._ca.get_ca_caps()))

    def get_ca_cert(self, ca_url: str, message: str | None = None) -> defer.Deferred:
        return defer.maybeDeferred(lambda: _answer(self._ca.get_ca_cert()))

    def supports_post(self, ca_url: str) -> defer.Deferred:
        return defer.succeed(True)

    def answer_in_memory(self, ca_url: str, operation: str, message: str | None = None) -> UpstreamAnswer | None:
        """The CA's own answer, worked out here; None (the Deferred path) should working it out fail."""
        try:
            if operation == "GetCACaps":
                return _answer(self._ca.get_ca_caps())
            if operation == "GetCACert":
                return _answer(self._ca.get_ca_cert())
        except Exception:
            return None
        return None

    def pki_operation(self, ca_url: str, message: bytes, use_post: bool) -> defer.Deferred:
        # No client address: the proxy has already tied the request to a host
        # with a one-time challenge (see Policy.auto_approves).
        return defer.ensureDeferred(self._ca.pki_operation(message, None)).addCallback(_answer)

    def forget(self, ca_url: str) -> None:
        """Nothing is cached for the built-in CA."""

    def drop_connections(self) -> defer.Deferred:
        """No connections: the built-in CA is answered in process."""
        return defer.succeed(None)


@implementer(IUpstream)
class UpstreamRouter:
    """Picks the in-process CA for its own URL and the HTTP client for every other."""

    def __init__(self, remote, local: LocalUpstream | None = None, local_url: str | None = None):
        self._remote = remote
        self._local = local
        self._local_url = local_url

    def _pick(self, ca_url: str):
        if self._local is not None and ca_url == self._local_url:
            return self._local
        return self._remote

    def get_ca_caps(self, ca_url):
        return self._pick(ca_url).get_ca_caps(ca_url)

    def get_ca_cert(self, ca_url, message=None):
        return self._pick(ca_url).get_ca_cert(ca_url, message)

    def supports_post(self, ca_url):
        return self._pick(ca_url).supports_post(ca_url)

    def answer_in_memory(self, ca_url, operation, message=None):
        return self._pick(ca_url).answer_in_memory(ca_url, operation, message)

    def pki_operation(self, ca_url, message, use_post):
        return self._pick(ca_url).pki_operation(ca_url, message, use_post)

    def forget(self, ca_url):
        return self._pick(ca_url).forget(ca_url)

    def drop_connections(self):
        return self._remote.drop_connections()
