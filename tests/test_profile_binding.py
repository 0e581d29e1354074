"""A CSR bound to what its host profile rendered: profiles -> expected requests -> the CA's policy.

Uses the Fleet-shaped sample profile (tests/fixtures/profiles) whose subject
is CN ``%SerialNumber% WIFI $FLEET_VAR_SCEP_RENEWAL_ID`` and OU ``FLEET
DEVICE MANAGEMENT``, and the Android sample template.
"""

import functools
import ipaddress
import json
import plistlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.certs import csr, name, upn
from scepproxyd.ca.csr_policy import KeyPolicy, Refusal, SanPolicy, refusal
from scepproxyd.profiles import ProfileError, variables
from scepproxyd.profiles.binding import HostFacts, expected_request, matcher

PROFILES = Path(__file__).parent / "fixtures" / "profiles"
FLEET = (PROFILES / "fleet-custom-scep-apple.mobileconfig").read_bytes()
ANDROID = (PROFILES / "android-corp-wifi.json").read_bytes()
RENEWAL_ID = "sp-0123456789abcdef"
OTHER_RENEWAL_ID = "sp-fedcba9876543210"
HOST = HostFacts(uuid="A1B2C3D4-0000-4000-8000-000000000001", serial="C02XK1ABJG5H", platform="macos")
CA_SUBJECT = name([(NameOID.COMMON_NAME, "scepproxyd CA")])
CN, OU, O = NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.ORGANIZATION_NAME
FLEET_OU = (OU, "FLEET DEVICE MANAGEMENT")
RENDERED_CN = "'%%SerialNumber%% WIFI %s' with %%SerialNumber%% = 'C02XK1ABJG5H'" % (RENEWAL_ID,)


@functools.cache
def rsa_key(bits=2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(curve=ec.SECP256R1):
    return ec.generate_private_key(curve())


def fleet(**fields) -> bytes:
    """The Fleet sample with its SCEP payload's fields changed (None removes one)."""
    plist = plistlib.loads(FLEET)
    content = plist["PayloadContent"][0]["PayloadContent"]
    for key, value in fields.items():
        key = key.replace("_", " ") if key == "Key_Type" else key
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML)


def judge(request, profile=FLEET, kind="mobileconfig", host=HOST, renewal_id=RENEWAL_ID,
          san_policy=SanPolicy(), key_policy=KeyPolicy()):
    expected = expected_request(kind, profile, renewal_id=renewal_id, host=host)
    return refusal(request, key_policy=key_policy, san_policy=san_policy, ca_subject=CA_SUBJECT, expected=expected)


def fleet_subject(cn="C02XK1ABJG5H WIFI " + RENEWAL_ID, *more):
    return name([(CN, cn)], [FLEET_OU], *more)


# -- what the profile renders ------------------------------------------------------------------


def test_fleet_sample_expected_request():
    expected = expected_request("mobileconfig", FLEET, renewal_id=RENEWAL_ID, host=HOST)
    assert [[oid for oid, _ in rdn] for rdn in expected.subject] == [["2.5.4.3"], ["2.5.4.11"]]
    assert expected.subject[0][0][1].describe() == RENDERED_CN
    assert expected.subject[1][0][1].describe() == "'FLEET DEVICE MANAGEMENT'"
    assert (expected.sans, expected.key_type, expected.min_key_bits) == ((), "rsa", 2048)


def test_android_sample_expected_request():
    """The template's DN string is written last RDN first (RFC 4514); escapes are undone."""
    expected = expected_request("android_template", ANDROID, renewal_id=RENEWAL_ID, host=HOST)
    assert [rdn[0][0] for rdn in expected.subject] == ["2.5.4.10", "2.5.4.11", "2.5.4.3"]
    assert [rdn[0][1].describe() for rdn in expected.subject] == ["'Example, Inc.'", "'Devices'", "'%s'" % RENEWAL_ID]
    assert (expected.sans, expected.key_type, expected.min_key_bits) == ((), "rsa", 2048)


def test_profile_sans_and_key():
    profile = fleet(SubjectAltName={"dNSName": ["%HostName%.corp.example", "wifi.corp.example"],
                                    "ntPrincipalName": "%SerialNumber%@corp.example",
                                    "rfc822Name": "it@corp.example", "uniformResourceIdentifier": "urn:dev:%UDID%"},
                    Keysize=4096, Key_Type=None)
    expected = expected_request("mobileconfig", profile, renewal_id=RENEWAL_ID, host=HOST)
    assert [(t, m.describe()) for t, m in expected.sans] == [
        ("dns", "'%HostName%.corp.example'"), ("dns", "'wifi.corp.example'"),
        ("upn", "'%SerialNumber%@corp.example' with %SerialNumber% = 'C02XK1ABJG5H'"),
        ("email", "'it@corp.example'"), ("uri", "'urn:dev:%UDID%'"),
    ]
    assert (expected.key_type, expected.min_key_bits) == (None, 4096)


@pytest.mark.parametrize("profile, message", [
    (fleet(Subject=[[["CN", "x"]], [["Colour", "red"]]]),
     "SCEP payload's Subject has attribute type 'Colour', which scepproxyd cannot check; use one of"),
    (fleet(Subject=[["CN", "x"]]), "SCEP payload's Subject must be an array of RDNs"),
    (fleet(SubjectAltName={"otherName": "x"}),
     "SCEP payload's SubjectAltName has key 'otherName', which scepproxyd cannot check; use dNSName"),
    (fleet(SubjectAltName={"dNSName": 7}), "SCEP payload's SubjectAltName dNSName must be a string or an array"),
    (fleet(Keysize="big"), "SCEP payload's Keysize must be a whole number of bits"),
    (fleet(Key_Type="DSA"), "SCEP payload's Key Type must be RSA or ECSECPrimeRandom"),
])
def test_profiles_the_ca_cannot_check(profile, message):
    with pytest.raises(ProfileError) as info:
        expected_request("mobileconfig", profile, renewal_id=RENEWAL_ID, host=HOST)
    assert str(info.value).startswith(message)


def test_subject_types_by_name_or_oid():
    profile = fleet(Subject=[[["c", "DE"]], [["0.9.2342.19200300.100.1.25", "corp"]],
                             [["E", "it@corp.example"], ["UID", "%UDID%"]]])
    expected = expected_request("mobileconfig", profile, renewal_id=RENEWAL_ID, host=HOST)
    assert [[oid for oid, _ in rdn] for rdn in expected.subject] == [
        ["2.5.4.6"], ["0.9.2342.19200300.100.1.25"], ["1.2.840.113549.1.9.1", "0.9.2342.19200300.100.1.1"]]


# -- the profile's subject, for this host ---------------------------------------------------------------


def test_right_subject_accepted():
    assert judge(csr(rsa_key(), fleet_subject())) is None


def test_serial_compared_ignoring_case():
    assert judge(csr(rsa_key(), fleet_subject("c02xk1abjg5h WIFI " + RENEWAL_ID))) is None


def test_another_serial_refused():
    assert judge(csr(rsa_key(), fleet_subject("C02OTHERSERL WIFI " + RENEWAL_ID))) == Refusal(
        "badRequest",
        "subject CN 'C02OTHERSERL WIFI %s' is not what the profile renders (%s)" % (RENEWAL_ID, RENDERED_CN),
    )


def test_unknown_serial_is_any_non_empty_text():
    host = HostFacts(uuid=HOST.uuid, serial=None, platform="macos")
    assert judge(csr(rsa_key(), fleet_subject("ANYSERIAL WIFI " + RENEWAL_ID)), host=host) is None
    assert judge(csr(rsa_key(), fleet_subject(" WIFI " + RENEWAL_ID)), host=host) == Refusal(
        "badRequest",
        "subject CN ' WIFI %s' is not what the profile renders ('%%SerialNumber%% WIFI %s')" % (RENEWAL_ID, RENEWAL_ID),
    )
    # a placeholder never takes a DN separator, so it cannot smuggle in structure
    assert judge(csr(rsa_key(), fleet_subject("A,OU=x WIFI " + RENEWAL_ID)), host=host).fail_info == "badRequest"


@pytest.mark.parametrize("cn", [
    "C02XK1ABJG5H WIFI",
    "C02XK1ABJG5H WIFI " + OTHER_RENEWAL_ID,
    "C02XK1ABJG5H wifi " + RENEWAL_ID,
    "C02XK1ABJG5H WIFI " + RENEWAL_ID + " ",
    "C02XK1ABJG5H WIFI $FLEET_VAR_SCEP_RENEWAL_ID",
], ids=["no-renewal-id", "other-hosts-renewal-id", "case", "trailing-space", "unrendered"])
def test_wrong_cn_refused(cn):
    assert judge(csr(rsa_key(), fleet_subject(cn))) == Refusal(
        "badRequest", "subject CN '%s' is not what the profile renders (%s)" % (cn, RENDERED_CN))


def test_renewal_id_of_this_host_profile_only():
    """The same CSR is right for the host profile whose renewal ID it carries, and only for it."""
    request = csr(rsa_key(), fleet_subject("C02XK1ABJG5H WIFI " + OTHER_RENEWAL_ID))
    assert judge(request, renewal_id=OTHER_RENEWAL_ID) is None
    assert judge(request, renewal_id=RENEWAL_ID).reason.startswith("subject CN ")


def test_wrong_ou_refused():
    request = csr(rsa_key(), name([(CN, "C02XK1ABJG5H WIFI " + RENEWAL_ID)], [(OU, "Domain Admins")]))
    assert judge(request).reason == (
        "subject OU 'Domain Admins' is not what the profile renders ('FLEET DEVICE MANAGEMENT')")


@pytest.mark.parametrize("subject, reason", [
    (lambda: name([(CN, "C02XK1ABJG5H WIFI " + RENEWAL_ID)]), "subject lacks OU, which the profile renders"),
    (lambda: fleet_subject("C02XK1ABJG5H WIFI " + RENEWAL_ID, [(O, "Evil")]),
     "subject has O, which the profile does not render"),
    (lambda: name([(CN, "C02XK1ABJG5H WIFI " + RENEWAL_ID)], [(O, "Evil")]),
     "subject lacks OU, which the profile renders; subject has O, which the profile does not render"),
    (lambda: name([FLEET_OU], [(CN, "C02XK1ABJG5H WIFI " + RENEWAL_ID)]),
     "subject attributes are in the order OU, CN; the profile renders CN, OU"),
    (lambda: name([(CN, "C02XK1ABJG5H WIFI " + RENEWAL_ID), FLEET_OU]),
     "subject attributes are in the order CN+OU; the profile renders CN, OU"),
    (lambda: fleet_subject("C02XK1ABJG5H WIFI " + RENEWAL_ID, [FLEET_OU]),
     "subject has OU, which the profile does not render"),
], ids=["missing", "extra", "swapped-type", "reordered", "merged-rdn", "repeated"])
def test_subject_shape_refused(subject, reason):
    assert judge(csr(rsa_key(), subject())) == Refusal("badRequest", reason)


def test_multi_valued_rdn_matched_in_any_order():
    profile = fleet(Subject=[[["CN", "%ComputerName%"], ["UID", "%SerialNumber%"]],
                             [["OU", "$FLEET_VAR_SCEP_RENEWAL_ID"]]])
    uid = NameOID.USER_ID
    good = name([(uid, "C02XK1ABJG5H"), (CN, "Ann's MacBook Pro")], [(OU, RENEWAL_ID)])
    assert judge(csr(rsa_key(), good), profile) is None
    bad = name([(uid, "C02OTHER"), (CN, "Ann's MacBook Pro")], [(OU, RENEWAL_ID)])
    assert judge(csr(rsa_key(), bad), profile).reason == (
        "subject UID 'C02OTHER' is not what the profile renders"
        " ('%SerialNumber%' with %SerialNumber% = 'C02XK1ABJG5H')")


def test_android_subject_bound():
    good = x509.Name.from_rfc4514_string("CN=%s,OU=Devices,O=Example\\, Inc." % (RENEWAL_ID,))
    assert judge(csr(rsa_key(), good), ANDROID, "android_template") is None
    written_order = name([(CN, RENEWAL_ID)], [(OU, "Devices")], [(O, "Example, Inc.")])
    assert judge(csr(rsa_key(), written_order), ANDROID, "android_template").reason == (
        "subject attributes are in the order CN, OU, O; the profile renders O, OU, CN")
    assert judge(csr(ec_key(), good), ANDROID, "android_template") == Refusal(
        "badAlg", "CSR key is EC secp256r1 but the profile asks for an RSA key")


# -- the profile's key --------------------------------------------------------------------------------


def test_key_smaller_than_keysize_refused():
    profile = fleet(Keysize=3072)
    assert judge(csr(rsa_key(2048), fleet_subject()), profile) == Refusal(
        "badAlg", "CSR key is RSA-2048 but the profile asks for at least 3072 bits")
    assert judge(csr(rsa_key(3072), fleet_subject()), profile) is None


def test_key_type_of_the_profile():
    assert judge(csr(ec_key(ec.SECP384R1), fleet_subject())) == Refusal(
        "badAlg", "CSR key is EC secp384r1 but the profile asks for an RSA key")
    ec_profile = fleet(Key_Type="ECSECPrimeRandom", Keysize=384)
    assert judge(csr(ec_key(ec.SECP384R1), fleet_subject()), ec_profile) is None
    assert judge(csr(ec_key(ec.SECP521R1), fleet_subject()), ec_profile) is None
    assert judge(csr(ec_key(ec.SECP256R1), fleet_subject()), ec_profile).reason == (
        "CSR key is EC secp256r1 but the profile asks for at least 384 bits")
    assert judge(csr(rsa_key(3072), fleet_subject()), ec_profile).reason == (
        "CSR key is RSA-3072 but the profile asks for an EC key")


def test_keysize_without_key_type_compares_strength():
    """Apple's default key type is RSA, so a bare Keysize is RSA bits; an EC key of that strength passes."""
    profile = fleet(Key_Type=None, Keysize=3072)
    assert judge(csr(ec_key(ec.SECP256R1), fleet_subject()), profile) is None
    assert judge(csr(rsa_key(2048), fleet_subject()), profile).reason == (
        "CSR key is RSA-2048 but the profile asks for at least 3072 bits")
    assert judge(csr(ec_key(ec.SECP256R1), fleet_subject()), fleet(Key_Type=None, Keysize=4096)).reason == (
        "CSR key is EC secp256r1 but the profile asks for at least 4096 bits")


def test_key_policy_applies_to_profile_bound_requests():
    assert judge(csr(rsa_key(1024), fleet_subject()), fleet(Keysize=1024)) == Refusal(
        "badAlg", "CSR key is RSA-1024; the CA requires RSA keys of at least 2048 bits ([ca] key_rsa_min_bits)")


# -- the profile's subjectAltNames ---------------------------------------------------------------------


SAN_PROFILE = fleet(SubjectAltName={"dNSName": "%HostName%.corp.example",
                                    "ntPrincipalName": "%SerialNumber%@corp.example"})
CORP = SanPolicy.from_patterns({"dns": r"[a-z0-9-]+\.corp\.example", "upn": r"[A-Z0-9]+@corp\.example"})


def test_rendered_sans_accepted_when_the_policy_allows_them():
    request = csr(rsa_key(), fleet_subject(), [x509.DNSName("anns-mac.corp.example"), upn("C02XK1ABJG5H@corp.example")])
    assert judge(request, SAN_PROFILE, san_policy=CORP) is None
    fewer = csr(rsa_key(), fleet_subject(), [x509.DNSName("anns-mac.corp.example")])
    assert judge(fewer, SAN_PROFILE, san_policy=CORP) is None


def test_rendered_sans_still_need_the_san_policy():
    request = csr(rsa_key(), fleet_subject(), [x509.DNSName("anns-mac.corp.example")])
    assert judge(request, SAN_PROFILE) == Refusal(
        "badRequest",
        "CSR asks for subjectAltName dns 'anns-mac.corp.example'; no dns names are issued ([ca] san_dns is not set)")


@pytest.mark.parametrize("sans, reason", [
    ([x509.DNSName("anns-mac.corp.example"), x509.DNSName("mail.corp.example")],
     "CSR asks for more subjectAltNames like dns 'mail.corp.example' than the profile renders"),
    ([x509.DNSName("*.corp.example")],
     "CSR asks for subjectAltName dns '*.corp.example', which the profile does not render"),
    ([x509.DNSName("anns-mac.evil.example")],
     "CSR asks for subjectAltName dns 'anns-mac.evil.example', which the profile does not render"),
    ([upn("C02OTHER@corp.example")],
     "CSR asks for subjectAltName upn 'C02OTHER@corp.example', which the profile does not render"),
    ([x509.RFC822Name("ceo@corp.example")],
     "CSR asks for subjectAltName email 'ceo@corp.example', which the profile does not render"),
], ids=["one-more-dns", "wildcard", "other-domain", "other-serial", "extra-type"])
def test_sans_the_profile_does_not_render_refused(sans, reason):
    everything = SanPolicy.from_patterns({t: ".*" for t in ("dns", "email", "uri", "ip", "upn")})
    assert judge(csr(rsa_key(), fleet_subject(), sans), SAN_PROFILE, san_policy=everything) == Refusal(
        "badRequest", reason)


def test_a_profile_without_sans_gets_none():
    everything = SanPolicy.from_patterns({"dns": ".*"})
    assert judge(csr(rsa_key(), fleet_subject(), [x509.DNSName("x.example")]), san_policy=everything).reason == (
        "CSR asks for subjectAltName dns 'x.example', which the profile does not render")


# -- matchers and variables ---------------------------------------------------------------------------------


def test_placeholders_and_separators():
    unknown = HostFacts(uuid="u", serial=None, platform="macos")
    subject = matcher("%ComputerName% WIFI %MACAddress%", renewal_id=RENEWAL_ID, host=unknown)
    assert subject.matches("Ann's MacBook Pro WIFI a4:83:e7:00:11:22")
    assert not subject.matches("Ann's MacBook Pro WIFI ")
    assert not subject.matches("a+b WIFI c")
    dns = matcher("%HostName%.corp.example", renewal_id=RENEWAL_ID, host=unknown, context="dns")
    assert dns.matches("anns-mac.corp.example") and dns.matches("a.b.corp.example")
    for refused in ("*.corp.example", ".corp.example", "a b.corp.example", "a/b.corp.example"):
        assert not dns.matches(refused)
    email = matcher("%ShortName%@corp.example", renewal_id=RENEWAL_ID, host=unknown, context="email")
    assert email.matches("ann@corp.example") and not email.matches("ann@evil.example@corp.example")


def test_host_uuid_is_not_assumed_for_hardware_ids():
    """%HardwareUUID% / %UDID% are the device's; the host UUID is only the admin's name for the host."""
    m = matcher("%HardwareUUID% %UDID%", renewal_id=RENEWAL_ID, host=HOST)
    assert m.matches("564D1E2A-0000-0000-0000-9F8E7D6C5B4A 00008030-001A2B3C4D5E6F70")
    assert m.describe() == "'%HardwareUUID% %UDID%'"


def test_adversarial_value_is_judged_without_backtracking():
    m = matcher("%A% x %B% x %C% x %D%", renewal_id=RENEWAL_ID, host=HOST)
    assert not m.matches("a x " * 5000 + ",")  # a backtracking regex would try every split
    assert m.matches("a x " * 5000 + "a")


def test_renewal_id_substitution():
    for spelled in ("$FLEET_VAR_SCEP_RENEWAL_ID", "${FLEET_VAR_SCEP_RENEWAL_ID}", "$FLEET_VAR_CERTIFICATE_RENEWAL_ID"):
        assert variables.substitute_renewal_id("CN %s!" % spelled, RENEWAL_ID) == "CN %s!" % RENEWAL_ID
    with pytest.raises(ProfileError, match="variable \\$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA cannot appear"):
        variables.substitute_renewal_id("$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA", RENEWAL_ID)
    assert variables.device_placeholders("%SerialNumber% 100% %ComputerName%") == [
        (0, 14, "SerialNumber"), (20, 34, "ComputerName")]
    assert variables.SERIAL_NUMBER in variables.DEVICE_PLACEHOLDERS


# -- property: a CSR built from what the profile renders always passes ------------------------------------------


_TYPES = {"CN": CN, "OU": OU, "O": O, "L": NameOID.LOCALITY_NAME, "UID": NameOID.USER_ID}
# Up to two UTF-8 bytes a character: three pieces of at most 10 stay within the 64 bytes a CN may hold.
_PRINTABLE = dict(categories=("L", "N", "P", "S"), include_characters=" ", exclude_characters="%$", max_codepoint=0x7FF)
_LITERAL = st.text(st.characters(**_PRINTABLE), min_size=1, max_size=10)
_FREE_VALUE = st.text(st.characters(**_PRINTABLE), min_size=1, max_size=10).filter(
    lambda text: not set(text) & set(',+=\\"<>;'))
_PIECE = st.one_of(
    st.tuples(st.just("literal"), _LITERAL),
    st.tuples(st.just("placeholder"), st.sampled_from(variables.DEVICE_PLACEHOLDERS + ("DeviceName",))),
    # braced: a bare $NAME would run into a following letter or digit
    st.tuples(st.just("renewal"),
              st.sampled_from(("${FLEET_VAR_SCEP_RENEWAL_ID}", "${FLEET_VAR_CERTIFICATE_RENEWAL_ID}"))),
)
_ATTRIBUTE = st.tuples(st.sampled_from(sorted(_TYPES)), st.lists(_PIECE, min_size=1, max_size=3))  # CN: 64 at most
_SUBJECT = st.lists(st.lists(_ATTRIBUTE, min_size=1, max_size=2, unique_by=lambda a: a[0]), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=_SUBJECT, serial=st.one_of(st.none(), st.from_regex(r"[A-Z0-9]{10,12}", fullmatch=True)),
       data=st.data())
def test_csr_built_from_the_rendered_subject_passes(subject, serial, data):
    """Whatever the profile's subject, the device that fills it in as told is accepted."""
    host = HostFacts(uuid=HOST.uuid, serial=serial, platform="macos")
    profile = fleet(Subject=[
        [[kind, "".join("%" + text + "%" if how == "placeholder" else text for how, text in pieces)]
         for kind, pieces in rdn] for rdn in subject
    ])
    rdns = []
    for rdn in subject:
        attributes = []
        for kind, pieces in rdn:
            value = ""
            for how, text in pieces:
                if how == "literal":
                    value += text
                elif how == "renewal":
                    value += RENEWAL_ID
                elif text == "SerialNumber" and serial:
                    value += data.draw(st.sampled_from((serial, serial.lower())))
                else:
                    value += data.draw(_FREE_VALUE)
            attributes.append((_TYPES[kind], value))
        rdns.append(attributes)
    request = csr(rsa_key(), name(*rdns))
    assert judge(request, profile, host=host) is None
    uses_serial = any(how == "placeholder" and text == "SerialNumber"
                      for rdn in subject for _, pieces in rdn for how, text in pieces)
    if serial and uses_serial:
        # another host's serial (with a character no subject here contains) is refused
        other = HostFacts(uuid=HOST.uuid, serial="%" + serial, platform="macos")
        assert judge(request, profile, host=other).reason.startswith("subject ")


def test_json_template_with_sans():
    template = json.loads(ANDROID)
    template["subject_alt_names"] = {"dns": ["%HostName%.corp.example"], "email": [], "uri": ["urn:x:%UDID%"]}
    expected = expected_request("android_template", json.dumps(template).encode(), renewal_id=RENEWAL_ID, host=HOST)
    assert [(t, m.describe()) for t, m in expected.sans] == [
        ("dns", "'%HostName%.corp.example'"), ("uri", "'urn:x:%UDID%'")]


# -- Android: every subjectAltName kind, in Fleet's spelling ------------------------------------

ANDROID_SANS = ("DNS=$FLEET_VAR_SCEP_RENEWAL_ID.wifi.example.com, EMAIL=ann@example.com, UPN=ann@corp.example,"
                " IP=2001:DB8::0:1, IP=10.0.0.1, URI=spiffe://example.com/device/$FLEET_VAR_SCEP_RENEWAL_ID")


EVERY_SAN = SanPolicy.from_patterns({t: ".*" for t in ("dns", "email", "uri", "ip", "upn")})


def android_with_sans(sans=ANDROID_SANS) -> bytes:
    template = json.loads(ANDROID)
    del template["subject_alt_names"]
    template["subject_alternative_name"] = sans
    return json.dumps(template).encode()


def android_subject():
    return name([(O, "Example, Inc.")], [(OU, "Devices")], [(CN, RENEWAL_ID)])


def rendered_sans():
    return [x509.DNSName(RENEWAL_ID + ".wifi.example.com"), x509.RFC822Name("ann@example.com"),
            upn("ann@corp.example"), x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.UniformResourceIdentifier("spiffe://example.com/device/" + RENEWAL_ID)]


def test_android_fleet_sans_expected_request():
    expected = expected_request("android_template", android_with_sans(), renewal_id=RENEWAL_ID, host=HOST)
    assert [(t, m.describe()) for t, m in expected.sans] == [
        ("dns", "'%s.wifi.example.com'" % RENEWAL_ID), ("email", "'ann@example.com'"),
        ("upn", "'ann@corp.example'"), ("ip", "'2001:db8::1'"), ("ip", "'10.0.0.1'"),
        ("uri", "'spiffe://example.com/device/%s'" % RENEWAL_ID)]


def test_android_csr_with_exactly_the_rendered_sans_passes_in_any_order():
    sans = rendered_sans()
    for order in (sans, sans[::-1]):
        request = csr(rsa_key(), android_subject(), order)
        assert judge(request, android_with_sans(), "android_template", san_policy=EVERY_SAN) is None


@pytest.mark.parametrize("change, reason", [
    (lambda sans: sans + [x509.DNSName("evil.example.com")],
     "CSR asks for subjectAltName dns 'evil.example.com', which the profile does not render"),
    (lambda sans: sans + [upn("ann@corp.example")],
     "CSR asks for more subjectAltNames like upn 'ann@corp.example' than the profile renders"),
    (lambda sans: [upn("admin@corp.example") if isinstance(s, x509.OtherName) else s for s in sans],
     "CSR asks for subjectAltName upn 'admin@corp.example', which the profile does not render"),
    (lambda sans: sans[:3] + [x509.IPAddress(ipaddress.ip_address("10.0.0.2"))],
     "CSR asks for subjectAltName ip '10.0.0.2', which the profile does not render"),
    (lambda sans: [x509.DNSName(OTHER_RENEWAL_ID + ".wifi.example.com")] + sans[1:],
     "CSR asks for subjectAltName dns '%s.wifi.example.com', which the profile does not render" % OTHER_RENEWAL_ID),
])
def test_android_csr_with_an_extra_or_different_san_is_refused(change, reason):
    request = csr(rsa_key(), android_subject(), change(rendered_sans()))
    assert judge(request, android_with_sans(), "android_template", san_policy=EVERY_SAN) == Refusal(
        "badRequest", reason, "san")


@pytest.mark.parametrize("keep, reason", [
    (lambda sans: [s for s in sans if not isinstance(s, x509.OtherName)],
     "CSR lacks subjectAltName upn 'ann@corp.example', which the profile renders"),
    (lambda sans: [], "CSR lacks subjectAltName dns '%s.wifi.example.com', which the profile renders" % RENEWAL_ID),
])
def test_android_csr_short_of_a_rendered_name_is_refused(keep, reason):
    """The agent is given every name; a CSR without one would make a certificate the template did not ask for."""
    request = csr(rsa_key(), android_subject(), keep(rendered_sans()))
    assert judge(request, android_with_sans(), "android_template", san_policy=EVERY_SAN) == Refusal(
        "badRequest", reason, "san")


def test_android_two_names_one_csr_name_says_how_many():
    template = android_with_sans("DNS=%HostName%.example.com, DNS=%ComputerName%.example.com")
    request = csr(rsa_key(), android_subject(), [x509.DNSName("pixel.example.com")])
    assert judge(request, template, "android_template", san_policy=EVERY_SAN).reason == (
        "CSR asks for 1 subjectAltNames; the profile renders 2")
