"""Host end users, custom secrets and the profiles that render them, through the admin and agent APIs in process.

What docs/admin-api.md promises: the end-user fields on PUT/PATCH/GET host and in imports, the secrets
routes (names and dates only, never a value), a profile naming a missing secret refused at upload, a host
without a value failing with the variable named, and a changed value sending the profile again.
"""

import plistlib

import pytest
import pytest_twisted

from support.web import APPLE_PROFILE

USERNAME = "$FLEET_VAR_HOST_END_USER_IDP_USERNAME"
HOST = "MAC-1"


def wifi_profile(ca: str, identifier: str = "Wi-Fi.user") -> bytes:
    """The Fleet sample for ``ca`` with the username in the SCEP subject and a Wi-Fi payload using a secret."""
    profile = plistlib.loads(APPLE_PROFILE.read_bytes().replace(b"CA_NAME", ca.encode()))
    profile["PayloadIdentifier"] = identifier
    profile["PayloadContent"][0]["PayloadContent"]["Subject"] = [
        [["CN", USERNAME]], [["OU", "$FLEET_VAR_SCEP_RENEWAL_ID"]]]
    profile["PayloadContent"].append({
        "PayloadType": "com.apple.wifi.managed", "PayloadIdentifier": "wifi", "PayloadUUID": "W", "PayloadVersion": 1,
        "SSID_STR": "corp", "EAPClientConfiguration": {"UserName": USERNAME, "UserPassword": "$FLEET_SECRET_RADIUS"},
    })
    return plistlib.dumps(profile)


async def refused(web, method, path, body, status, message, field):
    answer = await web.admin(method, path, body)
    assert (answer.status, answer.json()) == (status, {"error": message, "field": field})


# -- host end users ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_put_patch_and_get_host_end_user(web):
    host = await web.ok(web.admin("PUT", "/api/v1/hosts/" + HOST, {
        "serial": "S1", "platform": "macos", "idp_username": "alice@corp.example", "idp_groups": ["wifi", "staff"]}))
    assert {k: host[k] for k in ("idp_username", "idp_groups", "idp_full_name", "idp_department", "idp_email")} == {
        "idp_username": "alice@corp.example", "idp_groups": ["wifi", "staff"], "idp_full_name": None,
        "idp_department": None, "idp_email": None}
    await web.ok(web.admin("PATCH", "/api/v1/hosts/" + HOST, {"idp_full_name": "Alice Example", "idp_groups": None}))
    shown = await web.ok(web.admin("GET", "/api/v1/hosts/" + HOST))
    assert (shown["serial"], shown["idp_username"], shown["idp_full_name"], shown["idp_groups"]) == (
        "S1", "alice@corp.example", "Alice Example", [])
    # PUT without the end-user fields leaves them alone.
    await web.ok(web.admin("PUT", "/api/v1/hosts/" + HOST, {"serial": "S2", "platform": "macos"}))
    assert (await web.ok(web.admin("GET", "/api/v1/hosts/" + HOST)))["idp_username"] == "alice@corp.example"


@pytest.mark.parametrize("body, message, field", [
    ({"idp_username": "a\nb"}, "idp_username must be printable text (no control or line-break characters)",
     "idp_username"),
    ({"idp_username": ""}, "idp_username must be 1-255 characters (null clears it)", "idp_username"),
    ({"idp_full_name": "x" * 256}, "idp_full_name must be 1-255 characters (null clears it)", "idp_full_name"),
    ({"idp_department": " R&D"}, "idp_department must not start or end with a space", "idp_department"),
    ({"idp_email": "alice"}, "idp_email must be an address such as user@example.com", "idp_email"),
    ({"idp_groups": "wifi"}, "idp_groups must be a list of group names (strings)", "idp_groups"),
    ({"idp_groups": ["a,b"]}, "idp_groups: group 'a,b' has a comma; $FLEET_VAR_HOST_END_USER_IDP_GROUPS renders the"
     " groups comma-separated, so a name cannot contain one", "idp_groups"),
    ({"idp_groups": ["a", "a"]}, "idp_groups names a group twice", "idp_groups"),
    ({"idp_groups": ["g%d" % i for i in range(101)]}, "idp_groups must have at most 100 groups", "idp_groups"),
    ({"idp_username": 7}, "idp_username must be a string or null", "idp_username"),
    ({"platform": "ios"}, "unknown field platform; a host's platform is changed with PUT", "platform"),
])
@pytest_twisted.ensureDeferred
async def test_end_user_refusals(web, body, message, field):
    await web.ok(web.admin("PUT", "/api/v1/hosts/" + HOST, {"serial": "S1", "platform": "macos"}))
    await refused(web, "PATCH", "/api/v1/hosts/" + HOST, body, 422, message, field)


@pytest_twisted.ensureDeferred
async def test_patch_unknown_host(web):
    answer = await web.admin("PATCH", "/api/v1/hosts/NOPE", {"idp_username": "a"})
    assert (answer.status, answer.json()["error"]) == (404, "no host 'NOPE'")


@pytest_twisted.ensureDeferred
async def test_import_with_end_user_fields(web):
    body = [{"uuid": "h1", "serial": "S1", "platform": "macos", "idp_username": "a@x", "idp_groups": ["g"]},
            {"uuid": "h2", "serial": None, "platform": "ios"}]
    await web.ok(web.admin("POST", "/api/v1/hosts/import", body))
    assert (await web.ok(web.admin("GET", "/api/v1/hosts/h1")))["idp_groups"] == ["g"]
    csv = b'uuid,serial,platform,idp_username,idp_groups,idp_department\nh3,S3,macos,c@x,"g1,g2",R&D\n'
    await web.ok(web.admin("POST", "/api/v1/hosts/import", csv, content_type="text/csv"))
    h3 = await web.ok(web.admin("GET", "/api/v1/hosts/h3"))
    assert (h3["idp_username"], h3["idp_groups"], h3["idp_department"]) == ("c@x", ["g1", "g2"], "R&D")
    old = b"uuid,serial,platform\nh3,S3b,macos\n"
    await web.ok(web.admin("POST", "/api/v1/hosts/import", old, content_type="text/csv"))
    h3 = await web.ok(web.admin("GET", "/api/v1/hosts/h3"))
    assert (h3["serial"], h3["idp_username"]) == ("S3b", "c@x")
    bad = b"uuid,serial,platform,idp_email\nh4,S4,macos,nope\n"
    answer = await web.admin("POST", "/api/v1/hosts/import", bad, content_type="text/csv")
    assert (answer.status, answer.json()["error"]) == (422, "row 1: idp_email must be an address such as user@example.com")


# -- custom secrets ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_secrets_are_never_shown(web, logs):
    created = await web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "s3cr3t-value"})
    assert created.status == 201 and set(created.json()) == {"name", "created_at", "updated_at", "changed", "resent"}
    listed = await web.ok(web.admin("GET", "/api/v1/secrets"))
    assert [s["name"] for s in listed["secrets"]] == ["RADIUS"]
    shown = await web.ok(web.admin("GET", "/api/v1/secrets/RADIUS"))
    assert shown["profiles"] == []
    same = await web.ok(web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "s3cr3t-value"}))
    assert (same["changed"], same["resent"]) == (False, 0)
    raw = web.store  # the value is sealed at rest
    secret = await raw.get_secret("RADIUS")
    assert b"s3cr3t-value" not in secret.value_ciphertext
    for answer in (created.text, str(listed), str(shown)):
        assert "s3cr3t-value" not in answer
    assert "s3cr3t-value" not in logs.text()


@pytest.mark.parametrize("path, body, message, field", [
    ("/api/v1/secrets/bad-name", {"value": "x"},
     "secret name must be 1-255 letters, digits or underscores (profiles write it as $FLEET_SECRET_<NAME>)", "name"),
    ("/api/v1/secrets/OK", {"value": ""}, "value must be a non-empty string", "value"),
    ("/api/v1/secrets/OK", {"value": "a\nb"}, "value must not contain control characters (tab excepted)", "value"),
    ("/api/v1/secrets/OK", {"value": "x" * 4097}, "value must be at most 4096 characters", "value"),
    ("/api/v1/secrets/OK", {"value": "a\uffff"},
     "value must not contain U+FFFE, U+FFFF or lone surrogates (XML cannot carry them)", "value"),
    ("/api/v1/secrets/OK", {"value": "x", "note": "y"}, "unknown field note; a secret has only a value", "note"),
])
@pytest_twisted.ensureDeferred
async def test_secret_refusals(web, path, body, message, field):
    await refused(web, "PUT", path, body, 422, message, field)


@pytest_twisted.ensureDeferred
async def test_profile_naming_a_missing_secret_is_refused_and_one_in_use_cannot_go(web):
    await web.enrollment()  # the upstream CA
    answer = await web.admin("POST", "/api/v1/profiles", wifi_profile("UPSTREAM_CA"),
                             content_type="application/x-apple-aspen-config")
    assert (answer.status, answer.json()) == (422, {
        "error": 'secret variable "$FLEET_SECRET_RADIUS" missing from database; add it first'
                 " (scepproxyctl secret set RADIUS)", "field": "profile"})
    await web.ok(web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "pw"}))
    profile = await web.ok(web.admin("POST", "/api/v1/profiles", wifi_profile("UPSTREAM_CA"),
                                     content_type="application/x-apple-aspen-config"))
    answer = await web.admin("DELETE", "/api/v1/secrets/RADIUS")
    assert (answer.status, answer.json()) == (409, {
        "error": "secret RADIUS is used by profiles: %s; change or delete them first" % (profile["uuid"],),
        "field": "name"})
    assert (await web.admin("DELETE", "/api/v1/secrets/NOPE")).status == 404
    await web.ok(web.admin("DELETE", "/api/v1/profiles/" + profile["uuid"]))
    assert (await web.admin("DELETE", "/api/v1/secrets/RADIUS")).status == 204


# -- rendering, missing values and resends ---------------------------------------------------------


async def assigned(web):
    """The upstream CA, the RADIUS secret, host MAC-1 without an end user, the Wi-Fi profile assigned and processed."""
    await web.enrollment(host="OTHER")  # adds the upstream CA
    await web.ok(web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "radius<&>pw"}))
    await web.ok(web.admin("PUT", "/api/v1/hosts/" + HOST, {"serial": "S1", "platform": "macos"}))
    profile = await web.ok(web.admin("POST", "/api/v1/profiles", wifi_profile("UPSTREAM_CA"),
                                     content_type="application/x-apple-aspen-config"))
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": [HOST]}))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    return profile["uuid"], await web.credential(HOST)


async def fetch(web, credential):
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    return (await web.ok(web.agent("GET", HOST, "/commands", credential)))["commands"]


@pytest_twisted.ensureDeferred
async def test_missing_value_fails_then_setting_it_sends_the_profile(web, logs):
    profile, credential = await assigned(web)
    assert await fetch(web, credential) == []
    hp = await web.host_profile(HOST, profile)
    assert (hp["status"], hp["detail"]) == ("failed", "host has no value for " + USERNAME)
    assert "host has no value for " + USERNAME in logs.text()

    await web.ok(web.admin("PATCH", "/api/v1/hosts/" + HOST, {"idp_username": "alice@corp.example"}))
    assert (await web.host_profile(HOST, profile))["status"] is None
    (command,) = await fetch(web, credential)
    rendered = plistlib.loads(command["payload"].encode())
    scep = rendered["PayloadContent"][0]["PayloadContent"]
    assert scep["Subject"][0] == [["CN", "alice@corp.example"]]
    assert rendered["PayloadContent"][1]["EAPClientConfiguration"] == {
        "UserName": "alice@corp.example", "UserPassword": "radius<&>pw"}
    assert "radius" not in logs.text()


@pytest_twisted.ensureDeferred
async def test_changed_values_send_again_and_unchanged_ones_do_not(web):
    profile, credential = await assigned(web)
    await web.ok(web.admin("PATCH", "/api/v1/hosts/" + HOST, {"idp_username": "alice@corp.example"}))
    await fetch(web, credential)
    assert (await web.host_profile(HOST, profile))["status"] == "pending"

    await web.ok(web.admin("PATCH", "/api/v1/hosts/" + HOST, {"idp_username": "alice@corp.example",
                                                              "idp_department": "R&D"}))
    assert (await web.host_profile(HOST, profile))["status"] == "pending"  # nothing it renders changed
    same = await web.ok(web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "radius<&>pw"}))
    assert same["resent"] == 0 and (await web.host_profile(HOST, profile))["status"] == "pending"

    changed = await web.ok(web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "new-pw"}))
    assert changed["resent"] == 1
    hp = await web.host_profile(HOST, profile)
    assert (hp["status"], hp["detail"]) == (None, "sent again: a value it renders changed ($FLEET_SECRET_RADIUS)")
    (command,) = await fetch(web, credential)
    assert "new-pw" in command["payload"]

    changed = await web.ok(web.admin("PATCH", "/api/v1/hosts/" + HOST, {"idp_username": "bob@corp.example"}))
    assert changed["resent"] == 1
    hp = await web.host_profile(HOST, profile)
    assert (hp["status"], hp["detail"]) == (None, "sent again: a value it renders changed (%s)" % (USERNAME,))
    (command,) = await fetch(web, credential)
    assert "bob@corp.example" in command["payload"] and "alice" not in command["payload"]


# -- RA mode: the proxy binds the CSR to the rendered username before the upstream CA sees it --------


@pytest_twisted.ensureDeferred
async def test_ra_mode_refuses_another_users_name_and_passes_the_rendered_one(web):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from support.scep_capture import fail_info_text
    from support.web import Enrollment, _scep_fields

    await web.ok(web.admin("POST", "/api/v1/cas", {
        "name": "RA_CA", "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge,
        "mode": "ra", "ra_certificate": "self-signed"}))
    await web.ok(web.admin("PUT", "/api/v1/secrets/RADIUS", {"value": "pw"}))
    await web.ok(web.admin("PUT", "/api/v1/hosts/" + HOST, {"serial": "S1", "platform": "macos",
                                                            "idp_username": "alice@corp.example"}))
    profile = (await web.ok(web.admin("POST", "/api/v1/profiles", wifi_profile("RA_CA"),
                                      content_type="application/x-apple-aspen-config")))["uuid"]
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": [HOST]}))
    credential = await web.credential(HOST)

    def subject(cn, renewal_id):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, renewal_id)])

    async def attempt(cn):
        (command,) = await fetch(web, credential)
        e = Enrollment(HOST, profile, "RA_CA", command["payload"], *_scep_fields(command["payload"]))
        scep = plistlib.loads(command["payload"].encode())["PayloadContent"][0]["PayloadContent"]
        renewal_id = scep["Subject"][1][0][1]
        request = await web.pkcs_req(e, subject=subject(cn, renewal_id))
        answer = await web.device("POST", e.path + "?operation=PKIOperation", request.message)
        return request.read(answer), answer

    (status, fail, _), answer = await attempt("bob@corp.example")
    assert (status, fail) == ("FAILURE", "badRequest")
    assert "alice@corp.example" in fail_info_text(answer.body)
    assert await web.upstream_cas.store.list_ca_requests() == []
    # The rendered name passes the RA and reaches the CA (which, by its own policy, holds it for an admin).
    (status, fail, _), answer = await attempt("alice@corp.example")
    assert status in ("SUCCESS", "PENDING"), (status, fail, fail_info_text(answer.body))
    (request,) = await web.upstream_cas.store.list_ca_requests()
    assert "CN=alice@corp.example" in request.subject


@pytest_twisted.ensureDeferred
async def test_android_template_renders_the_host_values_dn_and_json_safe(web):
    import json

    from support.web import FIXTURES

    await web.enrollment(host="OTHER")  # the upstream CA
    template = json.loads((FIXTURES / "android-corp-wifi.json").read_bytes().replace(b"CORP_CA", b"UPSTREAM_CA"))
    template["subject"] = "CN=%s,OU=$FLEET_VAR_SCEP_RENEWAL_ID,O=$FLEET_VAR_HOST_END_USER_IDP_DEPARTMENT" % (USERNAME,)
    template["subject_alt_names"] = {"email": ["$FLEET_VAR_HOST_END_USER_EMAIL_IDP"]}
    await web.ok(web.admin("PUT", "/api/v1/hosts/PHONE-1", {
        "serial": "P1", "platform": "android", "idp_username": 'x,O=evil"q', "idp_department": "R&D, Lab",
        "idp_email": "x@corp.example"}))
    profile = await web.ok(web.admin("POST", "/api/v1/profiles", json.dumps(template).encode(),
                                     content_type="application/json"))
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": ["PHONE-1"]}))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    credential = await web.credential("PHONE-1")
    (command,) = (await web.ok(web.agent("GET", "PHONE-1", "/commands", credential)))["commands"]
    rendered = json.loads(command["payload"])
    assert rendered["subject"].startswith('CN=x\\,O\\=evil\\"q,OU=sp-')
    assert rendered["subject"].endswith(",O=R&D\\, Lab")
    assert rendered["subject_alt_names"] == {"email": ["x@corp.example"]}
