"""The built-in SCEP CA: GetCACaps, GetCACert and PKIOperation, answered in process.

Both the ``/scep`` resource and the proxy (through ``LocalUpstream``) come
here, so a request is judged the same way whichever path it took. Every
decode, verify or decrypt failure gets one generic answer: a CertRep
FAILURE badMessageCheck when the sender can be answered at all, otherwise
"not a SCEP message"; which step failed is logged at debug level only.

CPU-heavy work (RSA verify, decrypt, sign) runs in threads, never on the
reactor; all SQL goes through the store.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, threads

from scepproxyd.ca import csr_policy
from scepproxyd.ca.crl import CrlCache
from scepproxyd.ca.issuer import CsrError, build_certificate, check_csr, serial_hex
from scepproxyd.ca.policy import WRONG_CHALLENGE, challenge_hash
from scepproxyd.daemon.logs import get_logger
from scepproxyd.profiles import ProfileError, binding
from scepproxyd.scep import codec
from scepproxyd.store import AlreadyAnswered, CaRequest, DuplicateError, IssuedCertificate
from scepproxyd.store.ca import CaGrant, ChallengeSpent

CAPS = b"POSTPKIOperation\nRenewal\nSHA-1\nSHA-256\nSHA-384\nSHA-512\nAES\nDES3\nSCEPStandard\n"
TEXT = b"text/plain; charset=utf-8"
CA_CERT_TYPE = b"application/x-x509-ca-cert"
CA_RA_CERT_TYPE = b"application/x-x509-ca-ra-cert"
PKI_MESSAGE_TYPE = b"application/x-pki-message"
NOT_SCEP = b"not a SCEP message\n"


@attrs.frozen
class CaAnswer:
    """What the CA says, and what the log line needs about it."""

    status: int
    content_type: bytes
    body: bytes = attrs.field(repr=False)
    operation: str
    outcome: str
    message_type: str | None = None
    transaction_id: str | None = None
    serial: str | None = None
    #: Why a request failed (the failInfoText, or the failInfo name): for the log, never a secret.
    detail: str | None = None


#: A host profile's BindingFacts not looked up yet (None means looked up and gone).
_UNREAD = object()


def _in_thread(function, *args, **kwargs) -> defer.Deferred:
    return threads.deferToThread(function, *args, **kwargs)


class RefusedToIssue(Exception):
    """The CA will not sign this request; ``str()`` says why (never a secret)."""


class _Refusal(RefusedToIssue):
    """A FAILURE CertRep to send: RFC 8894 failInfo name and a short text for the device."""

    def __init__(self, fail_info: str, text: str | None, outcome: str = "failed"):
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text
        self.outcome = outcome


class ScepCA:
    """Answers SCEP operations for the CA in ``material`` under ``policy`` and ``templates``."""

    log = get_logger(__name__)

    def __init__(self, store, material, policy, templates: dict, public_url: str, crl_validity: float,
                 clock, run_in_thread=_in_thread, key_policy=None, metrics=None):
        self._store = store
        self._key_policy = key_policy if key_policy is not None else csr_policy.KeyPolicy()
        self._metrics = metrics
        self.material = material
        self._policy = policy
        self._templates = templates
        self.crl_url = public_url.rstrip("/") + "/scep/crl"
        self._clock = clock
        self._thread = run_in_thread
        self.crl = CrlCache(store, material, crl_validity, clock, run_in_thread)
        #: Enrollment outcomes since start, for the admin overview.
        self.outcomes = dict.fromkeys(("issued", "pending", "rejected", "failed"), 0)

    @property
    def default_template(self) -> str:
        return self._policy.default_template

    # -- GetCACaps / GetCACert ---------------------------------------------

    def get_ca_caps(self) -> CaAnswer:
        return CaAnswer(200, b"text/plain", CAPS, "GetCACaps", "ok")

    def get_ca_cert(self) -> CaAnswer:
        if self.material.ra_certificate is None:
            der = self.material.certificate.public_bytes(serialization.Encoding.DER)
            return CaAnswer(200, CA_CERT_TYPE, der, "GetCACert", "ok")
        chain = codec.degenerate_certificates([self.material.ra_certificate, self.material.certificate])
        return CaAnswer(200, CA_RA_CERT_TYPE, chain, "GetCACert", "ok")

    # -- PKIOperation ----------------------------------------------------------

    async def pki_operation(self, message: bytes, requester: str | None) -> CaAnswer:
        """Answer one PKIOperation; ``requester`` is the client's IP, or None through the proxy."""
        answer = await self._pki_operation(message, requester)
        if self._metrics is not None:
            self._metrics.ca_operation(answer.message_type or "-", answer.outcome)
        self.log.info(
            "ca {operation} type={message_type} transaction={transaction_id} outcome={outcome} serial={serial} "
            "requester={requester} detail={detail}",
            operation=answer.operation, message_type=answer.message_type or "-",
            transaction_id=answer.transaction_id or "-", outcome=answer.outcome,
            serial=answer.serial or "-", requester=requester or "proxy", detail=answer.detail or "-",
        )
        return answer

    async def _pki_operation(self, message: bytes, requester) -> CaAnswer:
        try:
            # One worker-thread call reads the signed header and the content (parsed and verified once).
            header, request = await self._thread(
                codec.open_request, message, self.material.message_key, self.material.message_certificate
            )
        except codec.MessageError as e:
            self.log.debug("ca PKIOperation refused: {reason}", reason=str(e))
            return CaAnswer(400, TEXT, NOT_SCEP, "PKIOperation", "not_scep")
        kind = header.message_type
        fields = {"message_type": kind, "transaction_id": header.transaction_id}
        if isinstance(request, codec.MessageError):
            self.log.debug("ca PKIOperation {transaction_id} undecodable: {reason}",
                           transaction_id=header.transaction_id, reason=str(request))
            return await self._failure(header, None, _Refusal("badMessageCheck", None, "bad_message"), fields)
        handlers = {
            "PKCSReq": self._enroll, "RenewalReq": self._renew, "CertPoll": self._poll,
            "GetCert": self._get_cert, "GetCRL": self._get_crl,
        }
        handler = handlers.get(kind)
        try:
            if handler is None:
                raise _Refusal("badRequest", "unsupported message type")
            status, extra = await handler(request, requester)
        except _Refusal as refusal:
            if kind in ("PKCSReq", "RenewalReq") and refusal.outcome == "failed":
                self.outcomes["failed"] += 1  # rejections are counted once, when the admin rejects
            return await self._failure(header, request, refusal, fields)
        body = extra.get("body")
        if body is None:
            body = await self._reply(header, request, status, **extra.get("reply", {}))
        outcome = extra.get("outcome", "ok")
        if outcome in self.outcomes:
            self.outcomes[outcome] += 1
        return CaAnswer(200, PKI_MESSAGE_TYPE, body, "PKIOperation", outcome, serial=extra.get("serial"), **fields)

    async def _reply(self, header, request, status, fail_info=None, fail_info_text=None, certificates=None, crl=None):
        return await self._thread(self._cert_rep, header, request, status, fail_info=fail_info,
                                  fail_info_text=fail_info_text, certificates=certificates, crl=crl)

    def _cert_rep(self, header, request, status, fail_info=None, fail_info_text=None, certificates=None, crl=None):
        """The signed CertRep answering ``header`` (RSA and CMS work: call it on a worker thread)."""
        encryption = codec.choose_content_encryption(request.content_encryption if request is not None else None)
        return codec.build_cert_rep(
            header=header, status=status, signer_key=self.material.message_key,
            signer_certificate=self.material.message_certificate,
            fail_info=fail_info, fail_info_text=fail_info_text, certificates=certificates, crl=crl,
            content_encryption=encryption,
            extra_certificates=[self.material.certificate] if self.material.ra_certificate is not None else None,
        )

    async def _failure(self, header, request, refusal: _Refusal, fields) -> CaAnswer:
        body = await self._reply(header, request, "FAILURE", fail_info=refusal.fail_info,
                                 fail_info_text=refusal.text)
        return CaAnswer(200, PKI_MESSAGE_TYPE, body, "PKIOperation", refusal.outcome,
                        detail=refusal.text or refusal.fail_info, **fields)

    def _success(self, certificate: x509.Certificate, outcome: str = "ok"):
        return "SUCCESS", {"reply": {"certificates": [certificate]}, "outcome": outcome,
                           "serial": serial_hex(certificate.serial_number)}

    async def _issued(self, request, csr, template, row, renewal_of=None, spend_challenge=None):
        """Issue at once, answering ``request`` with a CertRep kept in the same store transaction."""
        try:
            issued = await self.issue(csr, template, row, renewal_of=renewal_of, answer_to=request,
                                      spend_challenge=spend_challenge)
        except ChallengeSpent:
            # Another request with the same one-time challenge was recorded first: this very
            # message (sent twice at once) gets that answer, any other request is refused.
            known = await self._known_transaction(request)
            if known is None:
                raise _Refusal("badRequest", WRONG_CHALLENGE) from None
            return known
        except AlreadyAnswered:
            # The same message, sent twice at once, was answered meanwhile: the requester gets that answer.
            known = await self._known_transaction(request)
            if known is None:
                raise _Refusal("badRequest", "this message was answered already") from None
            return known
        return "SUCCESS", {"body": issued.answer, "outcome": "issued",
                           "serial": serial_hex(issued.certificate.serial_number)}

    # -- PKCSReq / RenewalReq ------------------------------------------------------

    def _checked_csr(self, request) -> x509.CertificateSigningRequest:
        if request.csr is None:
            raise _Refusal("badRequest", "request carries no CSR")
        try:
            check_csr(request.csr, signature_verified=True)  # read_request checked it as the client sent it
        except CsrError as e:
            raise _Refusal("badRequest", str(e)) from None
        return request.csr

    async def _enroll(self, request, requester):
        known = await self._known_transaction(request)
        if known is not None:
            return known
        csr = self._checked_csr(request)
        found = await self._grant_for(csr)
        if found is None:
            # The same message sent twice at once: its twin may have spent the one-time
            # challenge between our first look-up and this one. The twin's answer is ours.
            known = await self._known_transaction(request)
            if known is not None:
                return known
            self._refused_by_policy("challenge")
            raise _Refusal("badRequest", WRONG_CHALLENGE)
        grant, kind, spend, facts = found
        if grant.template not in self._templates:
            await self._spend_refused(grant, spend, "certificate template %s no longer exists" % (grant.template,))
            raise _Refusal("badRequest", "certificate template %s no longer exists" % (grant.template,))
        await self._judge(request, csr, grant, spend, facts)
        subject = csr.subject.rfc4514_string()
        row = self._request_row(request, "pending", grant.template, requester, grant)
        if not self._policy.auto_approves(subject, requester, grant=kind):
            try:
                await self._store.add_pending_request(row, spend_challenge=spend)
            except DuplicateError:
                raise _Refusal("badRequest", "transaction ID is already in use") from None
            except ChallengeSpent:
                known = await self._known_transaction(request)  # its twin, sent at the same time, was recorded
                if known is None:
                    raise _Refusal("badRequest", WRONG_CHALLENGE) from None
                return known
            return "PENDING", {"outcome": "pending"}
        return await self._issued(request, csr, grant.template, row, spend_challenge=spend)

    async def _grant_for(self, csr) -> tuple[CaGrant, str, str | None, object] | None:
        """
        What authorises this CSR: ``(grant, kind, hash of the one-time challenge to spend, facts)``; None if nothing
        does. ``facts`` are the BindingFacts of the host profile a rendered challenge is bound to (None if it is
        gone), read in the same store look-up as the challenge.

        A one-time challenge (rendered into one host profile's profile, or
        minted by an admin) is looked at here and spent in the transaction
        that records the request's outcome, so a crash in between leaves it
        usable for the device's retry; the static challenge only counts
        while ``[ca] static_challenge`` is on.
        """
        try:
            challenge = codec.csr_challenge_password(csr)
        except codec.MessageError:
            challenge = None
        if self._policy.is_static_challenge(challenge):
            return CaGrant(self._policy.default_template, None, None), "static", None, None
        hashed = challenge_hash(challenge) if challenge else None
        grant, facts = await self._store.peek_ca_grant(hashed) if hashed else (None, None)
        if grant is None:
            return None
        return grant, ("host_profile" if grant.host_uuid is not None else "minted"), hashed, facts

    async def _spend_refused(self, grant: CaGrant, spend: str | None, reason: str) -> None:
        """A refused request spends its one-time challenge; a host profile's is sent again, ``reason`` kept."""
        if grant.host_uuid is not None:
            await self._store.ca_request_refused(grant.host_uuid, grant.profile_uuid, reason, spend_challenge=spend)
        elif spend is not None:
            await self._store.consume_ca_challenge(spend)

    async def _judge(self, request, csr, grant: CaGrant, spend: str | None = None, facts=_UNREAD) -> None:
        """
        Apply the issuance policy; a refusal (FAILURE CertRep) if the CSR does not pass.

        A request tied to a host profile must ask for what that profile
        rendered for that host; every request meets the key policy and its
        template's SAN policy. A refused host profile request spends its
        challenge, so the host profile is sent again with a fresh one, its
        ``detail`` saying why. ``facts``: the host profile's BindingFacts when already read.
        """
        refusal = await self._policy_refusal(csr, grant, facts)
        if refusal is None:
            return
        self._refused_by_policy(refusal.check)
        self.log.warn(
            "ca refused {transaction_id} for host {host} profile {profile}: {reason}",
            transaction_id=request.header.transaction_id, host=grant.host_uuid or "-",
            profile=grant.profile_uuid or "-", reason=refusal.reason,
        )
        await self._spend_refused(grant, spend, refusal.reason)
        raise _Refusal(refusal.fail_info, refusal.reason, "refused")

    async def _policy_refusal(self, csr, grant: CaGrant, facts=_UNREAD):
        """The issuance policy's csr_policy.Refusal for ``csr``, or None when it may be signed."""
        if grant.host_uuid is None:
            facts = None
        else:
            if facts is _UNREAD:
                facts = await self._store.binding_facts(grant.host_uuid, grant.profile_uuid)
            if facts is None:
                raise _Refusal("badRequest", "the host profile this challenge was issued for no longer exists")
        return await self._thread(self._refusal_for, csr, grant, facts)

    def _refusal_for(self, csr, grant: CaGrant, facts):
        """
        On a worker thread, in one call: what the host profile in ``facts`` (if any) asks for, then the policy.
        """
        expected = None
        if facts is not None:
            try:
                expected = expected_for(facts)
            except ProfileError as e:
                return csr_policy.Refusal("badRequest", "its host profile cannot be checked: %s" % (e,), "profile")
        return csr_policy.refusal(
            csr, key_policy=self._key_policy, san_policy=self._templates[grant.template].san_policy,
            ca_subject=self.material.certificate.subject, expected=expected,
        )

    def _refused_by_policy(self, check: str) -> None:
        if self._metrics is not None:
            self._metrics.ca_refused(check)

    async def _renew(self, request, requester):
        header = request.header
        known = await self._known_transaction(request)
        if known is not None:
            return known
        signer = header.signer_certificate
        record = None
        if signer.issuer == self.material.certificate.subject:
            record = await self._store.get_issued_certificate(serial_hex(signer.serial_number))
            if record is not None and record.der != signer.public_bytes(serialization.Encoding.DER):
                record = None
        refusal = self._policy.renewal_refusal(record, self._clock.seconds())
        if refusal is not None:
            raise _Refusal("badRequest", refusal)
        csr = self._checked_csr(request)
        if csr.subject.rfc4514_string() != record.subject:
            raise _Refusal("badRequest", "renewal must keep the subject of the certificate it renews")
        template = record.template if record.template in self._templates else self._policy.default_template
        # A renewal stays on the host profile of the certificate it renews, under the same policy.
        grant = CaGrant(template, record.host_uuid, record.profile_uuid)
        await self._judge(request, csr, grant)
        row = self._request_row(request, "pending", template, requester, grant)
        return await self._issued(request, csr, template, row, renewal_of=record.serial)

    def _request_row(self, request, status, template, requester, grant: CaGrant) -> CaRequest:
        now = self._clock.seconds()
        return CaRequest(
            transaction_id=request.header.transaction_id, status=status,
            subject=request.csr.subject.rfc4514_string(),
            csr=request.csr.public_bytes(serialization.Encoding.DER),
            signer_certificate=request.header.signer_certificate.public_bytes(serialization.Encoding.DER),
            requester=requester, template=template, detail=None, issued_serial=None,
            created_at=now, updated_at=now, sender_nonce=request.header.sender_nonce.hex(),
            host_uuid=grant.host_uuid, profile_uuid=grant.profile_uuid,
        )

    async def _known_transaction(self, request):
        """
        The answer for a PKCSReq/RenewalReq the CA has seen before, or None for a new one.

        micromdm scepclient polls by resending its request, so a pending one
        hears PENDING again and an approved one gets its certificate. A
        requester whose answer was lost (a dropped connection, a crash after
        issuing) sends the same message again and gets its certificate again:
        the CertRep kept when it was issued at once (same bytes, so its
        recipientNonce is this message's senderNonce), or a fresh one with
        the same certificate once an approved one was delivered. The same
        message signed by anyone else (a replay), and a rejected CSR resent,
        are refused; another CSR under an open transaction ID is too. No
        path issues a second certificate for one message. A finished
        transaction ID may start anew: clients derive it from the key, which
        a renewal may keep.
        """
        existing, answered = await self._store.seen_request(
            request.header.transaction_id, request.header.sender_nonce.hex()
        )
        if existing is not None:
            same_csr = request.csr is not None and request.csr.public_bytes(serialization.Encoding.DER) == existing.csr
            if existing.status == "issued" and same_csr and _same_message(request, existing):
                if existing.answer is not None:
                    return "SUCCESS", {"body": existing.answer, "outcome": "answered_again",
                                       "serial": existing.issued_serial}
                return await self._deliver(existing, "answered_again")
            if existing.status in ("pending", "approved"):
                if not same_csr or not _same_signer(request, existing):
                    raise _Refusal("badRequest", "transaction ID is already in use")
                if existing.status == "approved":
                    return await self._deliver(existing)
                return "PENDING", {"outcome": "still_pending"}
            if existing.status == "rejected" and same_csr:
                return self._poll_answer(existing)
        if answered:
            raise _Refusal("badRequest", "this message was answered already")
        return None

    def _poll_answer(self, existing: CaRequest):
        if existing.status == "pending":
            return "PENDING", {"outcome": "still_pending"}
        if existing.status == "rejected":
            raise _Refusal("badRequest", existing.detail or "request rejected by the CA's administrator", "rejected")
        return None

    async def _deliver(self, existing: CaRequest, outcome: str = "delivered"):
        record = await self._store.get_issued_certificate(existing.issued_serial)
        if record is None:
            raise _Refusal("badCertId", "certificate not found")
        await self._store.ca_request_delivered(existing.transaction_id)
        return self._success(x509.load_der_x509_certificate(record.der), outcome)

    # -- CertPoll / GetCert / GetCRL ---------------------------------------------------

    async def _poll(self, request, requester):
        """
        CertPoll: only the requester may poll, so it must be signed with the original request's key.

        Anyone else (a transaction ID is no secret) hears "unknown
        transaction" and changes nothing.
        """
        existing = await self._store.get_ca_request(request.header.transaction_id)
        if existing is None or not _same_signer(request, existing):
            raise _Refusal("badRequest", "unknown transaction")
        answer = self._poll_answer(existing)
        if answer is not None:
            return answer
        return await self._deliver(existing)

    async def _get_cert(self, request, requester):
        issuer, serial = request.issuer_and_serial or (None, None)
        record = None
        if issuer == self.material.certificate.subject and serial is not None:
            record = await self._store.get_issued_certificate(serial_hex(serial))
        if record is None or not await self._asked_by_holder(request, record):
            raise _Refusal("badCertId", "no such certificate")
        return self._success(x509.load_der_x509_certificate(record.der))

    async def _asked_by_holder(self, request, record: IssuedCertificate) -> bool:
        """GetCert answers only the certificate's own key or the key that requested it."""
        signer = _public_key_der(request.header.signer_certificate)
        if signer == _public_key_der(x509.load_der_x509_certificate(record.der)):
            return True
        if record.transaction_id is None:
            return False
        origin = await self._store.get_ca_request(record.transaction_id)
        return origin is not None and origin.issued_serial == record.serial and _same_signer(request, origin)

    async def _get_crl(self, request, requester):
        der = await self.crl.der()
        return "SUCCESS", {"reply": {"crl": der}}

    # -- issuing -------------------------------------------------------------------------

    async def issue(self, csr, template: str, request: CaRequest, renewal_of=None,
                    approve: bool = False, answer_to=None, spend_challenge: str | None = None) -> "Issued":
        """
        Sign ``csr`` under ``template``, record it with its transaction, and tell the profile engine.

        The transaction ``request`` is recorded as issued in the same store
        transaction, with the SUCCESS CertRep answering ``answer_to`` (the
        codec's PkiRequest) when given, so a crash leaves either nothing
        issued or a certificate whose answer a retry fetches; with
        ``approve`` the pending transaction is approved instead (the device
        fetches the certificate with CertPoll).
        """
        now = self._clock.seconds()
        reply_to = answer_to if not approve else None
        try:
            certificate, answer = await self._thread(self._sign, csr, template, now, reply_to)
        except CsrError as e:
            # The issuance policy refuses all of these first; this is the signer's own last word.
            raise _Refusal("badRequest", str(e)) from None
        record = IssuedCertificate(
            serial=serial_hex(certificate.serial_number), subject=certificate.subject.rfc4514_string(),
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
            status="valid", revoked_at=None, revocation_reason=None, requester=request.requester,
            transaction_id=request.transaction_id, template=template, renewal_of=renewal_of,
            der=certificate.public_bytes(serialization.Encoding.DER), created_at=now,
            sender_nonce=request.sender_nonce, host_uuid=request.host_uuid, profile_uuid=request.profile_uuid,
        )
        if approve:
            await self._store.approve_ca_request(request.transaction_id, record)
        else:
            try:
                await self._store.record_issued(
                    attrs.evolve(request, status="issued", issued_serial=record.serial, updated_at=now,
                                 answer=answer),
                    record, spend_challenge=spend_challenge,
                )
            except DuplicateError:
                raise _Refusal("badRequest", "transaction ID is already in use") from None
        if record.host_uuid is not None:
            # Recorded on the host profile whose challenge earned it, in the same store transaction;
            # never on whatever renewal ID its subject names.
            self.log.info("ca certificate {serial} recorded for host {host} profile {profile}",
                          serial=record.serial, host=record.host_uuid, profile=record.profile_uuid)
        return Issued(certificate, answer)

    def _sign(self, csr, template: str, now: float, answer_to=None):
        """
        On a worker thread, in one call: the certificate, and the SUCCESS CertRep answering ``answer_to`` (or None).
        """
        certificate = build_certificate(csr, self.material.key, self.material.certificate,
                                        self._templates[template], self.crl_url, now)
        if answer_to is None:
            return certificate, None
        return certificate, self._cert_rep(answer_to.header, answer_to, "SUCCESS", certificates=[certificate])


@attrs.frozen
class Issued:
    """A certificate just issued, and the CertRep kept with it (None when approved for a later poll)."""

    certificate: x509.Certificate
    answer: bytes | None = attrs.field(repr=False)


def _public_key_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _same_message(request, existing: CaRequest) -> bool:
    """Whether ``request`` is the very message that opened ``existing`` (its senderNonce), from the same key."""
    return existing.sender_nonce == request.header.sender_nonce.hex() and _same_signer(request, existing)


def _same_signer(request, existing: CaRequest) -> bool:
    """Whether ``request`` is signed with the same key as the transaction ``existing`` (RFC 8894 polling)."""
    if existing.signer_certificate is None:
        return False
    try:
        original = x509.load_der_x509_certificate(existing.signer_certificate)
    except ValueError:
        return False
    return _public_key_der(request.header.signer_certificate) == _public_key_der(original)


def expected_for(facts) -> "binding.ExpectedRequest":
    """What the host profile in ``facts`` (a store BindingFacts) asks its device to request."""
    return binding.expected_request(
        facts.kind, facts.content, renewal_id=facts.renewal_id,
        host=binding.HostFacts(uuid=facts.host_uuid, serial=facts.serial, platform=facts.platform,
                               end_user=facts.end_user),
    )
