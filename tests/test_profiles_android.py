"""Android certificate templates: the documented JSON shape and its refusals."""

import copy
import json
from pathlib import Path

import pytest

from scepproxyd.profiles import ParsedProfile, ProfileError, parse_profile, render_profile

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


def refused(content: bytes, message: str, field: str = "profile") -> None:
    with pytest.raises(ProfileError) as e:
        parse_profile(content)
    assert str(e.value) == message
    assert e.value.field == field


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
        " key_usage, extended_key_usage, subject_alt_names",
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


@pytest.mark.parametrize("names", [{"ip": ["10.0.0.1"]}, {"dns": "a.example"}, {"dns": [""]}, []])
def test_bad_subject_alt_names(names):
    refused(
        variant(lambda t: t.update(subject_alt_names=names)),
        'template "subject_alt_names" must be an object with lists of strings under: dns, email, uri',
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
        (lambda t: t["subject_alt_names"].update(dns=["$FLEET_VAR_SCEP_RENEWAL_ID.example"]), "subject_alt_names.dns[0]"),
    ],
)
def test_variable_outside_its_fields(change, where):
    def move(t):
        t["subject"] = "CN=phone"
        change(t)

    refused(
        variant(move),
        "variable $FLEET_VAR_SCEP_RENEWAL_ID may only appear in scep.url, scep.challenge or subject (found in %s)"
        % (where,),
    )


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
