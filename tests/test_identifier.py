"""The proxy identifier parser refuses hostile input with a reason, never a traceback."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scepproxyd.scep.identifier import InvalidIdentifier, parse_identifier

CHALLENGE = "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4"  # 32 chars, base64url


def test_escaped_commas():
    ident = parse_identifier(b"HOST-1%2Cprofile.A%2CCA_NAME%2C" + CHALLENGE.encode())
    assert ident.host_uuid == "HOST-1"
    assert ident.profile_uuid == "profile.A"
    assert ident.ca_name == "CA_NAME"
    assert ident.challenge == CHALLENGE


def test_lowercase_escapes_and_literal_commas():
    assert parse_identifier("h%2cp,CA," + CHALLENGE).profile_uuid == "p"


def test_challenge_not_in_repr():
    assert CHALLENGE not in repr(parse_identifier("h,p,CA," + CHALLENGE))


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "missing identifier"),
        ("x,y,z,w", "challenge is not a well-formed challenge"),
        ("h,p,CA", "4 comma-separated parts"),
        ("h,p,CA,%s,extra" % CHALLENGE, "got 5"),
        (",p,CA," + CHALLENGE, "hostUUID is empty"),
        ("h,,CA," + CHALLENGE, "profileUUID is empty"),
        ("h,p,," + CHALLENGE, "caName is empty"),
        ("h,p,CA,", "challenge is empty"),
        ("h,p,CA-1," + CHALLENGE, "caName must be"),
        ("h%2Fp,p,CA," + CHALLENGE, "hostUUID must be"),
        ("..%2F..%2Fetc,p,CA," + CHALLENGE, "hostUUID must be"),
        ("h';DROP TABLE hosts;--,p,CA," + CHALLENGE, "hostUUID must be"),
        ("h,p,CA,%zz" + CHALLENGE, "malformed percent-escape"),
        ("h,p,CA,abc%", "malformed percent-escape"),
        ("h,p,CA%ff," + CHALLENGE, "not valid UTF-8"),
        ("h" * 5000, "too long"),
        ("h,p,CA,short", "challenge is not a well-formed"),
        ("h,%s,CA,%s" % ("p" * 256, CHALLENGE), "profileUUID must be"),
    ],
)
def test_refusals_say_why(raw, reason):
    with pytest.raises(InvalidIdentifier) as e:
        parse_identifier(raw)
    assert reason in str(e.value)


def test_challenge_never_echoed():
    with pytest.raises(InvalidIdentifier) as e:
        parse_identifier("h,p,CA,Zm9vYmFy!YmF6cXV4cXV1eHF1dXhxdXV4")
    assert "Zm9v" not in str(e.value)


def test_non_ascii_bytes():
    with pytest.raises(InvalidIdentifier, match="ASCII"):
        parse_identifier("h\u00e9,p,CA,x".encode("utf-8"))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_input_parses_or_is_refused(raw):
    try:
        ident = parse_identifier(raw)
    except InvalidIdentifier as e:
        assert str(e)
    else:
        assert ident.host_uuid and ident.profile_uuid and ident.ca_name and ident.challenge
