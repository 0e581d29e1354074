"""One function per command: build the request, send it, say what happened.

Each returns ``(answer, text)``: ``answer`` is the API's JSON, printed as-is
under ``--json`` (``None`` for a 204, which prints nothing), ``text`` is the
human rendering.
"""

from __future__ import annotations

from pathlib import Path

from scepproxyd.cli.challenge import read_challenge
from scepproxyd.cli.client import CliError, InvocationError, api_path, list_all
from scepproxyd.cli.render import fields, table, text

#: CERT_SERIAL and CERT_NOT_AFTER: the certificate recorded on the host profile, which renewal is timed by.
HOST_PROFILE_HEADERS = (
    "HOST", "PROFILE", "STATUS", "LIFECYCLE", "RETRIES", "CERT_SERIAL", "CERT_NOT_AFTER", "UPDATED", "DETAIL",
)


def _read_input(path: str, stdin) -> bytes:
    """A file's bytes, or stdin's for ``-``."""
    if path == "-":
        return stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CliError("cannot read %s: %s" % (path, e.strerror or e)) from None


def _listing(rows: list, empty: str, headers, row) -> str:
    if not rows:
        return empty
    return table(headers, [row(item) for item in rows])


def _host_profile_row(hp: dict) -> tuple:
    return (hp["host_uuid"], hp["profile_uuid"], hp["status"], hp.get("lifecycle"), hp["retries"], hp.get("cert_serial"),
            hp.get("cert_not_after"), hp["updated_at"], hp["detail"])


# -- CAs -----------------------------------------------------------------------


def _yes_no(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _read_bundle(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise InvocationError("cannot read trust bundle %s: %s" % (path, e.strerror))


def ca_add(api, args, stdin):
    challenge = read_challenge(args.challenge_file, stdin, "Static challenge for CA %s: " % (args.name,))
    body = {"name": args.name, "url": args.url, "challenge": challenge}
    if args.trust_bundle:
        body["trust_bundle"] = _read_bundle(args.trust_bundle)
    if args.insecure_skip_verify:
        body["tls_verify"] = False
    _mode_fields(args, body)
    _, ca = api.request("POST", api_path("cas"), body)
    return ca, "added CA %s at %s%s" % (ca["name"], ca["url"], _ra_note(ca))


def _mode_fields(args, body: dict) -> None:
    """``--mode`` and ``--ra-certificate`` as the API's ``mode`` and ``ra_certificate`` (the API checks them)."""
    if args.mode is not None:
        body["mode"] = args.mode
    if args.ra_certificate is not None:
        body["ra_certificate"] = args.ra_certificate


def _ra_note(ca: dict) -> str:
    """`` in ra mode (RA certificate enrolled, issued by ...)``: what the admin needs to know right after a save."""
    ra = ca.get("ra")
    if ca.get("mode") != "ra" or not ra:
        return ""
    return " in ra mode (RA certificate %s, issued by %s, expires %s)" % (ra["certificate"], ra["issuer"],
                                                                         ra["not_after"])


def ca_list(api, args, stdin):
    answer = list_all(api, "cas", "cas")
    return answer, _listing(
        answer["cas"], "no CAs", ("NAME", "URL", "MODE", "RA_CERTIFICATE", "RA_NOT_AFTER", "PROFILES", "UPDATED"),
        lambda ca: (ca["name"], ca["url"], ca.get("mode"), (ca.get("ra") or {}).get("certificate"),
                    (ca.get("ra") or {}).get("not_after"), len(ca.get("profiles") or []), ca["updated_at"]),
    )


#: ``ca show``'s lines for the RA identity, from the API's ``ra`` object.
RA_FIELDS = (("ra_certificate", "certificate"), ("ra_subject", "subject"), ("ra_issuer", "issuer"),
             ("ra_serial", "serial"), ("ra_not_after", "not_after"), ("ra_sha256", "sha256"))


def ca_show(api, args, stdin):
    _, ca = api.request("GET", api_path("cas", args.name))
    ra = ca.get("ra")
    # A CA back in passthrough keeps its RA identity for a later switch, so it is shown whatever the mode.
    identity = [(label, ra.get(key)) for label, key in RA_FIELDS] if ra else [("ra_certificate", None)]
    return ca, fields([
        ("name", ca["name"]), ("url", ca["url"]), ("mode", ca.get("mode")), ("profiles", ca.get("profiles")),
        ("tls_verify", _yes_no(ca.get("tls_verify"))), ("trust_bundle", _yes_no(ca.get("trust_bundle"))),
        *identity, ("created_at", ca["created_at"]), ("updated_at", ca["updated_at"]),
    ])


def ca_edit(api, args, stdin):
    body = {}
    if args.new_name is not None:
        body["name"] = args.new_name
    if args.url is not None:
        body["url"] = args.url
    if args.trust_bundle:
        body["trust_bundle"] = _read_bundle(args.trust_bundle)
    if args.no_trust_bundle:
        body["trust_bundle"] = ""
    if args.tls_verify is not None:
        body["tls_verify"] = args.tls_verify == "yes"
    _mode_fields(args, body)
    if args.challenge_file is not None or args.challenge_stdin or args.url is not None:
        # The API wants the challenge again with a new URL: it belongs to the CA at that URL.
        body["challenge"] = read_challenge(
            None if args.challenge_stdin else args.challenge_file, stdin,
            "Static challenge for CA %s: " % (args.new_name or args.name,),
        )
    if not body:
        raise InvocationError(
            "nothing to change; give --name, --url, --challenge-file, --challenge-stdin, --trust-bundle, "
            "--no-trust-bundle, --tls-verify, --mode or --ra-certificate"
        )
    _, ca = api.request("PATCH", api_path("cas", args.name), body)
    return ca, "changed CA %s (%s)%s" % (ca["name"], ", ".join(sorted(body)), _ra_note(ca) if _new_ra(body) else "")


def _new_ra(body: dict) -> bool:
    """Whether an edit may have made a new RA identity (so the answer says which)."""
    return bool({"mode", "ra_certificate", "url"} & set(body))


def ca_delete(api, args, stdin):
    api.request("DELETE", api_path("cas", args.name))
    return None, "deleted CA %s" % (args.name,)


# -- hosts ---------------------------------------------------------------------


def host_add(api, args, stdin):
    status, host = api.request("PUT", api_path("hosts", args.uuid), {"serial": args.serial, "platform": args.platform})
    verb = "created" if status == 201 else "updated"
    return host, "%s host %s (%s, serial %s)" % (verb, host["uuid"], host["platform"], text(host["serial"]))


def host_import(api, args, stdin):
    data = _read_input(args.file, stdin)
    kind = args.format or ("json" if args.file.lower().endswith(".json") else "csv")
    content_type = "application/json" if kind == "json" else "text/csv"
    _, answer = api.request("POST", api_path("hosts", "import"), data, content_type=content_type)
    created, updated = answer["created"], answer["updated"]
    return answer, "imported %d hosts: %d created, %d updated" % (created + updated, created, updated)


#: ``host set`` options, each named as the API field it sets; an empty value clears the field.
HOST_SET_FIELDS = ("serial", "idp_username", "idp_full_name", "idp_groups", "idp_department", "idp_email")
END_USER_SHOWN = HOST_SET_FIELDS[1:]


def host_set(api, args, stdin):
    body = {}
    for name in HOST_SET_FIELDS:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "idp_groups":
            body[name] = [group.strip() for group in value.split(",") if group.strip()] if value else None
        else:
            body[name] = value or None
    if not body:
        raise InvocationError(
            "nothing to change; give --serial, --idp-username, --idp-full-name, --idp-groups, --idp-department "
            "or --idp-email")
    _, host = api.request("PATCH", api_path("hosts", args.uuid), body)
    resent = host.get("resent") or 0
    note = "; %d host profiles sent again" % (resent,) if resent else ""
    return host, "changed host %s (%s)%s" % (host["uuid"], ", ".join(sorted(body)), note)


def _end_user_fields(host: dict) -> list:
    return [(name, ", ".join(host[name]) or None if name == "idp_groups" else host[name])
            for name in END_USER_SHOWN if name in host]


def host_list(api, args, stdin):
    answer = list_all(api, "hosts", "hosts", query={"platform": args.platform})
    return answer, _listing(
        answer["hosts"], "no hosts", ("UUID", "SERIAL", "PLATFORM", "UPDATED"),
        lambda h: (h["uuid"], h["serial"], h["platform"], h["updated_at"]),
    )


def host_show(api, args, stdin):
    _, host = api.request("GET", api_path("hosts", args.uuid))
    out = fields([
        ("uuid", host["uuid"]), ("serial", host["serial"]), ("platform", host["platform"]),
        ("created_at", host["created_at"]), ("updated_at", host["updated_at"]),
    ])
    end_user = _end_user_fields(host)
    if end_user:
        out += "\n\n" + fields(end_user)
    profiles = host.get("profiles") or []
    out += "\n\n" + _listing(profiles, "no profiles assigned", HOST_PROFILE_HEADERS, _host_profile_row)
    return host, out


def host_delete(api, args, stdin):
    api.request("DELETE", api_path("hosts", args.uuid))
    return None, "deleted host %s" % (args.uuid,)


# -- profiles ------------------------------------------------------------------


def _profile_content_type(path: str) -> str:
    name = path.lower()
    if name.endswith(".json"):
        return "application/json"
    if name.endswith((".mobileconfig", ".plist", ".xml")):
        return "application/x-apple-aspen-config"
    return "application/octet-stream"


def profile_upload(api, args, stdin):
    data = _read_input(args.file, stdin)
    path = api_path("profiles", query={"platform": args.platform, "name": args.name})
    _, profile = api.request("POST", path, data, content_type=_profile_content_type(args.file))
    return profile, "uploaded profile %s (%s) for %s, CA %s" % (
        profile["uuid"], text(profile["name"]), profile["platform"], text(profile.get("ca")))


def profile_list(api, args, stdin):
    answer = list_all(api, "profiles", "profiles")
    return answer, _listing(
        answer["profiles"], "no profiles", ("UUID", "NAME", "PLATFORM", "KIND", "CA", "UPDATED"),
        lambda p: (p["uuid"], p["name"], p["platform"], p["kind"], p.get("ca"), p["updated_at"]),
    )


def profile_show(api, args, stdin):
    _, p = api.request("GET", api_path("profiles", args.uuid))
    return p, fields([
        ("uuid", p["uuid"]), ("name", p["name"]), ("identifier", p.get("identifier")),
        ("platform", p["platform"]), ("kind", p["kind"]), ("ca", p.get("ca")),
        ("variables", p.get("variables")), ("hosts", p.get("hosts")),
        ("created_at", p["created_at"]), ("updated_at", p["updated_at"]),
    ])


def profile_delete(api, args, stdin):
    api.request("DELETE", api_path("profiles", args.uuid))
    return None, "deleted profile %s" % (args.uuid,)


def profile_assign(api, args, stdin):
    if bool(args.hosts) == (args.platform is not None):
        raise InvocationError("give either host UUIDs or --platform, not both and not neither")
    body = {"hosts": args.hosts} if args.hosts else {"platform": args.platform}
    _, answer = api.request("POST", api_path("profiles", args.profile, "assign"), body)
    n = answer["assigned"]
    return answer, "assigned profile %s to %d new host%s" % (args.profile, n, "" if n == 1 else "s")


def profile_unassign(api, args, stdin):
    body = {"hosts": args.hosts} if args.hosts else {}
    _, answer = api.request("POST", api_path("profiles", args.profile, "unassign"), body)
    n = answer["unassigned"]
    return answer, "unassigned profile %s from %d host%s" % (args.profile, n, "" if n == 1 else "s")


# -- status and jobs -----------------------------------------------------------


def status(api, args, stdin):
    query = {"host": args.host, "profile": args.profile, "status": args.status, "lifecycle": args.lifecycle}
    answer = list_all(api, "host_profiles", "host-profiles", query=query)
    return answer, _listing(answer["host_profiles"], "no host profiles", HOST_PROFILE_HEADERS, _host_profile_row)


def resend(api, args, stdin):
    _, hp = api.request("POST", api_path("host-profiles", args.host, args.profile, "resend"))
    return hp, "profile %s will be sent again to host %s with a fresh challenge" % (
        hp["profile_uuid"], hp["host_uuid"])


def trigger(api, args, stdin):
    _, answer = api.request("POST", api_path("jobs", args.job))
    result = answer.get("result") or {}
    if isinstance(result, dict):
        counts = " ".join("%s=%s" % (text(key), text(result[key])) for key in sorted(result))
    else:
        counts = text(result)
    return answer, "ran job %s: %s" % (answer.get("job", args.job), counts or "done")


def jobs(api, args, stdin):
    _, answer = api.request("GET", api_path("jobs"))
    return answer, "\n".join(answer["jobs"]) or "no jobs"
