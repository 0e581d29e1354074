"""Apple .mobileconfig upload rules: each refusal has its own exact message.

Refused variants are built from the good Fleet sample, so each test changes
one thing and shows which rule catches it.
"""

import copy
import plistlib
from pathlib import Path

import pytest

from scepproxyd.profiles import parse_profile
from support.profiles import refused

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
GOOD_BYTES = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes()
GOOD = plistlib.loads(GOOD_BYTES)

CHALLENGE = "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME"
URL = "$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_CA_NAME"
RENEWAL_ID = "$FLEET_VAR_SCEP_RENEWAL_ID"
HIDDEN = (
    "variable %s must be written as plain text in a <string> value,"
    " not in a comment, CDATA section or character reference"
)


def variant(change) -> bytes:
    """The good sample after ``change(profile, scep_payload, scep_fields)``."""
    profile = copy.deepcopy(GOOD)
    scep = profile["PayloadContent"][0]
    change(profile, scep, scep["PayloadContent"])
    return plistlib.dumps(profile)


def test_fields_directly_in_the_payload_accepted():
    def flatten(profile, scep, fields):
        del scep["PayloadContent"]
        scep.update(fields)

    parsed = parse_profile(variant(flatten))
    assert parsed.ca_name == "CA_NAME"
    assert len(parsed.variables) == 3


def test_name_falls_back_to_identifier():
    parsed = parse_profile(variant(lambda p, s, f: p.pop("PayloadDisplayName")))
    assert (parsed.name, parsed.identifier) == ("Fleet.WiFi", "Fleet.WiFi")


def test_alias_and_oid_subject_types_accepted():
    def change(profile, scep, fields):
        fields["Subject"] = [[["2.5.4.3", "device"]], [["2.5.4.11", "${FLEET_VAR_CERTIFICATE_RENEWAL_ID}"]]]

    assert "FLEET_VAR_CERTIFICATE_RENEWAL_ID" in parse_profile(variant(change)).variables


def test_braces_sample_accepted_once_it_has_a_renewal_id():
    braces = (FIXTURES / "fleet-custom-scep-braces.mobileconfig").read_bytes()
    fixed = braces.replace(b"%SerialNumber% WIFI", b"%SerialNumber% ${FLEET_VAR_SCEP_RENEWAL_ID}")
    parsed = parse_profile(fixed)
    assert (parsed.ca_name, parsed.identifier, parsed.name) == (
        "Test_SCEP",
        "Fleet.custom.SCEP",
        "SCEP proxy cert",
    )


# -- rule 1: a valid XML plist dictionary with PayloadContent -------------------


def test_bad_xml_refused_with_the_parser_reason():
    refused(GOOD_BYTES[:200], "profile is not a valid XML plist: no element found: line 5, column 29")


def test_bad_plist_value_refused_with_the_parser_reason():
    refused(
        GOOD_BYTES.replace(b"<integer>5</integer>", b"<integer>five</integer>"),
        "profile is not a valid XML plist: invalid literal for int() with base 10: 'five'",
    )


def test_entity_declarations_refused():
    content = GOOD_BYTES.replace(
        b'PropertyList-1.0.dtd">', b'PropertyList-1.0.dtd" [<!ENTITY x "y">]>'
    )
    refused(content, "profile is not a valid XML plist: XML entity declarations are not supported in plist files")


@pytest.mark.parametrize(
    "content",
    [
        b'<?xml version="1.0"?><plist><array/></plist>',
        b"<plist><dict><key>PayloadContent</key><dict/></dict></plist>",
        b"<plist></plist>",
    ],
)
def test_not_a_profile_dictionary(content):
    refused(content, "profile must be a plist dictionary with a PayloadContent array")


def test_payload_that_is_not_a_dictionary():
    refused(
        variant(lambda p, s, f: p["PayloadContent"].append("oops")),
        "PayloadContent item 2 is not a dictionary",
    )


def test_missing_identifier():
    refused(
        variant(lambda p, s, f: p.pop("PayloadIdentifier")),
        "profile has no PayloadIdentifier; devices need it to install and replace the profile",
        "PayloadIdentifier",
    )


def test_other_encodings_refused():
    refused(
        GOOD_BYTES.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'),
        "profile declares encoding ISO-8859-1; only UTF-8 is supported",
    )


def test_invalid_utf8_refused():
    refused(
        GOOD_BYTES.replace(b"WIFI SCEP", b"WIFI \xff SCEP"),
        "profile is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 1383: invalid start byte",
    )


# -- rules 2, 3 and 8: which SCEP payloads -------------------------------------


def test_variables_without_a_scep_payload():
    refused(
        variant(lambda p, s, f: s.update(PayloadType="com.apple.wifi.managed")),
        "profile uses custom SCEP variables but has no com.apple.security.scep payload",
    )


def test_no_scep_payload_and_no_variables():
    def change(profile, scep, fields):
        profile["PayloadContent"] = [{"PayloadType": "com.apple.wifi.managed", "SSID_STR": "corp"}]

    refused(
        variant(change),
        "profile has no com.apple.security.scep payload; scepproxyd manages certificate profiles only",
    )


def test_two_scep_payloads():
    refused(
        variant(lambda p, s, f: p["PayloadContent"].append(copy.deepcopy(s))),
        "profile has 2 SCEP payloads; exactly one is allowed",
    )


def test_scep_payload_content_must_be_a_dictionary():
    def change(profile, scep, fields):
        scep["PayloadContent"] = [fields]

    refused(variant(change), "SCEP payload's PayloadContent must be a dictionary", "PayloadContent")


# -- rule 4: Challenge and URL are exactly the variables, for one CA ------------


@pytest.mark.parametrize("value", ["static-secret", "prefix" + CHALLENGE, CHALLENGE + " ", None, URL])
def test_challenge_must_be_exactly_the_variable(value):
    def change(profile, scep, fields):
        if value is None:
            del fields["Challenge"]
        else:
            fields["Challenge"] = value
        if value == URL:
            fields["URL"] = "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME"

    refused(variant(change), "SCEP payload's Challenge must be $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_<CA>", "Challenge")


def test_challenge_of_the_wrong_type():
    refused(
        variant(lambda p, s, f: f.update(Challenge=42)),
        "SCEP payload's Challenge must be $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_<CA>",
        "Challenge",
    )


@pytest.mark.parametrize("value", ["https://ca.example/scep", URL + "/pkiclient.exe", None])
def test_url_must_be_exactly_the_variable(value):
    def change(profile, scep, fields):
        if value is None:
            del fields["URL"]
        else:
            fields["URL"] = value

    refused(variant(change), "SCEP payload's URL must be $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_<CA>", "URL")


def test_mismatched_ca_names():
    refused(
        variant(lambda p, s, f: f.update(URL="${FLEET_VAR_CUSTOM_SCEP_PROXY_URL_OTHER}")),
        "Challenge names CA 'CA_NAME' but URL names CA 'OTHER'",
        "URL",
    )


def test_second_ca_elsewhere_in_the_payload():
    def change(profile, scep, fields):
        fields["Subject"][1][0][1] = "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_OTHER"

    refused(
        variant(change),
        "variable $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_OTHER may only be the whole value"
        " of the SCEP payload's Challenge",
    )


# -- rule 5: renewal ID in the Subject's CN or OU -------------------------------

RENEWAL_MESSAGE = "SCEP payload's Subject must contain $FLEET_VAR_SCEP_RENEWAL_ID in its CN or OU"


@pytest.mark.parametrize(
    "subject",
    [
        [[["CN", "device"]], [["O", RENEWAL_ID]]],
        [[["CN", "device"]]],
        [[[RENEWAL_ID, "device"]]],
    ],
)
def test_renewal_id_outside_cn_or_ou(subject):
    refused(variant(lambda p, s, f: f.update(Subject=subject)), RENEWAL_MESSAGE, "Subject")


def test_renewal_id_elsewhere_in_the_scep_payload():
    def change(profile, scep, fields):
        fields["Subject"] = [[["CN", "device"]]]
        scep["PayloadDescription"] = "renews as " + RENEWAL_ID

    refused(variant(change), RENEWAL_MESSAGE, "Subject")


def test_no_subject():
    refused(variant(lambda p, s, f: f.pop("Subject")), RENEWAL_MESSAGE, "Subject")


@pytest.mark.parametrize(
    "subject",
    ["CN=" + RENEWAL_ID, [["CN", RENEWAL_ID]], [[["CN"]]], [[["CN", RENEWAL_ID, "x"]]], [[["CN", 5]]]],
)
def test_malformed_subject(subject):
    refused(
        variant(lambda p, s, f: f.update(Subject=subject)),
        "SCEP payload's Subject must be an array of RDNs, each an array of [type, value] string pairs",
        "Subject",
    )


# -- rules 6 and 7: once each, and only inside the SCEP payload ----------------


def test_duplicated_variable():
    def change(profile, scep, fields):
        fields["Subject"][1][0][1] = "again " + RENEWAL_ID

    refused(variant(change), "variable $FLEET_VAR_SCEP_RENEWAL_ID appears 2 times; each may appear at most once")


def test_both_renewal_id_spellings():
    def change(profile, scep, fields):
        fields["Subject"][1][0][1] = "${FLEET_VAR_CERTIFICATE_RENEWAL_ID}"

    refused(
        variant(change),
        "variables $FLEET_VAR_SCEP_RENEWAL_ID and $FLEET_VAR_CERTIFICATE_RENEWAL_ID are the same variable;"
        " use one of them, once",
    )


def test_challenge_copied_outside_the_payload_is_a_duplicate():
    refused(
        variant(lambda p, s, f: p.update(PayloadDescription=CHALLENGE)),
        "variable $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME appears 2 times; each may appear at most once",
    )


def test_variable_outside_the_scep_payload():
    def change(profile, scep, fields):
        fields["Subject"] = [[["CN", "device"]]]
        profile["PayloadDescription"] = "cert " + RENEWAL_ID

    refused(variant(change), "variable $FLEET_VAR_SCEP_RENEWAL_ID is outside the SCEP payload")


def test_variable_in_another_payload():
    def change(profile, scep, fields):
        del fields["Challenge"]
        profile["PayloadContent"].append({"PayloadType": "com.apple.wifi.managed", "Password": CHALLENGE})

    refused(variant(change), "variable $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME is outside the SCEP payload")


def test_variable_in_a_key():
    def outside(profile, scep, fields):
        fields["Subject"] = [[["CN", "device"]]]
        profile["${FLEET_VAR_SCEP_RENEWAL_ID}"] = 1

    def inside(profile, scep, fields):
        fields["Subject"] = [[["CN", "device"]]]
        fields["${FLEET_VAR_SCEP_RENEWAL_ID}"] = 1

    refused(variant(outside), "variable $FLEET_VAR_SCEP_RENEWAL_ID is outside the SCEP payload")
    refused(variant(inside), RENEWAL_MESSAGE, "Subject")


def test_unknown_variable():
    refused(
        variant(lambda p, s, f: s.update(PayloadDescription="for $FLEET_VAR_HOST_NICKNAME")),
        "unknown variable $FLEET_VAR_HOST_NICKNAME",
    )


def test_typo_in_a_known_variable():
    refused(
        GOOD_BYTES.replace(b"$FLEET_VAR_SCEP_RENEWAL_ID", b"$FLEET_VAR_SCEP_RENEWALID"),
        "unknown variable $FLEET_VAR_SCEP_RENEWALID",
    )


# -- the XML text and the parsed plist must agree -------------------------------


def test_variable_in_a_comment():
    content = GOOD_BYTES.replace(b"<dict>", b"<dict><!-- " + CHALLENGE.encode() + b" -->", 1)
    refused(content, HIDDEN % CHALLENGE)


def test_unknown_variable_in_a_comment():
    refused(GOOD_BYTES.replace(b"<dict>", b"<dict><!-- $FLEET_VAR_OOPS -->", 1), "unknown variable $FLEET_VAR_OOPS")


def test_variable_in_cdata():
    content = GOOD_BYTES.replace(
        URL.encode(), b"<![CDATA[" + URL.encode() + b"]]>"
    )
    refused(content, HIDDEN % URL)


def test_variable_spelled_with_character_references():
    content = GOOD_BYTES.replace(RENEWAL_ID.encode(), b"&#36;FLEET_VAR_SCEP_RENEWAL_ID")
    refused(content, HIDDEN % RENEWAL_ID)


# -- what plistlib would keep quietly: repeated keys, a second top level --------

STATIC_FIRST = (
    b"<key>Challenge</key>\n             <string>static-secret</string>\n"
    b"             <key>Challenge</key>"
)


def test_static_challenge_hidden_behind_a_repeated_key():
    content = GOOD_BYTES.replace(b"<key>Challenge</key>", STATIC_FIRST, 1)
    assert plistlib.loads(content)["PayloadContent"][0]["PayloadContent"]["Challenge"] == CHALLENGE
    refused(
        content,
        'key "Challenge" appears more than once in the dictionary at PayloadContent > item 1 > PayloadContent;'
        " each key may appear only once in a dictionary",
    )


def test_repeated_key_at_the_top_level():
    content = GOOD_BYTES.replace(
        b"<key>PayloadIdentifier</key>\n    <string>Fleet.WiFi</string>",
        b"<key>PayloadIdentifier</key><string>a</string><key>PayloadIdentifier</key><string>Fleet.WiFi</string>",
    )
    refused(
        content,
        'key "PayloadIdentifier" appears more than once in the top-level dictionary;'
        " each key may appear only once in a dictionary",
    )


def test_repeated_key_spelled_with_a_character_reference_is_the_same_key():
    content = GOOD_BYTES.replace(b"<key>Challenge</key>", STATIC_FIRST.replace(b"<key>Ch", b"<key>&#67;h", 1), 1)
    refused(
        content,
        'key "Challenge" appears more than once in the dictionary at PayloadContent > item 1 > PayloadContent;'
        " each key may appear only once in a dictionary",
    )


def test_repeated_key_whose_value_is_a_dictionary():
    def change(profile, scep, fields):
        profile["PayloadContent"].append({"PayloadType": "com.apple.wifi.managed", "EAPClientConfiguration": {}})

    content = variant(change).replace(
        b"<key>EAPClientConfiguration</key>",
        b"<key>EAPClientConfiguration</key><dict/><key>EAPClientConfiguration</key>",
    )
    refused(
        content,
        'key "EAPClientConfiguration" appears more than once in the dictionary at PayloadContent > item 2;'
        " each key may appear only once in a dictionary",
    )


def test_repeated_key_deep_down_is_named_with_a_shortened_path():
    nested = {"PayloadType": "com.example.deep"}
    inner = nested
    for level in range(12):
        inner["Level%d" % (level,)] = [{}]
        inner = inner["Level%d" % (level,)][0]
    inner["Leaf"] = "x"
    content = variant(lambda p, s, f: p["PayloadContent"].append(nested))
    content = content.replace(b"<key>Leaf</key>", b"<key>Leaf</key><string>y</string><key>Leaf</key>")
    refused(
        content,
        'key "Leaf" appears more than once in the dictionary at PayloadContent > item 2 > ... > item 1 > Level10'
        " > item 1 > Level11 > item 1; each key may appear only once in a dictionary",
    )


def test_long_repeated_key_is_shortened_in_the_message():
    key = "K" * 500
    content = GOOD_BYTES.replace(
        b"<key>PayloadVersion</key>\n    <integer>1</integer>\n</dict>",
        b"<key>%s</key><true/><key>%s</key><false/></dict>" % (key.encode(), key.encode()),
    )
    refused(
        content,
        'key "%s..." appears more than once in the top-level dictionary;'
        " each key may appear only once in a dictionary" % ("K" * 77,),
    )


def test_repeated_keys_in_separate_dictionaries_are_fine():
    # Every payload has its own PayloadType, PayloadIdentifier, ...: only a repeat within one dictionary counts.
    parsed = parse_profile(
        variant(lambda p, s, f: p["PayloadContent"].append({"PayloadType": "com.apple.wifi.managed",
                                                            "PayloadIdentifier": "wifi"}))
    )
    assert parsed.identifier == "Fleet.WiFi"


def test_second_top_level_dictionary():
    decoy = GOOD_BYTES.split(b"<plist version=\"1.0\">")[1].split(b"</plist>")[0]
    static = decoy.replace(CHALLENGE.encode(), b"static-secret")
    content = GOOD_BYTES.replace(b"<plist version=\"1.0\">", b"<plist version=\"1.0\">" + static, 1)
    assert plistlib.loads(content) == GOOD  # plistlib keeps the last
    refused(
        content,
        "profile has more than one top-level value in its <plist>; devices and scepproxyd could"
        " read different ones, so the profile must be a single dictionary",
    )


# -- only one SCEP payload, wherever it is written -------------------------------

NESTED = (
    "profile has a com.apple.security.scep payload at %s; a profile may have one SCEP payload,"
    " directly in its top-level PayloadContent"
)


def test_scep_payload_nested_in_another_payload():
    def change(profile, scep, fields):
        extra = copy.deepcopy(scep)
        extra["PayloadContent"]["Challenge"] = "static-secret"
        extra["PayloadContent"]["URL"] = "https://ca.example/scep"
        extra["PayloadContent"]["Subject"] = [[["CN", "device"]]]
        profile["PayloadContent"].append({"PayloadType": "com.apple.wifi.managed", "Extra": [extra]})

    refused(variant(change), NESTED % ("PayloadContent > item 2 > Extra > item 1",))


def test_scep_payload_nested_inside_the_scep_payload():
    def change(profile, scep, fields):
        fields["Nested"] = {"PayloadType": "com.apple.security.scep", "Challenge": "static-secret"}

    refused(variant(change), NESTED % ("PayloadContent > item 1 > PayloadContent > Nested",))


def test_only_scep_payload_nested_is_refused_where_it_is():
    def change(profile, scep, fields):
        profile["PayloadContent"] = [{"PayloadType": "com.apple.wifi.managed", "PayloadContent": [scep]}]

    refused(variant(change), NESTED % ("PayloadContent > item 1 > PayloadContent > item 1",))


def test_profile_dictionary_typed_as_a_scep_payload():
    refused(variant(lambda p, s, f: p.update(PayloadType="com.apple.security.scep")), NESTED % ("the top level",))
