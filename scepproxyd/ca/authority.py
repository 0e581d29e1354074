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
from cryptography.x509.oid import NameOID
from twisted.internet import defer, threads

from scepproxyd.ca.crl import CrlCache
from scepproxyd.ca.issuer import CsrError, build_certificate, check_csr, serial_hex
from scepproxyd.ca.policy import WRONG_CHALLENGE, challenge_hash
from scepproxyd.logs import get_logger
from scepproxyd.scep import codec
from scepproxyd.store import CaRequest, DuplicateError, IssuedCertificate
from scepproxyd.store.models import RENEWAL_ID_PATTERN

CAPS = b"POSTPKIOperation\nRenewal\nSHA-1\nSHA-256\nSHA-384\nSHA-512\nAES\nDES3\nSCEPStandard\n"
TEXT = b"text/plain; charset=utf-8"
CA_CERT_TYPE = b"application/x-x509-ca-cert"
CA_RA_CERT_TYPE = b"application/x-x509-ca-ra-cert"
PKI_MESSAGE_TYPE = b"application/x-pki-message"
NOT_SCEP = b"not a SCEP message\n"
RENEWAL_ID = RENEWAL_ID_PATTERN


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


def _in_thread(function, *args, **kwargs) -> defer.Deferred:
    return threads.deferToThread(function, *args, **kwargs)


def renewal_ids(certificate: x509.Certificate) -> list[str]:
    """Renewal IDs (``sp-`` and 16 hex digits) found in the certificate's CN or OU."""
    found = []
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
        for attribute in certificate.subject.get_attributes_for_oid(oid):
            found.extend(RENEWAL_ID.findall(str(attribute.value)))
    return list(dict.fromkeys(found))


class _Refusal(Exception):
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
                 clock, run_in_thread=_in_thread):
        self._store = store
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
            header = await self._thread(codec.read_header, message)
        except codec.MessageError as e:
            self.log.debug("ca PKIOperation refused: {reason}", reason=str(e))
            return CaAnswer(400, TEXT, NOT_SCEP, "PKIOperation", "not_scep")
        kind = header.message_type
        fields = {"message_type": kind, "transaction_id": header.transaction_id}
        try:
            request = await self._thread(
                codec.read_request, message, self.material.message_key, self.material.message_certificate
            )
        except codec.MessageError as e:
            self.log.debug("ca PKIOperation {transaction_id} undecodable: {reason}",
                           transaction_id=header.transaction_id, reason=str(e))
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
        body = await self._reply(header, request, status, **extra.get("reply", {}))
        outcome = extra.get("outcome", "ok")
        if outcome in self.outcomes:
            self.outcomes[outcome] += 1
        return CaAnswer(200, PKI_MESSAGE_TYPE, body, "PKIOperation", outcome, serial=extra.get("serial"), **fields)

    async def _reply(self, header, request, status, fail_info=None, fail_info_text=None, certificates=None, crl=None):
        encryption = codec.choose_content_encryption(request.content_encryption if request is not None else None)
        return await self._thread(
            codec.build_cert_rep,
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

    # -- PKCSReq / RenewalReq ------------------------------------------------------

    def _checked_csr(self, request) -> x509.CertificateSigningRequest:
        if request.csr is None:
            raise _Refusal("badRequest", "request carries no CSR")
        try:
            check_csr(request.csr)
        except CsrError as e:
            raise _Refusal("badRequest", str(e)) from None
        return request.csr

    async def _enroll(self, request, requester):
        known = await self._known_transaction(request)
        if known is not None:
            return known
        csr = self._checked_csr(request)
        try:
            challenge = codec.csr_challenge_password(csr)
        except codec.MessageError:
            challenge = None
        template = None
        if self._policy.is_static_challenge(challenge):
            template = self._policy.default_template
        elif challenge:
            template = await self._store.consume_ca_challenge(challenge_hash(challenge))
        if template is None:
            raise _Refusal("badRequest", WRONG_CHALLENGE)
        if template not in self._templates:
            raise _Refusal("badRequest", "certificate template %s no longer exists" % (template,))
        subject = csr.subject.rfc4514_string()
        row = self._request_row(request, "pending", template, requester)
        if not self._policy.auto_approves(subject, requester):
            try:
                await self._store.add_pending_request(row)
            except DuplicateError:
                raise _Refusal("badRequest", "transaction ID is already in use") from None
            return "PENDING", {"outcome": "pending"}
        certificate = await self.issue(csr, template, row)
        return self._success(certificate, "issued")

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
        row = self._request_row(request, "pending", template, requester)
        certificate = await self.issue(csr, template, row, renewal_of=record.serial)
        return self._success(certificate, "issued")

    def _request_row(self, request, status, template, requester) -> CaRequest:
        now = self._clock.seconds()
        return CaRequest(
            transaction_id=request.header.transaction_id, status=status,
            subject=request.csr.subject.rfc4514_string(),
            csr=request.csr.public_bytes(serialization.Encoding.DER),
            signer_certificate=request.header.signer_certificate.public_bytes(serialization.Encoding.DER),
            requester=requester, template=template, detail=None, issued_serial=None,
            created_at=now, updated_at=now, sender_nonce=request.header.sender_nonce.hex(),
        )

    async def _known_transaction(self, request):
        """
        The answer for a PKCSReq/RenewalReq the CA has seen before, or None for a new one.

        micromdm scepclient polls by resending its request, so a pending one
        hears PENDING again and an approved one gets its certificate. A
        message that was already answered with a certificate (a replay) and
        a rejected CSR resent are refused; another CSR under an open
        transaction ID is too. A finished transaction ID may start anew:
        clients derive it from the key, which a renewal may keep.
        """
        existing = await self._store.get_ca_request(request.header.transaction_id)
        if existing is not None:
            same_csr = request.csr is not None and request.csr.public_bytes(serialization.Encoding.DER) == existing.csr
            if existing.status in ("pending", "approved"):
                if not same_csr:
                    raise _Refusal("badRequest", "transaction ID is already in use")
                if existing.status == "approved":
                    return await self._deliver(existing)
                return "PENDING", {"outcome": "still_pending"}
            if existing.status == "rejected" and same_csr:
                return self._poll_answer(existing)
        if await self._store.nonce_answered(request.header.sender_nonce.hex()):
            raise _Refusal("badRequest", "this message was answered already")
        return None

    def _poll_answer(self, existing: CaRequest):
        if existing.status == "pending":
            return "PENDING", {"outcome": "still_pending"}
        if existing.status == "rejected":
            raise _Refusal("badRequest", existing.detail or "request rejected by the CA's administrator", "rejected")
        return None

    async def _deliver(self, existing: CaRequest):
        record = await self._store.get_issued_certificate(existing.issued_serial)
        if record is None:
            raise _Refusal("badCertId", "certificate not found")
        await self._store.ca_request_delivered(existing.transaction_id)
        return self._success(x509.load_der_x509_certificate(record.der), "delivered")

    # -- CertPoll / GetCert / GetCRL ---------------------------------------------------

    async def _poll(self, request, requester):
        existing = await self._store.get_ca_request(request.header.transaction_id)
        if existing is None:
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
        if record is None:
            raise _Refusal("badCertId", "no such certificate")
        return self._success(x509.load_der_x509_certificate(record.der))

    async def _get_crl(self, request, requester):
        der = await self.crl.der()
        return "SUCCESS", {"reply": {"crl": der}}

    # -- issuing -------------------------------------------------------------------------

    async def issue(self, csr, template: str, request: CaRequest, renewal_of=None,
                    approve: bool = False) -> x509.Certificate:
        """
        Sign ``csr`` under ``template``, record it with its transaction, and tell the profile engine.

        The transaction ``request`` is recorded as issued in the same store
        transaction; with ``approve`` the pending transaction is approved
        instead (the device fetches the certificate with CertPoll).
        """
        now = self._clock.seconds()
        certificate = await self._thread(
            build_certificate, csr, self.material.key, self.material.certificate,
            self._templates[template], self.crl_url, now,
        )
        record = IssuedCertificate(
            serial=serial_hex(certificate.serial_number), subject=certificate.subject.rfc4514_string(),
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
            status="valid", revoked_at=None, revocation_reason=None, requester=request.requester,
            transaction_id=request.transaction_id, template=template, renewal_of=renewal_of,
            der=certificate.public_bytes(serialization.Encoding.DER), created_at=now,
            sender_nonce=request.sender_nonce,
        )
        if approve:
            await self._store.approve_ca_request(request.transaction_id, record)
        else:
            try:
                await self._store.record_issued(
                    attrs.evolve(request, status="issued", issued_serial=record.serial, updated_at=now), record
                )
            except DuplicateError:
                raise _Refusal("badRequest", "transaction ID is already in use") from None
        await self._feed_profile_engine(certificate, record)
        return certificate

    async def _feed_profile_engine(self, certificate, record: IssuedCertificate) -> None:
        """A renewal ID in CN/OU ties the certificate to a host profile: record it there for renewal."""
        for renewal_id in renewal_ids(certificate):
            try:
                host = await self._store.host_for_renewal_id(renewal_id)
                if host is not None:
                    result = await self._store.record_certificate(
                        host, renewal_id, record.serial, record.not_before, record.not_after
                    )
                    self.log.info("ca certificate {serial} {result} for host {host} ({renewal_id})",
                                  serial=record.serial, result=result, host=host, renewal_id=renewal_id)
            except Exception:
                self.log.failure("ca could not record certificate {serial} for the profile engine",
                                 serial=record.serial)
