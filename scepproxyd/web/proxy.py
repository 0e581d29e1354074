"""The ``/mdm/scep/proxy/{identifier}`` resource: HTTP in, L{ScepProxy} decisions out."""

from twisted.internet import defer
from twisted.logger import LogLevel
from scepproxyd.daemon.logs import emit_rendered, get_logger
from twisted.web import resource, server

from scepproxyd.scep.proxy import TEXT, ProxyAnswer
from scepproxyd.scep.query import is_pkiclient
from scepproxyd.store.models import StoreUnavailable
from scepproxyd.web.later import answer_later

#: The device's answer while the database cannot be written (a full disk); the device retries later.
UNAVAILABLE_BODY = b"service unavailable: the proxy cannot write its database; try again later\n"

log = get_logger(__name__)


class ProxyResource(resource.Resource):
    """Serves GET and POST for ``{identifier}`` and ``{identifier}/pkiclient.exe`` (in any case)."""

    isLeaf = True

    def __init__(self, proxy, clock, metrics=None):
        super().__init__()
        self._proxy = proxy
        self._clock = clock
        self._metrics = metrics

    def render(self, request):
        if request.method in (b"GET", b"POST"):
            return self._serve(request)
        started = self._clock.seconds()
        request.setHeader(b"Allow", b"GET, POST")
        answer = ProxyAnswer(405, TEXT, b"SCEP uses GET or POST\n", "bad_method")
        self._finish(request, answer, started)
        return server.NOT_DONE_YET

    def _serve(self, request):
        started = self._clock.seconds()
        segments = request.postpath
        if len(segments) == 2 and is_pkiclient(segments[1]):
            segments = segments[:1]
        if len(segments) != 1:
            answer = ProxyAnswer(
                400, TEXT, b"expected /mdm/scep/proxy/{identifier}\n", "bad_request"
            )
            self._finish(request, answer, started)
            return server.NOT_DONE_YET
        if request.method == b"GET":
            # GetCACaps / GetCACert with the target and the CA's answer cached: no Deferred at all.
            answer = self._proxy.answer_in_memory(segments[0], request.method, request.uri)
            if answer is not None:
                self._finish(request, answer, started)
                return server.NOT_DONE_YET
        body = request.content.read() if request.method == b"POST" else b""
        d = defer.ensureDeferred(self._proxy.handle(segments[0], request.method, request.uri, body))

        def failed(failure):
            if failure.check(StoreUnavailable):
                return ProxyAnswer(503, TEXT, UNAVAILABLE_BODY, "store_unavailable")
            log.failure("proxy request failed unexpectedly", failure)
            return ProxyAnswer(500, TEXT, b"internal error\n", "internal_error")

        d.addErrback(failed)
        d.addCallback(self._recorded, started)
        return answer_later(request, d, self._write)

    def _finish(self, request, answer: ProxyAnswer, started: float) -> None:
        self._write(request, self._recorded(answer, started))

    def _recorded(self, answer: ProxyAnswer, started: float) -> ProxyAnswer:
        """Log and count ``answer`` (whether or not the device is still there to get it)."""
        elapsed_ms = (self._clock.seconds() - started) * 1000.0
        ident = answer.identifier
        if self._metrics is not None:
            self._metrics.proxied(answer.operation, answer.outcome)
        # Rendered once here, not by each observer: this line is written for every request.
        emit_rendered(
            log, LogLevel.info,
            "proxy {operation} host={host} profile={profile} ca={ca} outcome={outcome} "
            "status={status} upstream_status={upstream_status} ms={ms:.1f}",
            operation=answer.operation or "-",
            host=ident.host_uuid if ident else "-",
            profile=ident.profile_uuid if ident else "-",
            ca=ident.ca_name if ident else "-",
            outcome=answer.outcome,
            status=answer.status,
            upstream_status=answer.upstream_status if answer.upstream_status is not None else "-",
            ms=elapsed_ms,
        )
        return answer

    def _write(self, request, answer: ProxyAnswer) -> None:
        request.setResponseCode(answer.status)
        request.setHeader(b"Content-Type", answer.content_type or b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % (len(answer.body),))
        request.write(answer.body)
        request.finish()
