"""The SCEP proxy's decisions: which request goes upstream, and what the device hears.

This module knows nothing about HTTP servers: it takes the pieces of a request
(identifier segment, method, raw URI, body) and returns a L{ProxyAnswer}. The
web resource turns that into bytes on the wire and a log line.
"""

import attrs
from scepproxyd.daemon.logs import get_logger

from scepproxyd.scep import codec
from scepproxyd.scep.identifier import InvalidIdentifier, ProxyIdentifier, parse_identifier
from scepproxyd.scep.query import InvalidQuery, decode_message, parse_query, scep_operation
from scepproxyd.scep.upstream import PKI_MESSAGE_TYPE, UpstreamError

TEXT = b"text/plain; charset=utf-8"

# Device-facing reasons. One answer for every unknown piece, so the proxy
# cannot be used to find out which hosts, profiles or CAs exist.
UNKNOWN_TARGET = "unknown host, profile or CA"
CHALLENGE_FAILED = "custom scep challenge failed"
NOT_PENDING = "host profile is not awaiting enrollment"

# What may be answered from targets.TargetCache: these use only the target's CA (name, URL, mode).
CACHED_OPERATIONS = frozenset({"GetCACaps", "GetCACert"})


@attrs.frozen
class ProxyAnswer:
    status: int
    content_type: bytes
    body: bytes = attrs.field(repr=False)
    #: Short word for logs and metrics: ok, bad_request, unknown, challenge_failed, challenge_stale, ...
    outcome: str
    operation: str | None = None
    identifier: ProxyIdentifier | None = None
    upstream_status: int | None = None


def _refusal(status: int, outcome: str, reason: str, **fields) -> ProxyAnswer:
    return ProxyAnswer(status, TEXT, (reason + "\n").encode("utf-8"), outcome, **fields)


def _cert_message(params) -> str | None:
    """GetCACert's optional ``message`` (a CA identifier the device chose), as text for the CA."""
    message = params.get("message")
    return message.decode("utf-8", "replace") if message else None


class ScepProxy:
    """Check the identifier, spend the one-time challenge, forward, and record the outcome."""

    log = get_logger(__name__)

    def __init__(self, store, upstream, metrics=None, ra_flow=None, targets=None):
        self._store = store
        #: targets.TargetCache for GetCACaps and GetCACert; without one, they ask the store each time.
        self._targets = targets
        self._upstream = upstream
        self._metrics = metrics
        #: ra_flow.RaFlow for CAs in RA mode; without one, such a CA is refused as unavailable.
        self._ra = ra_flow

    def _count(self, event: str) -> None:
        if self._metrics is not None:
            self._metrics.challenge(event)

    async def handle(self, identifier_segment: bytes, method: bytes, uri: bytes, body: bytes) -> ProxyAnswer:
        try:
            ident = parse_identifier(identifier_segment)
            params = parse_query(uri)
            operation = scep_operation(params)
        except (InvalidIdentifier, InvalidQuery) as e:
            return _refusal(400, "bad_request", str(e))
        fields = {"operation": operation, "identifier": ident}
        if operation in CACHED_OPERATIONS and self._targets is not None:
            target = await self._targets.ca_target(ident.host_uuid, ident.profile_uuid, ident.ca_name)
        else:
            # PKIOperation reads fresh: the host profile's status and certificate decide what may enroll.
            target = await self._store.proxy_target(ident.host_uuid, ident.profile_uuid, ident.ca_name)
        if target is None:
            return _refusal(400, "unknown", UNKNOWN_TARGET, **fields)
        try:
            if target.ca_mode == "ra":
                return await self._through_ra(ident, target, operation, method, params, body, fields)
            if operation == "GetCACaps":
                return self._relay(await self._upstream.get_ca_caps(target.ca_url), fields)
            if operation == "GetCACert":
                return self._relay(await self._upstream.get_ca_cert(target.ca_url, _cert_message(params)), fields)
            return await self._pki_operation(ident, target, method, params, body, fields)
        except UpstreamError as e:
            status = 504 if e.timed_out else 502
            return _refusal(status, "upstream_timeout" if e.timed_out else "upstream_error", e.reason, **fields)

    def answer_in_memory(self, identifier_segment: bytes, method: bytes, uri: bytes) -> ProxyAnswer | None:
        """
        The answer to a GetCACaps or GetCACert, synchronously, when everything it needs is in memory; else None.

        Devices ask these far more often than they enroll. With the target
        and the CA's answer both cached, this is the same answer L{handle}
        would give, without a coroutine or a Deferred; on None the caller
        awaits L{handle}, which asks the store and the CA as needed.
        """
        if self._targets is None:
            return None
        try:
            ident = parse_identifier(identifier_segment)
            params = parse_query(uri)
            operation = scep_operation(params)
        except (InvalidIdentifier, InvalidQuery):
            return None  # handle() words the refusal
        if operation not in CACHED_OPERATIONS:
            return None
        held, target = self._targets.in_memory(ident.host_uuid, ident.profile_uuid, ident.ca_name)
        if not held:
            return None
        fields = {"operation": operation, "identifier": ident}
        if target is None:
            return _refusal(400, "unknown", UNKNOWN_TARGET, **fields)
        if target.ca_mode == "ra":
            return None
        message = _cert_message(params) if operation == "GetCACert" else None
        answer = self._upstream.answer_in_memory(target.ca_url, operation, message)
        if answer is None or answer.status >= 500:
            return None
        return self._relay(answer, fields)

    async def _through_ra(self, ident, target, operation, method, params, body, fields) -> ProxyAnswer:
        """A CA in RA mode: the proxy answers as its registration authority (ra_flow)."""
        if self._ra is None:
            raise UpstreamError("RA mode is not available on this node", answered=False)
        if operation == "GetCACaps":
            reply = await self._ra.get_ca_caps(target)
        elif operation == "GetCACert":
            reply = await self._ra.get_ca_cert(target, _cert_message(params))
        else:
            message, refused = self._pki_message(method, params, body, fields)
            if refused is not None:
                return refused
            reply = await self._ra.pki_operation(ident, target, message, lambda ident: self.spend(ident, fields))
        # The RA's answers name no request; the log line and metrics need this one's operation and identifier.
        return attrs.evolve(reply, **fields)

    def _relay(self, answer, fields) -> ProxyAnswer:
        if answer.status >= 500:
            raise UpstreamError("upstream CA failed (HTTP %d)" % (answer.status,), answered=True)
        outcome = "ok" if answer.status == 200 else "upstream_refused"
        return ProxyAnswer(
            answer.status, answer.content_type, answer.body, outcome, upstream_status=answer.status, **fields
        )

    def _message(self, method: bytes, params, body: bytes) -> bytes:
        if method == b"POST":
            if not body:
                raise InvalidQuery("PKIOperation POST has an empty body")
            return body
        if "message" not in params:
            raise InvalidQuery("PKIOperation GET needs a message parameter")
        return decode_message(params["message"])

    async def spend(self, ident, fields) -> tuple:
        """
        Spend the URL's one-time challenge: ``(ConsumedChallenge, None)``, or ``(None, the refusal to send)``.

        Both modes come here, so a bad challenge is refused, counted and
        logged the same way whether the CA is in passthrough or RA mode.
        """
        consumed = await self._store.consume_challenge(ident.challenge, ident.host_uuid, ident.profile_uuid)
        if consumed is not None:
            self._count("consumed")
            return consumed, None
        refusal = await self._store.challenge_failed(
            ident.challenge, ident.host_uuid, ident.profile_uuid, CHALLENGE_FAILED
        )
        if refusal.counted:
            return None, _refusal(400, "challenge_failed", CHALLENGE_FAILED, **fields)
        # Same answer to the device (no oracle); the host profile is left alone.
        self.log.warn(
            "stale proxy challenge refused, host profile unchanged: host={host} profile={profile} ca={ca}"
            " reason={reason} host_profile_status={hp_status}",
            host=ident.host_uuid, profile=ident.profile_uuid, ca=ident.ca_name,
            reason=refusal.reason, hp_status=refusal.status or "NULL",
        )
        return None, _refusal(400, "challenge_stale", CHALLENGE_FAILED, **fields)

    def _pki_message(self, method, params, body, fields) -> tuple:
        """The PKIOperation's message, ``(bytes, None)``, or ``(None, the refusal)`` when there is no SCEP SignedData."""
        try:
            message = self._message(method, params, body)
        except InvalidQuery as e:
            return None, _refusal(400, "bad_request", str(e), **fields)
        if not codec.looks_like_pki_message(message):
            return None, _refusal(400, "bad_request", "PKIOperation message is not a CMS SignedData", **fields)
        return message, None

    async def _pki_operation(self, ident, target, method, params, body, fields) -> ProxyAnswer:
        message, refused = self._pki_message(method, params, body, fields)
        if refused is not None:
            return refused
        # Learn how to reach the CA before spending the challenge: if it is down,
        # the device keeps a usable challenge without any put-back.
        use_post = await self._upstream.supports_post(target.ca_url)
        consumed, refused = await self.spend(ident, fields)
        if refused is not None:
            return refused
        if target.status != "pending":
            await self._store.challenge_settled(consumed)
            return _refusal(400, "not_pending", NOT_PENDING, **fields)
        try:
            answer = await self._upstream.pki_operation(target.ca_url, message, use_post)
        except UpstreamError as e:
            if e.answered:
                await self._store.challenge_settled(consumed)
            else:
                await self._store.restore_challenge(consumed)
                self._count("restored")
            raise
        # One parse of a CertRep in the common case; a second look only for answers without pkiStatus.
        pki_status, fail_info = codec.cert_rep_status(answer.body) if answer.status == 200 else (None, None)
        if pki_status is None and (answer.status != 200 or not codec.looks_like_pki_message(answer.body)):
            await self._store.challenge_settled(consumed)
            if answer.status != 200:
                raise UpstreamError("upstream CA failed (HTTP %d)" % (answer.status,), answered=True)
            # Also what a body cut short looks like when the CA sent no length.
            raise UpstreamError("upstream CA's answer is not a SCEP message", answered=True)
        outcome = {"SUCCESS": "ok", "PENDING": "pending", "FAILURE": "refused"}.get(pki_status, "ok")
        if pki_status == "PENDING":
            # The device will poll with the same URL; keep its challenge alive for that.
            await self._store.restore_challenge(consumed)
        elif pki_status == "FAILURE":
            # Counts only while the host profile is pending on this very challenge.
            await self._store.enrollment_refused(consumed, "upstream CA refused the request (%s)" % (fail_info,))
        else:
            await self._store.challenge_settled(consumed)
            await self._store.enrollment_forwarded(ident.host_uuid, ident.profile_uuid)
        return ProxyAnswer(200, PKI_MESSAGE_TYPE, answer.body, outcome, upstream_status=200, **fields)
