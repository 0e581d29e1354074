"""``scepproxyctl builtin-ca ...``: the built-in CA through ``/api/v1/ca``.

Same shape as ``commands``: each returns ``(answer, text)``. ``challenge``
prints the minted challenge alone on stdout, so ``CH=$(scepproxyctl
builtin-ca challenge)`` works; it is the only command that ever prints one.
"""

from __future__ import annotations

from scepproxyd.cli.client import api_path, list_all
from scepproxyd.cli.render import fields, table

REQUEST_HEADERS = ("TRANSACTION", "STATUS", "SUBJECT", "REQUESTER", "TEMPLATE", "SERIAL", "CREATED")
CERTIFICATE_HEADERS = ("SERIAL", "STATUS", "SUBJECT", "NOT_AFTER", "TEMPLATE", "REQUESTER")


def _listing(rows, empty, headers, row) -> str:
    return table(headers, [row(item) for item in rows]) if rows else empty


def show(api, args, stdin):
    _, ca = api.request("GET", api_path("ca"))
    counts = lambda d: " ".join("%s=%s" % (k, d[k]) for k in sorted(d))  # noqa: E731
    return ca, fields([
        ("name", ca["name"]), ("subject", ca["subject"]), ("not_after", ca["not_after"]),
        ("fingerprint", ca["fingerprint"]), ("ra", (ca.get("ra") or {}).get("subject")),
        ("crl_url", ca["crl_url"]), ("requests", counts(ca["requests"])),
        ("certificates", counts(ca["certificates"])), ("since start", counts(ca["enrollments"])),
    ]) + "\n\n" + ca["certificate"].rstrip("\n")


def requests(api, args, stdin):
    answer = list_all(api, "requests", "ca", "requests", query={"status": args.status})
    return answer, _listing(
        answer["requests"], "no requests", REQUEST_HEADERS,
        lambda r: (r["transaction_id"], r["status"], r["subject"], r["requester"], r["template"],
                   r["issued_serial"], r["created_at"]),
    )


def approve(api, args, stdin):
    _, r = api.request("POST", api_path("ca", "requests", args.transaction_id, "approve"))
    return r, "approved request %s: certificate %s issued; the device gets it at its next poll" % (
        r["transaction_id"], r["issued_serial"])


def reject(api, args, stdin):
    body = {"reason": args.reason} if args.reason else {}
    _, r = api.request("POST", api_path("ca", "requests", args.transaction_id, "reject"), body)
    return r, "rejected request %s" % (r["transaction_id"],)


def certificates(api, args, stdin):
    answer = list_all(api, "certificates", "ca", "certificates", query={"status": args.status})
    return answer, _listing(
        answer["certificates"], "no certificates", CERTIFICATE_HEADERS,
        lambda c: (c["serial"], c["status"], c["subject"], c["not_after"], c["template"], c["requester"]),
    )


def revoke(api, args, stdin):
    body = {"reason": args.reason} if args.reason else {}
    _, c = api.request("POST", api_path("ca", "certificates", args.serial, "revoke"), body)
    return c, "revoked certificate %s (%s); the CRL lists it now" % (c["serial"], c["revocation_reason"])


def challenge(api, args, stdin):
    body = {}
    if args.template:
        body["template"] = args.template
    if args.ttl:
        body["ttl"] = args.ttl
    _, answer = api.request("POST", api_path("ca", "challenges"), body)
    return answer, answer["challenge"]


def add_commands(command, group, arg) -> None:
    """Register the group on scepproxyctl's parser (called from ``build_parser``)."""
    ca = group("builtin-ca", "the built-in SCEP CA: requests, certificates, one-time challenges")
    command(ca, "show", show, "the CA certificate, fingerprint and counts")
    command(ca, "requests", requests, "enrollment requests",
            arg("--status", help="pending, approved, rejected or issued"))
    command(ca, "approve", approve, "issue a pending request's certificate", arg("transaction_id", metavar="TXID"))
    command(ca, "reject", reject, "refuse a pending request", arg("transaction_id", metavar="TXID"),
            arg("--reason", help="told to the device as failInfoText"))
    command(ca, "certificates", certificates, "issued certificates", arg("--status", help="valid or revoked"))
    command(ca, "revoke", revoke, "revoke a certificate; the CRL lists it at once", arg("serial", metavar="SERIAL"),
            arg("--reason", help="unspecified (default), key_compromise, ca_compromise, affiliation_changed, "
                                 "superseded, cessation_of_operation or privilege_withdrawn"))
    command(ca, "challenge", challenge, "mint a one-time challenge; prints it alone on stdout",
            arg("--template", help="certificate template (default: [ca] default_template)"),
            arg("--ttl", help="lifetime, seconds or e.g. 1h (default: [challenges] ttl)"))
