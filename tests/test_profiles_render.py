"""Rendering an accepted Apple profile for one host, and the proxy URL it carries."""

import plistlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scepproxyd.profiles import ProfileError, parse_profile, proxy_url, render_profile
from scepproxyd.profiles.variables import Values
from scepproxyd.scep.identifier import parse_identifier

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
GOOD = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes()
ONE_TIME = "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4"
URL = proxy_url("https://scep.example.net/", "HOST-1", "PROFILE-1", "CA_NAME", ONE_TIME)


def render(content: bytes = GOOD, challenge: str = "static-secret", renewal_id: str = "R-123") -> bytes:
    return render_profile(
        "mobileconfig", content, ca_challenge=challenge, proxy_url=URL, renewal_id=renewal_id
    )


def scep_fields(rendered: bytes) -> dict:
    return plistlib.loads(rendered)["PayloadContent"][0]["PayloadContent"]


def test_proxy_url_escapes_the_identifier_as_one_segment():
    assert URL == "https://scep.example.net/mdm/scep/proxy/HOST-1%2CPROFILE-1%2CCA_NAME%2C" + ONE_TIME
    identifier = parse_identifier(URL.rsplit("/", 1)[1])
    assert (identifier.host_uuid, identifier.profile_uuid, identifier.ca_name, identifier.challenge) == (
        "HOST-1",
        "PROFILE-1",
        "CA_NAME",
        ONE_TIME,
    )


def test_every_variable_replaced():
    rendered = render()
    assert b"FLEET_VAR" not in rendered
    fields = scep_fields(rendered)
    assert fields["Challenge"] == "static-secret"
    assert fields["URL"] == URL
    assert fields["Subject"][0][0] == ["CN", "%SerialNumber% WIFI R-123"]


def test_everything_else_is_byte_for_byte_the_upload():
    rendered = render()
    expected = (
        GOOD.replace(b"$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME", b"static-secret")
        .replace(b"$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_CA_NAME", URL.encode())
        .replace(b"$FLEET_VAR_SCEP_RENEWAL_ID", b"R-123")
    )
    assert rendered == expected


def test_braces_form_replaced():
    braces = (FIXTURES / "fleet-custom-scep-braces.mobileconfig").read_bytes()
    fields = scep_fields(render(braces))
    assert (fields["Challenge"], fields["URL"]) == ("static-secret", URL)


def test_xml_special_characters_escaped():
    challenge = "<&>\"' ]]> &amp; \r\n\t"
    rendered = render(challenge=challenge)
    assert b"&lt;&amp;&gt;&quot;&apos;" in rendered
    assert scep_fields(rendered)["Challenge"] == challenge


# Characters XML 1.0 cannot carry; surrogates (Cs) cannot even be encoded as UTF-8.
XML_UNSAFE = "\ufffe\uffff" + "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r")
XML_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=XML_UNSAFE))


@given(XML_TEXT)
def test_any_xml_text_challenge_round_trips(challenge):
    assert scep_fields(render(challenge=challenge))["Challenge"] == challenge


def test_challenge_xml_cannot_carry_refused_without_echoing_it():
    with pytest.raises(ProfileError) as e:
        render(challenge="sec\x00ret")
    assert str(e.value) == (
        "cannot render the profile: a variable's value contains characters XML cannot carry"
    )
    assert "sec" not in str(e.value)


def test_fields_directly_in_the_payload_rendered():
    payload = plistlib.loads(GOOD)
    scep = payload["PayloadContent"][0]
    scep.update(scep.pop("PayloadContent"))
    content = plistlib.dumps(payload)
    parse_profile(content)
    rendered = plistlib.loads(render(content))["PayloadContent"][0]
    assert (rendered["Challenge"], rendered["URL"]) == ("static-secret", URL)


def test_unknown_kind_refused():
    with pytest.raises(ProfileError) as e:
        render_profile("windows", GOOD, ca_challenge="s", proxy_url=URL, renewal_id="r")
    assert str(e.value) == "unknown profile kind 'windows'"


def test_values_repr_hides_secrets():
    text = repr(Values(challenge="static-secret", proxy_url=URL, renewal_id="R-123"))
    assert "static-secret" not in text and ONE_TIME not in text
    assert "R-123" in text
