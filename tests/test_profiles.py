"""Uploading profiles: kind detection, the sample profiles, and variable names.

Apple rules are in test_profiles_apple.py, Android templates in
test_profiles_android.py, rendering in test_profiles_render.py.
"""

import datetime
import plistlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from scepproxyd.profiles import ParsedProfile, ProfileError, parse_profile
from scepproxyd.profiles import variables

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
GOOD = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes()

SIGNED = "profile is signed (CMS); upload it unsigned: signed profiles cannot be rendered"
NEITHER = (
    "profile is neither an Apple .mobileconfig (XML plist), an Android certificate template (JSON)"
    " nor a Windows SyncML profile (<Add>, <Replace> and <Exec> commands)"
)
NO_PROXY_VARIABLES = (
    "SCEP payload uses no proxy variables: scepproxyd only delivers SCEP profiles that enroll"
    " through its proxy with one-time challenges (a fixed URL and static challenge would be"
    " stored in plain text and bypass the proxy). Set URL to $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_<CA>,"
    " Challenge to $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_<CA>, and put $FLEET_VAR_SCEP_RENEWAL_ID in"
    " the Subject's CN or OU"
)


def refusal(content: bytes) -> ProfileError:
    with pytest.raises(ProfileError) as e:
        parse_profile(content)
    return e.value


def sign(content: bytes, encoding: serialization.Encoding) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "profile signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(cert, key, hashes.SHA256())
        .sign(encoding, [])
    )


# -- the sample profiles (tests/fixtures/profiles) ---------------------------


def test_fleet_sample_uploads_cleanly():
    assert parse_profile(GOOD, "application/x-apple-aspen-config") == ParsedProfile(
        kind="mobileconfig",
        name="SCEP proxy cert",
        identifier="Fleet.WiFi",
        ca_name="CA_NAME",
        variables=(
            "FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME",
            "FLEET_VAR_CUSTOM_SCEP_PROXY_URL_CA_NAME",
            "FLEET_VAR_SCEP_RENEWAL_ID",
        ),
    )


def test_braces_sample_refused_for_missing_renewal_id():
    error = refusal((FIXTURES / "fleet-custom-scep-braces.mobileconfig").read_bytes())
    assert str(error) == (
        "SCEP payload's Subject must contain $FLEET_VAR_SCEP_RENEWAL_ID in its CN or OU"
    )
    assert error.field == "Subject"


def test_static_challenge_sample_refused_as_bypassing_the_proxy():
    error = refusal((FIXTURES / "ucm-static-challenge.mobileconfig").read_bytes())
    assert str(error) == NO_PROXY_VARIABLES
    assert error.field == "profile"


# -- detection -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", [serialization.Encoding.DER, serialization.Encoding.PEM])
def test_signed_profile_refused(encoding):
    assert str(refusal(sign(GOOD, encoding))) == SIGNED


def test_binary_plist_refused_with_conversion_hint():
    binary = plistlib.dumps(plistlib.loads(GOOD), fmt=plistlib.FMT_BINARY)
    assert str(refusal(binary)) == (
        "profile is a binary plist; convert it to XML (plutil -convert xml1 FILE) and upload it again"
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b"\x00\x01garbage\xff\xfe",
        b"hello world",
        b"[1, 2, 3]",
        b"0\x82\x01\x00not really DER",
        b"-----BEGIN PKCS7-----\nnot base64\n-----END PKCS7-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
    ],
)
def test_neither_kind_refused(content):
    assert str(refusal(content)) == NEITHER


def test_bom_and_leading_whitespace_still_detected():
    assert parse_profile(b"\xef\xbb\xbf" + GOOD).ca_name == "CA_NAME"
    android = (FIXTURES / "android-corp-wifi.json").read_bytes()
    assert parse_profile(b"\n  " + android, "text/plain").kind == "android_template"


def test_content_type_does_not_override_the_bytes():
    assert parse_profile(GOOD, "application/json").kind == "mobileconfig"


def test_deep_nesting_refused():
    deep = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
    assert str(refusal(deep)) == "profile is nested too deeply"


def test_profile_error_is_a_value_error_with_a_field():
    error = ProfileError("why", "URL")
    assert isinstance(error, ValueError)
    assert (str(error), error.field) == ("why", "URL")
    assert ProfileError("why").field == "profile"


# -- variable names ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name, kind, ca_name, whole",
    [
        ("$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME", "CUSTOM_SCEP_CHALLENGE_CA_NAME", "challenge", "CA_NAME", True),
        ("${FLEET_VAR_CUSTOM_SCEP_PROXY_URL_A}_tail", "CUSTOM_SCEP_PROXY_URL_A", "proxy_url", "A", False),
        ("${FLEET_VAR_CUSTOM_SCEP_PROXY_URL_A}", "CUSTOM_SCEP_PROXY_URL_A", "proxy_url", "A", True),
        ("x $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_ca9-tail", "CUSTOM_SCEP_PROXY_URL_ca9", "proxy_url", "ca9", False),
        ("%SerialNumber% WIFI $FLEET_VAR_SCEP_RENEWAL_ID", "SCEP_RENEWAL_ID", "renewal_id", None, False),
        ("${FLEET_VAR_CERTIFICATE_RENEWAL_ID}", "CERTIFICATE_RENEWAL_ID", "renewal_id", None, True),
    ],
)
def test_variable_forms(text, name, kind, ca_name, whole):
    [found] = variables.find(text)
    assert found.variable == variables.Variable("FLEET_VAR_" + name, kind, ca_name)
    assert found.whole is whole


def test_device_substitutions_and_other_dollars_are_not_variables():
    assert variables.find("%SerialNumber% $HOME ${USER} $fleet_var_x 5$") == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("$FLEET_VAR_X", "unknown variable $FLEET_VAR_X"),
        ("$FLEET_VAR_", "unknown variable $FLEET_VAR_"),
        ("$FLEET_VAR_SCEP_RENEWAL_IDS", "unknown variable $FLEET_VAR_SCEP_RENEWAL_IDS"),
        ("${FLEET_VAR_NDES_SCEP_CHALLENGE}", "unknown variable $FLEET_VAR_NDES_SCEP_CHALLENGE"),
        ("${FLEET_VAR_SCEP_RENEWAL_ID", "variable ${FLEET_VAR_SCEP_RENEWAL_ID has no closing brace"),
        ("${FLEET_VAR_CUSTOM_SCEP_PROXY_URL_A-B}", "variable ${FLEET_VAR_CUSTOM_SCEP_PROXY_URL_A has no closing brace"),
        (
            "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_",
            "variable $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_ must end with a CA name of 1-255 letters, digits or underscores",
        ),
        (
            "$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_" + "A" * 256,
            "variable $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_%s must end with a CA name of 1-255 letters, digits or underscores"
            % ("A" * 256,),
        ),
    ],
)
def test_bad_variables_refused(text, message):
    with pytest.raises(ProfileError) as e:
        variables.find(text)
    assert str(e.value) == message


def test_longest_ca_name_accepted():
    [found] = variables.find("$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_" + "A" * 255)
    assert found.variable.ca_name == "A" * 255


def test_no_other_module_spells_variable_names():
    package = Path(variables.__file__).parents[1]
    spelled = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path != Path(variables.__file__) and "FLEET_VAR" in path.read_text()
    ]
    assert spelled == []


@settings(max_examples=300)
@given(
    st.sampled_from([b"", b"<?xml", b"<plist>", b"{", b"bplist00", b"0\x82", b"-----BEGIN PKCS7-----\n"]),
    st.binary(max_size=300),
)
def test_hostile_uploads_refused_with_a_reason(prefix, rest):
    try:
        parse_profile(prefix + rest)
    except ProfileError as e:
        assert str(e)


@settings(max_examples=300)
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8))
def test_mangled_good_profile_refused_with_a_reason(position, junk):
    try:
        parse_profile(GOOD[:position] + junk + GOOD[position + len(junk):])
    except ProfileError as e:
        assert str(e)


def test_contradiction_refusals_are_in_the_documented_list():
    # The fixed parts of each message; the tests of each rule check the whole message.
    docs = (Path(__file__).parents[1] / "docs" / "profiles.md").read_text()
    for fragment in [
        'key "K" appears more than once in the dictionary at PayloadContent > item 1 > PayloadContent;'
        " each key may appear only once in a dictionary",
        "`in the top-level dictionary`",
        "profile has more than one top-level value in its <plist>; devices and scepproxyd could read"
        " different ones, so the profile must be a single dictionary",
        "profile has a com.apple.security.scep payload at PATH; a profile may have one SCEP payload,"
        " directly in its top-level PayloadContent",
        'template has duplicate key "K"',
        "PayloadIdentifier 'X' is already used by profile UUID (NAME); give this one another"
        " PayloadIdentifier, or delete that profile first",
        "template name 'X' is already used by profile UUID (NAME); give this one another template name,"
        " or delete that profile first",
        "share the identifier X: a host's report of it installed verifies each of them; delete all but one",
    ]:
        assert fragment in docs
