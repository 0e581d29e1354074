"""Host and end-user variables and custom secrets in profiles: where each may be written, how each renders,
and what the CA's binding expects of a CSR once they are filled in (docs/profiles.md, "Host and end-user
variables" and "Custom secrets")."""

import copy
import json
import plistlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import DNSName, RFC822Name
from cryptography.x509.oid import NameOID

from support.certs import csr, name
from support.profiles import refused
from scepproxyd.ca.csr_policy import KeyPolicy, SanPolicy, refusal
from scepproxyd.profiles import ProfileError, parse_profile, render_profile, variables
from scepproxyd.profiles.binding import HostFacts, expected_request
from scepproxyd.profiles.model import EndUser

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
APPLE = plistlib.loads((FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes())
ANDROID = json.loads((FIXTURES / "android-corp-wifi.json").read_bytes())
USERNAME = "$FLEET_VAR_HOST_END_USER_IDP_USERNAME"
RENEWAL_ID = "sp-0123456789abcdef"
ALICE = EndUser("alice@corp.example", "Alice Example", ("wifi", "staff"), "R&D", "alice@mail.example")
HOST = HostFacts("A1B2C3D4-0000-4000-8000-000000000001", "C02XK1ABJG5H", "macos", ALICE)


def apple(change) -> bytes:
    """The Fleet sample after ``change(profile, scep_fields)``, with a Wi-Fi payload after the SCEP one."""
    profile = copy.deepcopy(APPLE)
    profile["PayloadContent"].append({
        "PayloadType": "com.apple.wifi.managed", "PayloadIdentifier": "wifi", "PayloadUUID": "W",
        "PayloadVersion": 1, "SSID_STR": "corp", "EAPClientConfiguration": {"UserName": "plain"},
    })
    change(profile, profile["PayloadContent"][0]["PayloadContent"])
    return plistlib.dumps(profile)


def android(change) -> bytes:
    template = copy.deepcopy(ANDROID)
    change(template)
    return json.dumps(template).encode()


def wifi(profile) -> dict:
    return profile["PayloadContent"][1]["EAPClientConfiguration"]


def username_everywhere(profile, fields):
    fields["Subject"] = [[["CN", USERNAME]], [["OU", "$FLEET_VAR_SCEP_RENEWAL_ID"]]]
    fields["SubjectAltName"] = {"rfc822Name": "$FLEET_VAR_HOST_END_USER_EMAIL_IDP", "ntPrincipalName": USERNAME}
    wifi(profile)["UserName"] = USERNAME
    wifi(profile)["UserPassword"] = "$FLEET_SECRET_WIFI_PASSWORD"


# -- upload rules: Apple ---------------------------------------------------------------------------


def test_apple_host_variables_anywhere_and_repeated():
    parsed = parse_profile(apple(username_everywhere))
    assert parsed.ca_name == "CA_NAME"
    assert {USERNAME[1:], "FLEET_VAR_HOST_END_USER_EMAIL_IDP", "FLEET_SECRET_WIFI_PASSWORD"} <= set(parsed.variables)


@pytest.mark.parametrize("spelled", [v for v in variables.HOST_VARIABLES])
def test_every_host_variable_is_known(spelled):
    def change(profile, fields):
        wifi(profile)["UserName"] = "${%s}" % (spelled,)

    assert spelled in parse_profile(apple(change)).variables


def test_apple_secret_in_the_subject_refused():
    def change(profile, fields):
        fields["Subject"] = [[["CN", "$FLEET_SECRET_X $FLEET_VAR_SCEP_RENEWAL_ID"]]]

    refused(apple(change), "secret variable $FLEET_SECRET_X cannot appear in the SCEP payload (found in"
            " PayloadContent > item 1 > PayloadContent > Subject > item 1 > item 1 > item 2): it describes a"
            " certificate, whose subject and names anyone shown the certificate can read; a secret belongs only"
            " where the device keeps it (a Wi-Fi or VPN password, say)")


def test_apple_secret_in_a_subject_alt_name_refused():
    def change(profile, fields):
        fields["SubjectAltName"] = {"dNSName": "$FLEET_SECRET_X.corp.example"}

    with pytest.raises(ProfileError, match=r"^secret variable \$FLEET_SECRET_X cannot appear in the SCEP payload"
                                           r" \(found in .* SubjectAltName > dNSName\)"):
        parse_profile(apple(change))


def test_apple_host_variable_in_the_payload_identifier_refused():
    refused(apple(lambda p, f: p.update(PayloadIdentifier="wifi.$FLEET_VAR_HOST_UUID")),
            "variable $FLEET_VAR_HOST_UUID cannot appear in PayloadIdentifier: devices report an installed profile"
            " by it", "PayloadIdentifier")


def test_apple_host_variable_in_a_key_refused():
    refused(apple(lambda p, f: wifi(p).update({USERNAME: "x"})),
            "variable %s is in a dictionary key; variables may only be written in string values" % (USERNAME,))


def test_apple_host_variable_as_a_subject_type_refused():
    def change(profile, fields):
        fields["Subject"] = [[["CN", "$FLEET_VAR_SCEP_RENEWAL_ID"]], [[USERNAME, "x"]]]

    refused(apple(change), "variable %s cannot be a Subject attribute type; write it in the value" % (USERNAME,),
            "Subject")


def test_apple_profile_with_only_host_variables_still_needs_the_proxy_ones():
    def change(profile, fields):
        wifi(profile)["UserName"] = USERNAME
        profile["PayloadContent"].pop(0)

    refused(apple(change), "profile has no com.apple.security.scep payload; scepproxyd manages certificate profiles"
            " only")


@pytest.mark.parametrize("text, message", [
    ("$FLEET_VAR_HOST_END_USER_IDP_NICKNAME", "unknown variable $FLEET_VAR_HOST_END_USER_IDP_NICKNAME"),
    ("$FLEET_SECRET_", "variable $FLEET_SECRET_ must end with a secret name of 1-255 letters, digits or underscores"),
    ("${FLEET_SECRET_X", "variable ${FLEET_SECRET_X has no closing brace"),
])
def test_bad_spellings_refused(text, message):
    refused(apple(lambda p, f: wifi(p).update(UserName=text)), message)


# -- upload rules: Android -------------------------------------------------------------------------


def test_android_host_variables_in_subject_and_sans():
    def change(t):
        t["subject"] = "CN=%s,OU=$FLEET_VAR_SCEP_RENEWAL_ID,O=$FLEET_VAR_HOST_END_USER_IDP_DEPARTMENT" % (USERNAME,)
        t["subject_alt_names"] = {"email": ["$FLEET_VAR_HOST_END_USER_EMAIL_IDP"], "dns": ["$FLEET_VAR_HOST_UUID.x"]}

    parsed = parse_profile(android(change))
    assert {"FLEET_VAR_HOST_END_USER_IDP_DEPARTMENT", "FLEET_VAR_HOST_UUID"} <= set(parsed.variables)


def test_android_host_variable_elsewhere_refused():
    refused(android(lambda t: t.update(name="wifi $FLEET_VAR_HOST_UUID")),
            "variable $FLEET_VAR_HOST_UUID may only appear in subject or subject_alt_names (found in name)", "name")


def test_android_host_variable_as_attribute_type_refused():
    refused(android(lambda t: t.update(subject="CN=$FLEET_VAR_SCEP_RENEWAL_ID,%s=x" % (USERNAME,))),
            'template "subject" must be a DN such as "CN=name,OU=unit" (write a comma in a value as \\,)', "subject")


def test_android_secret_refused():
    refused(android(lambda t: t["subject_alt_names"].update(uri=["urn:$FLEET_SECRET_TOKEN"])),
            "secret variable $FLEET_SECRET_TOKEN cannot appear in an Android certificate template (found in"
            " subject_alt_names.uri[0]): it describes a certificate, whose subject and names anyone shown the"
            " certificate can read; a secret belongs only where the device keeps it (a Wi-Fi or VPN password, say)")


# -- values and rendering --------------------------------------------------------------------------


def test_host_values():
    values = HOST.values()
    assert values[variables.HOST_END_USER_IDP_USERNAME_LOCAL_PART] == "alice"
    assert values[variables.HOST_END_USER_IDP_GROUPS] == "wifi,staff"
    assert values[variables.HOST_PLATFORM] == "macos"
    assert values[variables.HOST_HARDWARE_SERIAL] == "C02XK1ABJG5H"
    bare = variables.host_values("u", None, "ios", EndUser(idp_username="bob"))
    assert bare[variables.HOST_END_USER_IDP_USERNAME_LOCAL_PART] == "bob"
    assert bare[variables.HOST_HARDWARE_SERIAL] is None
    assert bare[variables.HOST_END_USER_IDP_GROUPS] is None


def render(kind, content, host=HOST, secrets=None):
    return render_profile(kind, content, ca_challenge="c", proxy_url="https://p/x", renewal_id=RENEWAL_ID,
                          host=host.values(), secrets=secrets or {})


def test_apple_render_is_xml_escaped():
    tricky = HostFacts("u", "s", "macos", EndUser(idp_username="a<b>&'\"@corp", idp_department="R&D"))

    def change(profile, fields):
        username_everywhere(profile, fields)
        wifi(profile)["Department"] = "$FLEET_VAR_HOST_END_USER_IDP_DEPARTMENT"
        wifi(profile)["UserPassword"] = "$FLEET_SECRET_WIFI_PASSWORD"
        fields["SubjectAltName"] = {"ntPrincipalName": USERNAME}

    rendered = render("mobileconfig", apple(change), tricky, {"WIFI_PASSWORD": "p<&>w"})
    assert b"a&lt;b&gt;&amp;&apos;&quot;@corp" in rendered
    profile = plistlib.loads(rendered)
    assert profile["PayloadContent"][0]["PayloadContent"]["Subject"][0][0][1] == "a<b>&'\"@corp"
    assert wifi(profile) == {"UserName": "a<b>&'\"@corp", "UserPassword": "p<&>w", "Department": "R&D"}


def test_android_render_is_json_and_dn_safe():
    tricky = HostFacts("u", "s", "android", EndUser(idp_username='x,O=evil+"q"@corp', idp_email="x@corp"))

    def change(t):
        t["subject"] = "CN=%s,OU=$FLEET_VAR_SCEP_RENEWAL_ID" % (USERNAME,)
        t["subject_alt_names"] = {"email": ["$FLEET_VAR_HOST_END_USER_EMAIL_IDP"]}

    rendered = json.loads(render("android_template", android(change), tricky))
    assert rendered["subject"] == 'CN=x\\,O\\=evil\\+\\"q\\"@corp,OU=' + RENEWAL_ID
    assert rendered["subject_alt_names"]["email"] == ["x@corp"]


@pytest.mark.parametrize("missing, end_user", [
    ("$FLEET_VAR_HOST_END_USER_IDP_USERNAME", EndUser(idp_groups=("g",))),
    ("$FLEET_VAR_HOST_END_USER_IDP_GROUPS", EndUser(idp_username="a", idp_groups=())),
])
def test_missing_value_names_the_variable(missing, end_user):
    def change(profile, fields):
        wifi(profile)["UserName"] = USERNAME
        wifi(profile)["Groups"] = "$FLEET_VAR_HOST_END_USER_IDP_GROUPS"

    with pytest.raises(variables.MissingValue) as e:
        render("mobileconfig", apple(change), HostFacts("u", "s", "macos", end_user))
    assert str(e.value) == "host has no value for %s" % (missing,)
    assert e.value.variable == missing


def test_missing_secret_names_it():
    def change(profile, fields):
        wifi(profile)["UserPassword"] = "$FLEET_SECRET_WIFI_PASSWORD"

    with pytest.raises(variables.MissingValue, match=r"^host has no value for \$FLEET_SECRET_WIFI_PASSWORD$"):
        render("mobileconfig", apple(change))


def test_values_repr_hides_secrets():
    values = variables.Values("chal", "url", RENEWAL_ID, {}, {"X": "hunter2"})
    assert "hunter2" not in repr(values) and "chal" not in repr(values)


# -- the CSR binding expects exactly the rendered values --------------------------------------------


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def judge(request, content, host=HOST):
    expected = expected_request("mobileconfig", content, renewal_id=RENEWAL_ID, host=host)
    policy = SanPolicy.from_patterns({"email": r"[^@]+@[a-z.]+", "dns": r".*"})
    return refusal(request, key_policy=KeyPolicy(), san_policy=policy, ca_subject=name([(NameOID.COMMON_NAME, "CA")]),
                   expected=expected)


def bound_profile():
    def change(profile, fields):
        fields["Subject"] = [[["CN", USERNAME]], [["OU", "$FLEET_VAR_SCEP_RENEWAL_ID"]]]
        fields["SubjectAltName"] = {"rfc822Name": "$FLEET_VAR_HOST_END_USER_EMAIL_IDP"}

    return apple(change)


def subject(cn):
    return name([(NameOID.COMMON_NAME, cn)], [(NameOID.ORGANIZATIONAL_UNIT_NAME, RENEWAL_ID)])


def test_binding_accepts_exactly_the_rendered_username():
    request = csr(KEY, subject("alice@corp.example"), [RFC822Name("alice@mail.example")])
    assert judge(request, bound_profile()) is None


def test_binding_refuses_another_users_name():
    request = csr(KEY, subject("bob@corp.example"), [RFC822Name("alice@mail.example")])
    found = judge(request, bound_profile())
    assert found is not None and "alice@corp.example" in found.reason


def test_binding_refuses_another_users_email():
    request = csr(KEY, subject("alice@corp.example"), [RFC822Name("bob@mail.example")])
    assert judge(request, bound_profile()) is not None


def test_binding_refuses_an_extra_name():
    request = csr(KEY, subject("alice@corp.example"), [RFC822Name("alice@mail.example"), DNSName("evil.example")])
    assert judge(request, bound_profile()) is not None


def test_binding_for_a_host_without_the_value_names_it():
    with pytest.raises(variables.MissingValue, match=r"IDP_USERNAME$"):
        expected_request("mobileconfig", bound_profile(), renewal_id=RENEWAL_ID,
                         host=HostFacts("u", None, "macos", None))


# -- Windows SyncML -----------------------------------------------------------------------------------

WINDOWS = (FIXTURES / "fleet-custom-scep-windows.xml").read_text()
WINDOWS_SUBJECT = "<Data>CN=WIN-WIFI,OU=$FLEET_VAR_SCEP_RENEWAL_ID</Data>"


def windows(subject_data: str, extra: str = "") -> bytes:
    assert WINDOWS.count(WINDOWS_SUBJECT) == 1
    text = WINDOWS.replace(WINDOWS_SUBJECT, "<Data>%s</Data>" % (subject_data,))
    return text.replace("<Data>2048</Data>", "<Data>2048%s</Data>" % (extra,)).encode()


def test_windows_host_variables_in_the_subject_name_render_and_bind():
    content = windows("CN=%s,OU=$FLEET_VAR_SCEP_RENEWAL_ID" % (USERNAME,))
    assert USERNAME[1:] in parse_profile(content).variables
    tricky = HostFacts("u", "s", "windows", EndUser(idp_username="a<b>&@corp"))
    rendered = render("windows_syncml", content, host=tricky)
    assert b"<Data>CN=a&lt;b&gt;&amp;@corp,OU=" + RENEWAL_ID.encode() + b"</Data>" in rendered
    expected = expected_request("windows_syncml", content, renewal_id=RENEWAL_ID, host=HOST)
    policy = SanPolicy.from_patterns({})
    judge_windows = lambda request: refusal(  # noqa: E731
        request, key_policy=KeyPolicy(), san_policy=policy, ca_subject=name([(NameOID.COMMON_NAME, "CA")]),
        expected=expected)
    assert judge_windows(csr(KEY, subject("alice@corp.example"))) is None
    assert judge_windows(csr(KEY, subject("bob@corp.example"))) is not None


def test_windows_secret_refused():
    refused(windows("CN=$FLEET_SECRET_WIFI,OU=$FLEET_VAR_SCEP_RENEWAL_ID"),
            "secret variable $FLEET_SECRET_WIFI cannot appear in a Windows SCEP profile: it describes a certificate,"
            " whose subject and names anyone shown the certificate can read; a secret belongs only where the device"
            " keeps it (a Wi-Fi or VPN password, say)")


def test_windows_host_variable_outside_the_names_refused():
    refused(windows("CN=x,OU=$FLEET_VAR_SCEP_RENEWAL_ID", extra="$FLEET_VAR_HOST_UUID"),
            "variable $FLEET_VAR_HOST_UUID may only appear in the <Data> of SubjectName or SubjectAlternativeNames",
            "Install/KeyLength")


# -- docs/profiles.md ---------------------------------------------------------------------------------


DOCS = Path(__file__).parents[1] / "docs" / "profiles.md"


def test_docs_list_every_host_variable():
    docs = DOCS.read_text()
    section = docs.split("## Host and end-user variables", 1)[1]
    for spelled in variables.HOST_VARIABLES:
        assert "| `$%s` |" % (spelled,) in section


def test_docs_eap_tls_example_uploads_and_binds():
    docs = DOCS.read_text()
    example = docs.split("<!-- eap-tls-example -->\n```xml\n", 1)[1].split("```", 1)[0].encode()
    parsed = parse_profile(example)
    assert (parsed.ca_name, parsed.identifier) == ("CORP_CA", "com.example.wifi")
    expected = expected_request("mobileconfig", example, renewal_id=RENEWAL_ID, host=HOST)
    assert [m.describe() for _, m in expected.sans] == ["'alice@corp.example'"]
    rendered = plistlib.loads(render("mobileconfig", example))
    assert rendered["PayloadContent"][1]["EAPClientConfiguration"]["UserName"] == "alice@corp.example"
