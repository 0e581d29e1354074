"""``/scep`` and ``/scep/crl``: the built-in CA on the device-facing listener.

Query parsing is the proxy's (``scepproxyd.scep.query``), so a ``message=``
with a literal ``+`` or either base64 alphabet reads the same on both paths.
Bad requests get ``400 text/plain``; a PKIOperation that cannot be read at
all gets "not a SCEP message", never a traceback or a hint which step failed.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.web import resource

from scepproxyd.ca.authority import NOT_SCEP, TEXT, CaAnswer
from scepproxyd.daemon.logs import get_logger
from scepproxyd.scep.query import InvalidQuery, decode_message, is_pkiclient, parse_query, scep_operation
from scepproxyd.store.models import StoreUnavailable
from scepproxyd.web.later import answer_later

log = get_logger(__name__)

CRL_TYPE = b"application/pkix-crl"


def _text(status: int, reason: str, operation: str, outcome: str) -> CaAnswer:
    return CaAnswer(status, TEXT, (reason + "\n").encode("utf-8"), operation, outcome)


class ScepResource(resource.Resource):
    """
    GET/POST ``/scep[/pkiclient.exe]?operation=...`` and GET ``/scep/crl``.

    With ``cgi_bin`` it is mounted at ``/cgi-bin`` and serves only
    ``/cgi-bin/pkiclient.exe``, the path Cisco IOS uses for an enrollment
    URL without one. ``pkiclient.exe`` is matched in any case.
    """

    isLeaf = True

    def __init__(self, authority, cgi_bin: bool = False):
        super().__init__()
        self._ca = authority
        self._cgi_bin = cgi_bin

    def _is_scep_path(self, path: list) -> bool:
        if len(path) == 1 and is_pkiclient(path[0]):
            return True
        return not self._cgi_bin and path in ([], [b""])

    def render_GET(self, request):
        return self._serve(request)

    render_POST = render_GET

    def _serve(self, request):
        path = request.postpath
        if path == [b"crl"] and not self._cgi_bin:
            work = self._crl() if request.method == b"GET" else defer.succeed(
                _text(405, "use GET for the CRL", "GetCRL", "bad_request"))
        elif self._is_scep_path(path):
            work = defer.ensureDeferred(self._scep(request))
        else:
            work = defer.succeed(_text(404, "no such SCEP resource", "-", "not_found"))

        def failed(failure):
            if failure.check(StoreUnavailable):
                return _text(503, "service unavailable: the CA cannot write its database; try again later", "-",
                             "store_unavailable")
            log.failure("built-in CA request failed unexpectedly", failure)
            return _text(500, "internal error", "-", "internal_error")

        work.addErrback(failed)
        return answer_later(request, work, self._write)

    def _crl(self) -> defer.Deferred:
        return self._ca.crl.crl().addCallback(lambda der: CaAnswer(200, CRL_TYPE, der, "GetCRL", "ok"))

    async def _scep(self, request) -> CaAnswer:
        try:
            params = parse_query(request.uri)
            operation = scep_operation(params)
        except InvalidQuery as e:
            return _text(400, str(e), "-", "bad_request")
        if operation == "GetCACaps":
            return self._ca.get_ca_caps()
        if operation == "GetCACert":
            return self._ca.get_ca_cert()
        if request.method == b"POST":
            message = request.content.read()
        else:
            try:
                message = decode_message(params.get("message", b""))
            except InvalidQuery:
                message = b""
        if not message:
            log.info("ca PKIOperation outcome=not_scep status=400 (no message)")
            return CaAnswer(400, TEXT, NOT_SCEP, "PKIOperation", "not_scep")
        peer = request.getClientAddress()
        return await self._ca.pki_operation(message, getattr(peer, "host", None) or "-")

    def _write(self, request, answer: CaAnswer) -> None:
        if answer.operation != "PKIOperation":
            # PKIOperations are logged by the CA, with their transaction.
            log.info("ca {operation} outcome={outcome} status={status}", operation=answer.operation,
                     outcome=answer.outcome, status=answer.status)
        request.setResponseCode(answer.status)
        request.setHeader(b"Content-Type", answer.content_type)
        request.setHeader(b"Content-Length", b"%d" % (len(answer.body),))
        if request.method != b"HEAD":
            request.write(answer.body)
        request.finish()
