"""RA mode's request flow: open the device's request, judge it, ask upstream as the RA, answer as the RA.

For a CA integration in ``ra`` mode the proxy is the CA's registration
authority (docs/ra-mode.md). A device's PKCSReq is decrypted with the RA
key and its signature verified; its one-time challenge is spent; its CSR
must ask for what the host profile rendered for that host (the built-in
CA's issuance policy, ca.csr_policy). Only then does the CSR, unchanged,
go upstream in a PKCSReq the RA signs and encrypts with the algorithms the
CA offers. The CA's CertRep is opened, the certificate recorded on the host
profile at once, and the device answered with a CertRep the RA signs,
encrypted to the device's signer certificate.

The RA's transaction ID upstream is derived from the host profile and the
device's transaction ID, so a CertPoll (or a resent PKCSReq) reaches the
same upstream transaction only through the same host profile's URL: a
device cannot fetch, or have recorded, a certificate another host asked for.

CPU-heavy work (RSA, parsing) runs in threads through ``run_in_thread``.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from twisted.internet import threads

from scepproxyd.ca import csr_policy
from scepproxyd.ca.issuer import CsrError, check_csr, serial_hex
from scepproxyd.daemon.logs import get_logger
from scepproxyd.keys import KeyFileError
from scepproxyd.profiles import ProfileError
from scepproxyd.scep import codec, ra
from scepproxyd.scep.proxy import TEXT, ProxyAnswer
from scepproxyd.scep.upstream import PKI_MESSAGE_TYPE, UpstreamError

CA_RA_CERT_TYPE = b"application/x-x509-ca-ra-cert"
#: Outcome words of a CertRep the proxy sends the device, by pkiStatus.
_OUTCOMES = {"SUCCESS": "ok", "PENDING": "pending", "FAILURE": "ca_refused"}


class _Refused(Exception):
    """The proxy answers FAILURE itself: an RFC 8894 failInfo name, a reason, an outcome word."""

    def __init__(self, fail_info: str, reason: str, outcome: str):
        super().__init__(reason)
        self.fail_info = fail_info
        self.reason = reason
        self.outcome = outcome


def upstream_transaction_id(host_uuid: str, profile_uuid: str, device_transaction_id: str) -> str:
    """The RA's transactionID upstream: bound to the host profile, stable across the device's polls."""
    seed = "\0".join((host_uuid, profile_uuid, device_transaction_id)).encode("utf-8")
    return hashlib.sha256(seed).hexdigest().upper()


def _public_key_der(certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class RaFlow:
    """
    Answers GetCACaps, GetCACert and PKIOperation for host profiles whose CA is in RA mode.

    ``spend`` is the proxy's own one-time challenge step (ScepProxy.spend),
    so both modes refuse, count and log a bad challenge the same way.
    """

    log = get_logger(__name__)

    def __init__(self, store, upstream, cipher, clock, key_policy=None, expected_for=None,
                 run_in_thread=threads.deferToThread, stale_renewal_after: float = 120.0, metrics=None):
        from scepproxyd.ca.authority import expected_for as builtin_expected_for

        self._store = store
        self._upstream = upstream
        self._cipher = cipher
        self._clock = clock
        self._key_policy = key_policy if key_policy is not None else csr_policy.KeyPolicy()
        self._expected_for = expected_for or builtin_expected_for
        self._thread = run_in_thread
        self._stale_renewal_after = stale_renewal_after
        self._metrics = metrics
        self._identities: dict[str, tuple[bytes, ra.RaIdentity]] = {}
        self._views: dict[str, ra.UpstreamView] = {}

    # -- what the device sees before it enrolls ------------------------------------

    async def get_ca_caps(self, target) -> ProxyAnswer:
        return ProxyAnswer(200, b"text/plain", ra.RA_CAPS, "ok")

    async def get_ca_cert(self, target, message: str | None) -> ProxyAnswer:
        identity = await self._identity(target.ca_name)
        view = await self._view(target.ca_url, message)
        return ProxyAnswer(200, CA_RA_CERT_TYPE, ra.device_ca_certificates(identity, view), "ok", upstream_status=200)

    async def _identity(self, ca_name: str) -> ra.RaIdentity:
        ca = await self._store.get_ca(ca_name)
        if ca is None or ca.ra_key_ciphertext is None or ca.ra_certificate is None:
            raise UpstreamError("the CA integration has no RA identity; save it again in ra mode", answered=False)
        cached = self._identities.get(ca_name)
        if cached is not None and cached[0] == ca.ra_key_ciphertext + ca.ra_certificate:
            return cached[1]
        try:
            identity = await self._thread(ra.load_identity, self._cipher, ca.ra_key_ciphertext, ca.ra_certificate,
                                          ca.ra_enrolled)
        except (KeyFileError, ValueError) as e:
            self.log.error("RA identity of CA {ca} is unusable: {reason}", ca=ca_name, reason=str(e))
            raise UpstreamError("the CA integration's RA identity is unusable", answered=False) from None
        self._identities[ca_name] = (ca.ra_key_ciphertext + ca.ra_certificate, identity)
        return identity

    async def _view(self, ca_url: str, message: str | None = None) -> ra.UpstreamView:
        """The upstream's caps and certificates (cached by the upstream client; parsed once per answer)."""
        caps = await self._upstream.get_ca_caps(ca_url)
        certs = await self._upstream.get_ca_cert(ca_url, message)
        if certs.status != 200:
            raise UpstreamError("upstream CA answered GetCACert with HTTP %d" % (certs.status,),
                                answered=True, status=certs.status)
        caps_body = caps.body if caps.status == 200 else None
        source = hashlib.sha256((caps_body or b"") + b"\0" + certs.body).digest()
        key = "%s\0%s" % (ca_url, message or "")
        cached = self._views.get(key)
        if cached is not None and cached.source == source:
            return cached
        try:
            view = await self._thread(ra.read_upstream, caps_body, certs.body)
        except ra.RaIdentityError as e:
            raise UpstreamError("upstream CA is unusable for RA mode: %s" % (e,), answered=True) from None
        if len(self._views) > 64:
            self._views.clear()
        self._views[key] = view
        return view

    # -- PKIOperation ---------------------------------------------------------------

    async def pki_operation(self, ident, target, message: bytes, spend) -> ProxyAnswer:
        """
        One device PKIOperation through the RA. ``spend(ident)`` spends the URL's challenge:
        it returns ``(ConsumedChallenge, None)``, or ``(None, refusal)`` to hand back as it is.
        """
        identity = await self._identity(target.ca_name)
        try:
            request = await self._thread(codec.read_request, message, identity.key, identity.certificate)
        except codec.MessageError as e:
            return await self._unreadable(message, identity, str(e))
        kind = request.header.message_type
        try:
            if kind == "PKCSReq" and target.cert_serial is not None and self._renewal_signer(
                    target, request, await self._view(target.ca_url)):
                # certmonger (and clients of the SCEP drafts) renew with a PKCSReq signed by the
                # certificate they renew: the same credential as a RenewalReq, judged the same way.
                return await self._renew(ident, target, request, identity)
            if kind == "PKCSReq":
                return await self._enroll(ident, target, request, identity, spend)
            if kind == "RenewalReq":
                return await self._renew(ident, target, request, identity)
            if kind == "CertPoll":
                return await self._poll(ident, target, request, identity, spend)
            raise _Refused("badRequest", "%s is not supported through the proxy" % (kind,), "unsupported")
        except _Refused as refused:
            return await self._answer(request, identity, "FAILURE", refused.outcome, fail_info=refused.fail_info,
                                      fail_info_text=refused.reason)

    async def _unreadable(self, message: bytes, identity, reason: str) -> ProxyAnswer:
        """A request the RA cannot open: FAILURE badMessageCheck when its sender can be answered."""
        self.log.debug("RA could not read a request: {reason}", reason=reason)
        try:
            header = await self._thread(codec.read_header, message)
        except codec.MessageError:
            return ProxyAnswer(400, TEXT, b"not a SCEP message\n", "bad_request")
        body = await self._thread(
            codec.build_cert_rep, header=header, status="FAILURE", signer_key=identity.key,
            signer_certificate=identity.certificate, fail_info="badMessageCheck",
        )
        return ProxyAnswer(200, PKI_MESSAGE_TYPE, body, "bad_message")

    async def _judge(self, ident, target, csr, view) -> None:
        """The host profile's issuance policy (ca.csr_policy); _Refused when the CSR does not pass."""
        try:
            check_csr(csr, signature_verified=True)
        except CsrError as e:
            raise _Refused("badRequest", str(e), "policy_refused") from None
        facts = await self._store.binding_facts(ident.host_uuid, ident.profile_uuid)
        if facts is None:
            raise _Refused("badRequest", "the host profile no longer exists", "policy_refused")
        try:
            expected = await self._thread(self._expected_for, facts)
        except ProfileError as e:
            raise _Refused("badRequest", "its host profile cannot be checked: %s" % (e,), "policy_refused") from None
        refusal = await self._thread(
            csr_policy.refusal, csr, key_policy=self._key_policy, san_policy=None,
            ca_subject=view.ca_certificates[0].subject, expected=expected,
        )
        if refusal is not None:
            raise _Refused(refusal.fail_info, refusal.reason, "policy_refused")

    async def _enroll(self, ident, target, request, identity, spend) -> ProxyAnswer:
        if request.csr is None:
            raise _Refused("badRequest", "request carries no CSR", "bad_request")
        # Learn how to reach the CA before spending the challenge: if it is down,
        # the device keeps a usable challenge without any put-back.
        view = await self._view(target.ca_url)
        consumed, refusal = await self._spend_while_pending(ident, target, spend)
        if refusal is not None:
            return refusal
        try:
            await self._judge(ident, target, request.csr, view)
        except _Refused as refused:
            self.log.warn(
                "RA refused {transaction_id} for host {host} profile {profile} ca {ca}: {reason}",
                transaction_id=request.header.transaction_id, host=ident.host_uuid, profile=ident.profile_uuid,
                ca=ident.ca_name, reason=refused.reason,
            )
            await self._store.enrollment_refused(consumed, "RA refused the request: %s" % (refused.reason,))
            raise
        return await self._forward(ident, target, request, identity, view, "PKCSReq", consumed=consumed)

    async def _spend_while_pending(self, ident, target, spend) -> tuple:
        """The URL's challenge spent (``spend``'s answer); _Refused when the host profile awaits no enrollment."""
        consumed, refusal = await spend(ident)
        if refusal is None and target.status != "pending":
            await self._store.challenge_settled(consumed)
            raise _Refused("badRequest", "host profile is not awaiting enrollment", "not_pending")
        return consumed, refusal

    async def _poll(self, ident, target, request, identity, spend) -> ProxyAnswer:
        """CertPoll after PENDING: relayed as the RA's own, under the same upstream transaction."""
        view = await self._view(target.ca_url)
        renewing = self._renewal_signer(target, request, view)
        consumed = None
        if not renewing:
            consumed, refusal = await self._spend_while_pending(ident, target, spend)
            if refusal is not None:
                return refusal
        return await self._forward(ident, target, request, identity, view, "CertPoll", consumed=consumed,
                                   renews=target.cert_serial if renewing else None)

    def _renewal_signer(self, target, request, view) -> bool:
        """Whether the request is signed by the certificate recorded for this host profile, issued by this CA."""
        signer = request.header.signer_certificate
        if target.cert_serial is None or serial_hex(signer.serial_number) != target.cert_serial.lower():
            return False
        now = self._clock.seconds()
        if not signer.not_valid_before_utc.timestamp() <= now <= signer.not_valid_after_utc.timestamp():
            return False
        for authority in view.ca_certificates:
            try:
                signer.verify_directly_issued_by(authority)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False

    async def _renew(self, ident, target, request, identity) -> ProxyAnswer:
        """
        RenewalReq: signed by the certificate recorded for this host profile, from this CA, still valid.

        The URL's challenge is not needed (it was spent on the first
        enrollment); the recorded certificate is the credential, and it
        renews once: the host profile is claimed for the upstream call,
        and the new certificate replaces it on success.
        """
        if request.csr is None:
            raise _Refused("badRequest", "request carries no CSR", "bad_request")
        view = await self._view(target.ca_url)
        if not self._renewal_signer(target, request, view):
            raise _Refused("badRequest", "a renewal must be signed by the certificate recorded for this host "
                           "profile, issued by this CA and still valid", "renewal_refused")
        await self._judge(ident, target, request.csr, view)
        serial = target.cert_serial.lower()
        if not await self._store.claim_ra_renewal(ident.host_uuid, ident.profile_uuid, serial,
                                                  self._stale_renewal_after):
            raise _Refused("badRequest", "this certificate was renewed already, or is being renewed",
                           "renewal_refused")
        return await self._forward(ident, target, request, identity, view, "PKCSReq", renews=serial)

    async def _forward(self, ident, target, request, identity, view, kind, consumed=None, renews=None) -> ProxyAnswer:
        """Ask the upstream CA as the RA; record a certificate; answer the device as the RA."""
        transaction_id = upstream_transaction_id(ident.host_uuid, ident.profile_uuid, request.header.transaction_id)
        built = await self._thread(
            codec.build_request, message_type=kind, signer_key=identity.key,
            signer_certificate=identity.certificate, recipient_certificate=view.recipient, csr=request.csr,
            transaction_id=transaction_id, issuer_and_subject=request.issuer_and_subject,
            content_encryption=view.content_encryption, digest_algorithm=view.digest_algorithm,
        )
        try:
            answer = await self._upstream.pki_operation(target.ca_url, built[0], view.use_post)
        except UpstreamError as e:
            await self._settle_failed(ident, consumed, renews, put_back=not e.answered)
            raise
        try:
            if answer.status != 200:
                raise UpstreamError("upstream CA failed (HTTP %d)" % (answer.status,), answered=True,
                                    status=answer.status)
            try:
                status, fail_info, certificates = await self._thread(ra.read_answer, answer.body, identity, view)
            except codec.MessageError as e:
                self.log.warn("RA could not read the answer of CA {ca}: {reason}", ca=ident.ca_name, reason=str(e))
                raise UpstreamError("upstream CA's answer is not a SCEP message the RA can read", answered=True,
                                    status=200) from None
        except UpstreamError:
            await self._settle_failed(ident, consumed, renews, put_back=False)
            raise
        if status == "PENDING":
            await self._settle_failed(ident, consumed, renews, put_back=True)
            return await self._answer(request, identity, "PENDING", "pending", upstream_status=200)
        if status == "FAILURE":
            reason = "upstream CA refused the request (%s)" % (fail_info,)
            if consumed is not None:
                await self._store.enrollment_refused(consumed, reason)
            elif renews is not None:
                await self._store.release_ra_renewal(ident.host_uuid, ident.profile_uuid, renews)
            return await self._answer(request, identity, "FAILURE", "ca_refused", upstream_status=200,
                                      fail_info=fail_info if fail_info in codec.FAIL_INFO_NAMES.values()
                                      else "badRequest", fail_info_text=reason)
        certificate = ra.issued_to(certificates, request.csr) if request.csr is not None else None
        if certificate is None:
            certificate = next((c for c in certificates if isinstance(c, x509.Certificate)), None)
        if certificate is None:
            await self._settle_failed(ident, consumed, renews, put_back=False)
            raise UpstreamError("upstream CA's SUCCESS holds no certificate", answered=True, status=200)
        serial = serial_hex(certificate.serial_number)
        recorded = await self._store.ra_certificate_issued(
            ident.host_uuid, ident.profile_uuid, serial, certificate.not_valid_before_utc.timestamp(),
            certificate.not_valid_after_utc.timestamp(), consumed=consumed, renewed_serial=renews,
        )
        if recorded:
            self.log.info("RA recorded certificate {serial} from CA {ca} for host {host} profile {profile}",
                          serial=serial, ca=ident.ca_name, host=ident.host_uuid, profile=ident.profile_uuid)
        else:
            self.log.warn("RA did not record certificate {serial} from CA {ca} for host {host} profile {profile}:"
                          " the host profile is gone or holds a newer certificate",
                          serial=serial, ca=ident.ca_name, host=ident.host_uuid, profile=ident.profile_uuid)
        return await self._answer(request, identity, "SUCCESS", "ok", upstream_status=200,
                                  certificates=[certificate])

    async def _settle_failed(self, ident, consumed, renews, put_back: bool) -> None:
        """No certificate this time: put the challenge back (the CA never answered, or said PENDING) or spend it."""
        if consumed is not None:
            if put_back:
                await self._store.restore_challenge(consumed)
                if self._metrics is not None:
                    self._metrics.challenge("restored")
            else:
                await self._store.challenge_settled(consumed)
        if renews is not None:
            await self._store.release_ra_renewal(ident.host_uuid, ident.profile_uuid, renews)

    async def _answer(self, request, identity, status, outcome, upstream_status=None, **fields) -> ProxyAnswer:
        body = await self._thread(
            codec.build_cert_rep, header=request.header, status=status, signer_key=identity.key,
            signer_certificate=identity.certificate,
            content_encryption=codec.choose_content_encryption(request.content_encryption), **fields,
        )
        return ProxyAnswer(200, PKI_MESSAGE_TYPE, body, outcome, upstream_status=upstream_status)
