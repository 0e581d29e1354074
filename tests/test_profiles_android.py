"""Android certificate templates: the documented JSON shape and its refusals."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scepproxyd.profiles import ParsedProfile, ProfileError, parse_profile, render_profile, variables
from scepproxyd.profiles.model import EndUser
from support.profiles import refused

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
GOOD_BYTES = (FIXTURES / "android-corp-wifi.json").read_bytes()
GOOD = json.loads(GOOD_BYTES)

URL = "$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_CORP_CA"
CHALLENGE = "${FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CORP_CA}"
RENEWAL_MESSAGE = 'template "subject" must contain $FLEET_VAR_SCEP_RENEWAL_ID in its CN or OU'
KEY_MESSAGE = (
    'template "key" must be {"type": "rsa", "size": 2048, 3072 or 4096} or {"type": "ec", "size": 256 or 384}'
)


def variant(change) -> bytes:
    template = copy.deepcopy(GOOD)
    change(template)
    return json.dumps(template).encode()


def test_documented_example_uploads():
    assert parse_profile(GOOD_BYTES, "application/json") == ParsedProfile(
        kind="android_template",
        name="Corporate Wi-Fi",
        identifier="Corporate Wi-Fi",
        ca_name="CORP_CA",
        variables=(
            "FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CORP_CA",
            "FLEET_VAR_CUSTOM_SCEP_PROXY_URL_CORP_CA",
            "FLEET_VAR_SCEP_RENEWAL_ID",
        ),
    )


def test_docs_example_is_the_fixture():
    docs = (Path(__file__).parents[1] / "docs" / "profiles.md").read_text()
    example = docs.split("<!-- android-example -->\n```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(example) == GOOD


def test_minimal_template_with_ec_key_and_ou_renewal_id():
    template = {
        "format": "scepproxyd.android-certificate-template/1",
        "name": "minimal",
        "scep": {"url": URL, "challenge": CHALLENGE},
        "subject": "CN=phone,OU=${FLEET_VAR_CERTIFICATE_RENEWAL_ID}",
        "key": {"type": "ec", "size": 384},
    }
    assert parse_profile(json.dumps(template).encode()).ca_name == "CORP_CA"


def test_optional_lists_accept_their_vocabulary():
    def change(t):
        t["key_usage"] = ["digital_signature", "content_commitment", "key_agreement"]
        t["extended_key_usage"] = ["server_auth", "1.3.6.1.4.1.311.20.2.2"]
        t["subject_alt_names"] = {"email": ["a@example.com"], "uri": ["urn:x"]}

    assert parse_profile(variant(change)).kind == "android_template"


# -- the document --------------------------------------------------------------


def test_invalid_json():
    refused(b'{"format": ', "Android certificate template is not valid JSON: Expecting value: line 1 column 12 (char 11)")


def test_duplicate_keys():
    refused(b'{"name": "a", "name": "b"}', 'template has duplicate key "name"')


def test_static_challenge_hidden_behind_a_duplicate_key():
    # json keeps the last of two equal keys: the variable would pass the rules, the static one reach agents.
    content = GOOD_BYTES.replace(b'"challenge": ', b'"challenge": "static-secret", "challenge": ', 1)
    assert json.loads(content)["scep"]["challenge"] == CHALLENGE
    refused(content, 'template has duplicate key "challenge"')


def test_duplicate_key_in_a_nested_object():
    content = GOOD_BYTES.replace(b'"dns": []', b'"dns": [], "dns": ["evil.example"]', 1)
    assert content != GOOD_BYTES
    refused(content, 'template has duplicate key "dns"')


@pytest.mark.parametrize("value", [None, "scepproxyd.android-certificate-template/2", 1])
def test_wrong_format(value):
    def change(t):
        if value is None:
            del t["format"]
        else:
            t["format"] = value

    refused(variant(change), 'template "format" must be "scepproxyd.android-certificate-template/1"', "format")


def test_unknown_top_level_key():
    refused(
        variant(lambda t: t.update(ca="CORP_CA")),
        'template has unknown key "ca"; allowed: format, name, scep, subject, key,'
        " key_usage, extended_key_usage, subject_alt_names, subject_alternative_name",
        "ca",
    )


@pytest.mark.parametrize("key", ["name", "scep", "subject", "key"])
def test_missing_required_key(key):
    refused(variant(lambda t: t.pop(key)), 'template is missing "%s"' % (key,), key)


@pytest.mark.parametrize("name", ["", "   ", 7, "x" * 256])
def test_bad_name(name):
    refused(
        variant(lambda t: t.update(name=name)),
        'template "name" must be a non-empty string of at most 255 characters',
        "name",
    )


@pytest.mark.parametrize("scep", [URL, {"url": URL}, {"url": URL, "challenge": None}])
def test_bad_scep_object(scep):
    refused(
        variant(lambda t: t.update(scep=scep)),
        'template "scep" must be an object with "url" and "challenge"',
        "scep",
    )


def test_unknown_scep_key():
    refused(
        variant(lambda t: t["scep"].update(ca="X")),
        'template has unknown key "scep.ca"; allowed: url, challenge',
        "scep.ca",
    )


@pytest.mark.parametrize("subject", ["", "just a name", "CN=a,=b", "CN=a\\", "CN=a,,OU=b", 5])
def test_bad_subject(subject):
    refused(
        variant(lambda t: t.update(subject=subject)),
        'template "subject" must be a DN such as "CN=name,OU=unit" (write a comma in a value as \\,)',
        "subject",
    )


@pytest.mark.parametrize(
    "key",
    [
        {"type": "rsa", "size": 1024},
        {"type": "rsa", "size": 2048.0},
        {"type": "rsa", "size": True},
        {"type": "ec", "size": 2048},
        {"type": "dsa", "size": 2048},
        {"type": ["rsa"], "size": 2048},
        {"type": "rsa"},
        {"type": "rsa", "size": 2048, "curve": "p256"},
        "rsa",
    ],
)
def test_bad_key(key):
    refused(variant(lambda t: t.update(key=key)), KEY_MESSAGE, "key")


def test_bad_key_usage():
    refused(
        variant(lambda t: t.update(key_usage=["key_cert_sign"])),
        'template "key_usage" must be a list of: digital_signature, content_commitment,'
        " key_encipherment, data_encipherment, key_agreement",
        "key_usage",
    )


@pytest.mark.parametrize("usages", [["clientAuth"], "client_auth", [1]])
def test_bad_extended_key_usage(usages):
    refused(
        variant(lambda t: t.update(extended_key_usage=usages)),
        'template "extended_key_usage" must be a list of: client_auth, server_auth,'
        " email_protection, code_signing or dotted OIDs",
        "extended_key_usage",
    )


@pytest.mark.parametrize("names", [{"rid": ["1.2.3"]}, {"dns": "a.example"}, {"dns": [""]}, []])
def test_bad_subject_alt_names(names):
    refused(
        variant(lambda t: t.update(subject_alt_names=names)),
        'template "subject_alt_names" must be an object with lists of strings under: dns, email, uri, upn, ip',
        "subject_alt_names",
    )


# -- variables -----------------------------------------------------------------


def test_url_must_be_exactly_the_variable():
    refused(
        variant(lambda t: t["scep"].update(url="https://ca.example/scep")),
        'template "scep.url" must be $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_<CA>',
        "scep.url",
    )
    refused(
        variant(lambda t: t["scep"].update(url=URL + "/pkiclient.exe")),
        'template "scep.url" must be $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_<CA>',
        "scep.url",
    )


def test_challenge_must_be_exactly_the_variable():
    refused(
        variant(lambda t: t["scep"].update(challenge="static")),
        'template "scep.challenge" must be $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_<CA>',
        "scep.challenge",
    )


def test_mismatched_ca_names():
    refused(
        variant(lambda t: t["scep"].update(url="$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_OTHER")),
        "scep.challenge names CA 'CORP_CA' but scep.url names CA 'OTHER'",
        "scep.url",
    )


@pytest.mark.parametrize(
    "subject",
    [
        "CN=phone,O=$FLEET_VAR_SCEP_RENEWAL_ID",
        "CN=phone,OU=Devices",
        "CN=phone,2.5.4.10=$FLEET_VAR_SCEP_RENEWAL_ID",
    ],
)
def test_renewal_id_in_cn_or_ou(subject):
    refused(variant(lambda t: t.update(subject=subject)), RENEWAL_MESSAGE, "subject")


def test_duplicated_variable():
    refused(
        variant(lambda t: t.update(subject="CN=$FLEET_VAR_SCEP_RENEWAL_ID,OU=${FLEET_VAR_SCEP_RENEWAL_ID}")),
        "variable $FLEET_VAR_SCEP_RENEWAL_ID appears 2 times; each may appear at most once",
    )


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda t: t.update(name="$FLEET_VAR_SCEP_RENEWAL_ID"), "name"),
    ],
)
def test_variable_outside_its_fields(change, where):
    def move(t):
        t["subject"] = "CN=phone"
        change(t)

    refused(
        variant(move),
        "variable $FLEET_VAR_SCEP_RENEWAL_ID may only appear in scep.url, scep.challenge, subject"
        " or a subject alternative name (found in %s)" % (where,),
    )


def test_renewal_id_in_a_name_still_needs_it_in_the_subject():
    def move(t):
        t["subject"] = "CN=phone"
        t["subject_alt_names"]["dns"] = ["$FLEET_VAR_SCEP_RENEWAL_ID.example"]

    refused(variant(move), RENEWAL_MESSAGE, "subject")


def test_second_ca_in_the_subject():
    refused(
        variant(lambda t: t.update(subject="CN=$FLEET_VAR_SCEP_RENEWAL_ID,O=$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_B")),
        "variable $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_B may only be the whole value of scep.url",
    )


def test_unknown_variable():
    refused(variant(lambda t: t.update(name="$FLEET_VAR_HOST_NICKNAME")), "unknown variable $FLEET_VAR_HOST_NICKNAME")


# -- rendering -----------------------------------------------------------------


def test_render_is_valid_json_with_values_in_place():
    rendered = render_profile(
        "android_template",
        GOOD_BYTES,
        ca_challenge='quote " backslash \\ newline \n',
        proxy_url="https://proxy.example/mdm/scep/proxy/h%2Cp%2CCORP_CA%2Cc",
        renewal_id="tok,en=1",
    )
    template = json.loads(rendered)
    assert template["scep"] == {
        "url": "https://proxy.example/mdm/scep/proxy/h%2Cp%2CCORP_CA%2Cc",
        "challenge": 'quote " backslash \\ newline \n',
    }
    # The renewal ID stays inside its RDN even if it had DN syntax in it.
    assert template["subject"] == "CN=tok\\,en\\=1,OU=Devices,O=Example\\, Inc."
    assert {k: v for k, v in template.items() if k not in ("scep", "subject")} == {
        k: v for k, v in GOOD.items() if k not in ("scep", "subject")
    }


# -- subject alternative names: every kind, both spellings ---------------------------

FLEET_SANS = (
    "DNS=$FLEET_VAR_SCEP_RENEWAL_ID.wifi.example.com, email = ann@example.com,UPN=ann@corp.example,"
    " IP=2001:DB8::0:1, URI=spiffe://example.com/device/$FLEET_VAR_SCEP_RENEWAL_ID, ip=10.0.0.1"
)


def with_names(**change) -> bytes:
    def apply(t):
        t.pop("subject_alt_names")
        t.update(change)

    return variant(apply)


def test_every_kind_in_the_object_spelling():
    names = {"dns": ["wifi.example.com", "*.corp.example", "%HostName%.corp.example"],
             "email": ["ann@example.com"], "uri": ["urn:example:$FLEET_VAR_SCEP_RENEWAL_ID"],
             "upn": ["%SerialNumber%@corp.example", "ann@corp.example"], "ip": ["10.0.0.1", "2001:db8::1"]}
    parsed = parse_profile(with_names(subject_alt_names=names))
    assert "FLEET_VAR_SCEP_RENEWAL_ID" in parsed.variables


def test_fleet_string_spelling_is_accepted_and_rendered_as_the_object():
    content = with_names(subject_alternative_name=FLEET_SANS)
    assert parse_profile(content).kind == "android_template"
    rendered = json.loads(render_profile("android_template", content, ca_challenge="c", proxy_url="u",
                                         renewal_id="sp-0123456789abcdef"))
    assert "subject_alternative_name" not in rendered
    assert rendered["subject_alt_names"] == {
        "dns": ["sp-0123456789abcdef.wifi.example.com"], "email": ["ann@example.com"],
        "uri": ["spiffe://example.com/device/sp-0123456789abcdef"], "upn": ["ann@corp.example"],
        "ip": ["2001:DB8::0:1", "10.0.0.1"],
    }
    assert rendered["subject"] == "CN=sp-0123456789abcdef,OU=Devices,O=Example\\, Inc."


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_fleet_string_is_no_names(text):
    content = with_names(subject_alternative_name=text)
    assert parse_profile(content).kind == "android_template"
    rendered = json.loads(render_profile("android_template", content, ca_challenge="c", proxy_url="u", renewal_id="r"))
    assert rendered["subject_alt_names"] == {"dns": [], "email": [], "uri": [], "upn": [], "ip": []}


@pytest.mark.parametrize("names, message", [
    ({"ip": ["10.0.0.256"]},
     'template "subject_alt_names.ip[0]" must be an IPv4 or IPv6 address such as 10.0.0.1 or 2001:db8::1,'
     " not '10.0.0.256'"),
    ({"ip": ["10.0.0.0/8"]},
     'template "subject_alt_names.ip[0]" must be an IPv4 or IPv6 address such as 10.0.0.1 or 2001:db8::1,'
     " not '10.0.0.0/8'"),
    ({"ip": ["fe80::1%eth0"]},
     'template "subject_alt_names.ip[0]" must be an IPv4 or IPv6 address such as 10.0.0.1 or 2001:db8::1,'
     " not 'fe80::1%eth0'"),
    ({"ip": ["10.0.0.1", "$FLEET_VAR_SCEP_RENEWAL_ID"]},
     'template "subject_alt_names.ip[1]": an IP address cannot come from a variable or placeholder; write the address'),
    ({"dns": ["wifi example.com"]},
     "template \"subject_alt_names.dns[0]\" must be a DNS name such as wifi.example.com, not 'wifi example.com'"),
    ({"dns": ["%HostName%/corp"]},
     "template \"subject_alt_names.dns[0]\" must be a DNS name such as wifi.example.com, not '%HostName%/corp'"),
    ({"email": ["ann.example.com"]},
     "template \"subject_alt_names.email[0]\" must be an email address such as ann@example.com,"
     " not 'ann.example.com'"),
    ({"upn": ["ann"]},
     "template \"subject_alt_names.upn[0]\" must be a user principal name such as ann@corp.example, not 'ann'"),
    ({"uri": ["example.com/device"]},
     'template "subject_alt_names.uri[0]" must be a URI with a scheme, such as urn:example:device or'
     " https://example.com/device, not 'example.com/device'"),
])
def test_bad_names_in_the_object_spelling(names, message):
    refused(with_names(subject_alt_names=names), message, "subject_alt_names")


@pytest.mark.parametrize("text, message", [
    ("DNS=ok.example, OOPS",
     "template \"subject_alternative_name\" entry 2 ('OOPS') is not KEY=value; keys: DNS, EMAIL, URI, UPN, IP"),
    ("RFC822=ann@example.com",
     "template \"subject_alternative_name\" entry 1 has key 'RFC822'; allowed: DNS, EMAIL, URI, UPN, IP"),
    ("DNS=a.example, UPN=", 'template "subject_alternative_name" entry 2 (UPN=) has no value'),
    ("IP=not.an.address",
     'template "subject_alternative_name" entry 1 (IP) must be an IPv4 or IPv6 address such as 10.0.0.1'
     " or 2001:db8::1, not 'not.an.address'"),
    ("DNS=" + "a" * 4092, 'template "subject_alternative_name" must be shorter than 4096 bytes'),
    (["DNS=a.example"],
     'template "subject_alternative_name" must be a string such as "DNS=wifi.example.com, UPN=ann@corp.example"'),
])
def test_bad_fleet_strings(text, message):
    refused(with_names(subject_alternative_name=text), message, "subject_alternative_name")


def test_both_spellings_at_once():
    refused(variant(lambda t: t.update(subject_alternative_name="DNS=a.example")),
            'template has both "subject_alt_names" and "subject_alternative_name"; write the names in one of them',
            "subject_alternative_name")


@pytest.mark.parametrize("sans", ["UPN=$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CORP_CA",
                                  "URI=${FLEET_VAR_CUSTOM_SCEP_PROXY_URL_CORP_CA}"])
def test_no_secret_in_a_name(sans):
    """A certificate is public: the CA's challenge or a proxy URL (with its one-time challenge) never goes in one."""
    with pytest.raises(ProfileError, match="may only be the whole value of scep"):
        parse_profile(with_names(subject_alternative_name=sans))


def test_unknown_variable_in_a_name():
    refused(with_names(subject_alternative_name="DNS=$FLEET_VAR_NO_SUCH.example"),
            "unknown variable $FLEET_VAR_NO_SUCH")


def test_docs_sans_example_uploads_and_renders_as_documented():
    docs = (Path(__file__).parents[1] / "docs" / "profiles.md").read_text()
    section = docs.split("<!-- android-sans-example -->\n```json\n", 1)[1]
    example, after = section.split("```", 1)
    received = after.split("```json\n", 1)[1].split("```", 1)[0]
    assert parse_profile(example.encode()).ca_name == "CORP_CA"
    ann = EndUser(idp_username="ann@corp.example", idp_email="ann@example.com")
    host = variables.host_values("A1B2C3D4-0000-4000-8000-000000000001", None, "android", ann)
    rendered = json.loads(render_profile("android_template", example.encode(), ca_challenge="c", proxy_url="u",
                                         renewal_id="sp-0123456789abcdef", host=host))
    assert {"subject_alt_names": rendered["subject_alt_names"]} == json.loads("{%s}" % received)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("DNSEMAILUPNIPURIdnsip=, .:@/*%$_{}-0123456789abfé\\"), max_size=60))
def test_any_fleet_string_is_accepted_or_refused_with_a_message(text):
    """Whatever an admin writes there: a ProfileError naming the place, or a template whose names render and bind."""
    from scepproxyd.profiles.binding import HostFacts, expected_request

    content = with_names(subject_alternative_name=text)
    try:
        parse_profile(content)
    except ProfileError as e:
        assert e.field in ("subject_alternative_name", "profile")
        return
    rendered = json.loads(render_profile("android_template", content, ca_challenge="c", proxy_url="u",
                                         renewal_id="sp-0123456789abcdef"))
    expected = expected_request("android_template", content, renewal_id="sp-0123456789abcdef",
                                host=HostFacts(uuid="h", serial=None, platform="android"))
    assert sum(map(len, rendered["subject_alt_names"].values())) == len(expected.sans)
