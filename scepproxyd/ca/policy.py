"""Who gets a certificate from the built-in CA: challenges, auto-approval, renewal.

Pure decisions on plain values, so every rule is tested without a network
or a database; the authority applies them in order and turns a refusal into
a CertRep FAILURE whose failInfoText is the reason given here.
"""

from __future__ import annotations

import hmac
import ipaddress
import re

import attrs

# One-time CA challenges are kept hashed as the store keeps proxy challenges.
from scepproxyd.store.models import challenge_hash  # noqa: F401 (used by the authority and the manager)

DAY = 86400.0
WRONG_CHALLENGE = "challenge password missing or wrong"


@attrs.frozen
class Policy:
    """The [ca] rules, as plain values."""

    static_challenge: str = attrs.field(repr=False)
    #: Whether /scep accepts the static challenge at all ([ca] static_challenge).
    static_enabled: bool
    auto_approve: bool
    auto_approve_subject: str
    auto_approve_networks: tuple
    allow_renew_days: int
    default_template: str

    @classmethod
    def from_settings(cls, settings, static_challenge: str) -> "Policy":
        return cls(
            static_challenge=static_challenge,
            static_enabled=settings.static_challenge,
            auto_approve=settings.auto_approve,
            auto_approve_subject=settings.auto_approve_subject,
            auto_approve_networks=tuple(settings.auto_approve_networks),
            allow_renew_days=settings.allow_renew_days,
            default_template=settings.default_template,
        )

    def is_static_challenge(self, presented: str | None) -> bool:
        """
        Whether ``presented`` is the static challenge and the static challenge is on.

        Constant-time comparison, so timing reveals nothing about it. Off
        (the shipped default), it is refused like any wrong challenge.
        """
        if presented is None or not self.static_enabled:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.static_challenge.encode("utf-8"))

    def auto_approves(self, subject: str, requester: str | None, *, grant: str) -> bool:
        """
        Whether a request with a valid challenge is issued at once rather than held PENDING.

        ``grant`` says what authorised it: ``"host_profile"`` (a one-time
        challenge rendered into one host's profile, whose CSR has already
        passed the binding to that profile), ``"minted"`` (a one-time
        challenge an admin handed out) or ``"static"`` (the reusable
        static challenge, for network equipment). ``subject`` is the RFC
        4514 string, matched in full; ``requester`` the client's IP address,
        or ``None`` through the proxy. Only a static-challenge request is
        judged by its network, and one through the proxy has none to judge:
        a reusable secret is worth holding for an admin.
        """
        if not self.auto_approve:
            return False
        if grant == "host_profile":
            return True
        if re.fullmatch(self.auto_approve_subject, subject) is None:
            return False
        if grant == "minted":
            return True
        return requester is not None and in_networks(requester, self.auto_approve_networks)

    def renewal_refusal(self, record, now: float) -> str | None:
        """
        Why a RenewalReq signed by the certificate ``record`` (an IssuedCertificate or None) is refused.

        ``None`` when allowed: the certificate is one this CA issued, is not
        revoked, is still valid, and (unless ``allow_renew_days`` is 0) has
        at most that many days left, as scepserver's ``-allowrenew``.
        """
        if record is None:
            return "renewal must be signed by a certificate this CA issued"
        if record.status != "valid":
            return "the certificate being renewed is revoked"
        if not record.not_before <= now <= record.not_after:
            return "the certificate being renewed is not valid now"
        if self.allow_renew_days and record.not_after - now > self.allow_renew_days * DAY:
            return "renewal is allowed only in the last %d days of the certificate's validity" % (
                self.allow_renew_days,
            )
        return None


def in_networks(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)
