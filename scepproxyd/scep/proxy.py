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
from scepproxyd.store.models import RESENT_AFTER_EXPIRY

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
        #: CA name -> URL of the passthrough CAs the store named lately, and the targets_generation they belong
        #: to (see _remembered_url).
        self._ca_urls: dict[str, str] = {}
        self._ca_urls_generation = None

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
        try:
            if operation not in CACHED_OPERATIONS:
                # PKIOperation reads its target fresh (the host profile's status and certificate decide what
                # may enroll), in the same store job that spends the challenge.
                return await self._pki_operation(ident, (method, params, body), fields)
            if self._targets is not None:
                target = await self._targets.ca_target(ident.host_uuid, ident.profile_uuid, ident.ca_name)
            else:
                target = await self._store.proxy_target(ident.host_uuid, ident.profile_uuid, ident.ca_name)
            answer = await self._not_passthrough(ident, target, (method, params, body), fields, operation)
            if answer is not None:
                return answer
            if operation == "GetCACaps":
                return self._relay(await self._upstream.get_ca_caps(target.ca_url), fields)
            return self._relay(await self._upstream.get_ca_cert(target.ca_url, _cert_message(params)), fields)
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

    async def _not_passthrough(self, ident, target, request, fields, operation="PKIOperation"):
        """The answer for a target that is unknown (None) or whose CA is in RA mode; None for a passthrough CA."""
        if target is None:
            return _refusal(400, "unknown", UNKNOWN_TARGET, **fields)
        if target.ca_mode == "ra":
            return await self._through_ra(ident, target, operation, *request, fields)
        return None

    def _remembered_url(self, ca_name: str) -> str | None:
        """
        The URL a passthrough CA of this name had when the store last said, or None: a guess that
        begin_enrollment checks.

        It lets a PKIOperation ask the CA's capabilities (cached by the
        upstream client) before its one store job, without a read of its own.
        begin_enrollment spends nothing when the CA's mode or URL is not what
        was guessed, and a CA that fails at a guessed URL is looked up again,
        so a stale guess costs a job, never a wrong answer. Only the store's
        fresh answers fill it (_remember), and all is forgotten when a local
        admin change moves the store's targets_generation.
        """
        generation = self._store.targets_generation
        if generation != self._ca_urls_generation:
            self._ca_urls.clear()
            self._ca_urls_generation = generation
        return self._ca_urls.get(ca_name)

    def _remember(self, target) -> None:
        """Keep the URL of ``target``'s CA (just read from the store) for the next guess; forget one in RA mode."""
        if target is None:
            return
        self._remembered_url(target.ca_name)  # first drop what a local admin change made stale
        if target.ca_mode == "passthrough":
            self._ca_urls[target.ca_name] = target.ca_url
        else:
            self._ca_urls.pop(target.ca_name, None)

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

        RA mode's step (ra_flow), one store job. Passthrough spends in
        begin_enrollment with the rest of its first job; both end in _spent,
        so a bad challenge is refused, counted and logged the same way
        whatever the CA's mode.
        """
        consumed, refusal = await self._store.spend_challenge(
            ident.challenge, ident.host_uuid, ident.profile_uuid, CHALLENGE_FAILED
        )
        return self._spent(ident, consumed, refusal, fields)

    def _spent(self, ident, consumed, refusal, fields) -> tuple:
        """What spend answers once the challenge was taken (``consumed``) or refused (``refusal``): counted, logged."""
        if consumed is not None:
            self._count("consumed")
            return consumed, None
        if refusal.counted:
            return None, _refusal(400, "challenge_failed", CHALLENGE_FAILED, **fields)
        if refusal.reason == "expired":
            # The device came back after the TTL: same answer, and its profile is on its way again (no retry).
            self._count("expired_resent")
            self.log.info(
                RESENT_AFTER_EXPIRY, host=ident.host_uuid, profile=ident.profile_uuid, ca=ident.ca_name,
                waited=refusal.waited, found_by="device",
            )
            return None, _refusal(400, "challenge_expired", CHALLENGE_FAILED, **fields)
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

    async def _pki_operation(self, ident, request, fields) -> ProxyAnswer:
        """
        A PKIOperation: through the RA for a CA in RA mode; in passthrough, one store job before the upstream
        call (begin_enrollment) and one after (finish_enrollment).
        """
        message, refused = self._pki_message(*request, fields)
        if refused is not None:
            # As ever, an unknown identifier (and an RA-mode CA) is answered before the message is judged.
            _, answer = await self._read_target(ident, request, fields)
            return answer or refused
        return await self._enroll(ident, message, request, fields, self._remembered_url(ident.ca_name), True)

    async def _read_target(self, ident, request, fields) -> tuple:
        """The identifier's target read from the store now, and the answer if it is not a passthrough CA (else None)."""
        target = await self._store.proxy_target(ident.host_uuid, ident.profile_uuid, ident.ca_name)
        self._remember(target)
        return target, await self._not_passthrough(ident, target, request, fields)

    async def _enroll(self, ident, message, request, fields, ca_url, guarded) -> ProxyAnswer:
        """
        Spend the challenge, then forward ``message`` to the passthrough CA at ``ca_url``.

        ``ca_url`` is a remembered guess, or None to read the target first
        (also what happens when the CA fails at a guessed URL). Either way the
        CA's capabilities are learned before the challenge is spent: if the
        CA is down, the device keeps a usable challenge without any put-back.
        begin_enrollment then spends only for a passthrough CA at that URL
        (``guarded``); if the CA has moved meanwhile, this runs once more for
        the new URL, unguarded, so it ends.
        """
        guessed = ca_url is not None
        if not guessed:
            target, answer = await self._read_target(ident, request, fields)
            if answer is not None:
                return answer
            ca_url = target.ca_url
        try:
            use_post = await self._upstream.supports_post(ca_url)
        except UpstreamError:
            if not guessed:
                raise
            # The guess may be stale: what the store says now decides the answer. The same URL is not asked twice.
            target, answer = await self._read_target(ident, request, fields)
            if answer is not None:
                return answer
            if target.ca_url == ca_url:
                raise
            ca_url = target.ca_url
            use_post = await self._upstream.supports_post(ca_url)
        start = await self._store.begin_enrollment(
            ident.challenge, ident.host_uuid, ident.profile_uuid, ident.ca_name, ca_url if guarded else None,
            CHALLENGE_FAILED,
        )
        self._remember(start.target)
        answer = await self._not_passthrough(ident, start.target, request, fields)
        if answer is not None:
            return answer
        if start.consumed is None and start.refusal is None:  # the CA has moved: nothing was spent
            return await self._enroll(ident, message, request, fields, start.target.ca_url, False)
        consumed, refused = self._spent(ident, start.consumed, start.refusal, fields)
        if refused is not None:
            return refused
        if start.target.status != "pending":
            return _refusal(400, "not_pending", NOT_PENDING, **fields)  # begin_enrollment settled the challenge
        return await self._forward(consumed, ca_url, message, use_post, fields)

    async def _forward(self, consumed, ca_url, message, use_post, fields) -> ProxyAnswer:
        """Send the device's bytes upstream, then settle the spent challenge in one store job whatever happens."""
        try:
            answer = await self._upstream.pki_operation(ca_url, message, use_post)
        except UpstreamError as e:
            if e.answered:
                await self._store.finish_enrollment(consumed, "spent")
            else:
                await self._store.finish_enrollment(consumed, "restored")
                self._count("restored")
            raise
        # One look at the CertRep (codec.skim's, without building the CMS objects in the common case).
        signed, pki_status, fail_info = (
            codec.pki_message_status(answer.body) if answer.status == 200 else (False, None, None)
        )
        if pki_status is None and (answer.status != 200 or not signed):
            await self._store.finish_enrollment(consumed, "spent")
            if answer.status != 200:
                raise UpstreamError("upstream CA failed (HTTP %d)" % (answer.status,), answered=True)
            # Also what a body cut short looks like when the CA sent no length.
            raise UpstreamError("upstream CA's answer is not a SCEP message", answered=True)
        outcome = {"SUCCESS": "ok", "PENDING": "pending", "FAILURE": "refused"}.get(pki_status, "ok")
        if pki_status == "PENDING":
            # The device will poll with the same URL; keep its challenge alive for that.
            await self._store.finish_enrollment(consumed, "restored")
        elif pki_status == "FAILURE":
            # Counts only while the host profile is pending on this very challenge.
            await self._store.finish_enrollment(
                consumed, "refused", "upstream CA refused the request (%s)" % (fail_info,))
        else:
            await self._store.finish_enrollment(consumed, "forwarded")
        return ProxyAnswer(200, PKI_MESSAGE_TYPE, answer.body, outcome, upstream_status=200, **fields)
