"""Windows SyncML profiles: Fleet's ClientCertificateInstall/SCEP rules, their messages, and rendering."""

import re
from pathlib import Path
from xml.parsers import expat

import pytest

from scepproxyd.profiles import ParsedProfile, ProfileError, parse_profile, render_profile
from scepproxyd.profiles.syncml import install_settings, subject_attributes
from support.profiles import refused as refused_at_upload

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
GOOD_TEXT = (FIXTURES / "fleet-custom-scep-windows.xml").read_text()
GOOD = GOOD_TEXT.encode()
ID = "$FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID"
SCEP = "./Device/Vendor/MSFT/ClientCertificateInstall/SCEP/" + ID
RENEWAL_ID = "sp-0123456789abcdef"


def command(verb: str, node: str, data: str | None = None, uri: str | None = None) -> str:
    data_xml = "" if data is None else "<Data>%s</Data>" % (data,)
    return "<%s><Item><Target><LocURI>%s</LocURI></Target>%s</Item></%s>\n" % (
        verb, uri or (SCEP + ("/" + node if node else "")), data_xml, verb)


def item_of(node: str) -> re.Pattern:
    """The whole command of the fixture that sets ``node``."""
    return re.compile(r"<(Replace|Add)>\s*<Item>\s*<Target>\s*<LocURI>[^<]*/%s</LocURI>.*?</\1>\s*" % (node,), re.S)


def without(node: str) -> bytes:
    text, count = item_of(node).subn("", GOOD_TEXT)
    assert count == 1
    return text.encode()


def replaced(old: str, new: str, count: int = 1) -> bytes:
    assert GOOD_TEXT.count(old) >= count
    return GOOD_TEXT.replace(old, new, count).encode()


def before_exec(extra: str) -> bytes:
    return GOOD_TEXT.replace("<Exec>", extra + "<Exec>", 1).encode()


def refused(content: bytes, message: str, field: str | None = None) -> None:
    """The shared check; here a test names the field only where it matters."""
    refused_at_upload(content, message, field)


def test_fleet_shaped_profile_uploads():
    assert parse_profile(GOOD, "application/xml") == ParsedProfile(
        kind="windows_syncml",
        name="Windows SCEP (WIFI_CA)",
        identifier=None,
        ca_name="WIFI_CA",
        variables=("FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA", "FLEET_VAR_CUSTOM_SCEP_PROXY_URL_WIFI_CA",
                   "FLEET_VAR_SCEP_RENEWAL_ID", "FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID"),
    )


@pytest.mark.parametrize("wrap", [
    lambda t: '<?xml version="1.0" encoding="UTF-8"?>\n' + t,
    lambda t: "\ufeff  \n" + t,
    lambda t: "<Atomic><CmdID>1</CmdID>" + t + "</Atomic>",
    lambda t: t.replace(ID, "${FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID}"),
    lambda t: t.replace("./Device/", "./User/"),
    lambda t: t.replace("<Add>", "<Add><CmdID>2</CmdID>"),
])
def test_accepted_variants(wrap):
    assert parse_profile(wrap(GOOD_TEXT).encode()).kind == "windows_syncml"


# -- Fleet's rules and messages ----------------------------------------------------------------------

def test_every_scep_locuri_must_use_the_certificate_id():
    refused(replaced(SCEP + "/Install/KeyLength", "./Device/Vendor/MSFT/ClientCertificateInstall/SCEP/mycert/Install/KeyLength"),
            'You must use "$FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID" after "ClientCertificateInstall/SCEP/".', "LocURI")


def test_a_node_outside_the_scep_install_is_refused():
    refused(before_exec(command("Replace", "", "1", uri="./Device/Vendor/MSFT/Policy/Config/Wifi/AllowWiFi")),
            'Only options that have <LocURI> starting with "ClientCertificateInstall/SCEP/" can be added to SCEP profile.',
            "LocURI")


def test_device_and_user_cannot_mix():
    refused(replaced(SCEP + "/Install/KeyLength", SCEP.replace("./Device", "./User") + "/Install/KeyLength"),
            'All <LocURI> elements in the SCEP profile must start either with "./Device" or "./User".')


@pytest.mark.parametrize("node", ["CAThumbprint", "Challenge", "EKUMapping", "HashAlgorithm", "KeyLength",
                                  "KeyUsage", "ServerURL", "SubjectName"])
def test_each_required_node_is_named_when_missing(node):
    refused(without(node), '"ClientCertificateInstall/SCEP/%s/Install/%s" is missing. Please add and try again.'
            % (ID, node), node)


def test_the_install_node_itself_is_required():
    text = re.sub(r"<Add>.*?</Add>\s*", "", GOOD_TEXT, count=1, flags=re.S)
    refused(text.encode(), '"ClientCertificateInstall/SCEP/%s" is missing. Please add and try again.' % (ID,))


def test_enroll_exec_is_required_and_only_once():
    no_exec = re.sub(r"<Exec>.*?</Exec>\s*", "", GOOD_TEXT, flags=re.S).encode()
    enroll = '"ClientCertificateInstall/SCEP/%s/Install/Enroll" must be included within <Exec>. Please add and try again.' % (ID,)
    refused(no_exec, enroll, "Enroll")
    refused(GOOD_TEXT.replace("</Exec>", "</Exec>\n" + command("Exec", "Install/Enroll")).encode(),
            "SCEP profiles must include exactly one <Exec> element.")
    refused(before_exec(command("Replace", "Install/Enroll", "")), enroll)


# -- our own rules -----------------------------------------------------------------------------------

def test_server_url_and_challenge_are_exactly_the_variables_of_one_ca():
    refused(replaced("<Data>$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_WIFI_CA</Data>", "<Data>https://ca.example/scep</Data>"),
            "SCEP node ServerURL's <Data> must be $FLEET_VAR_CUSTOM_SCEP_PROXY_URL_<CA>", "ServerURL")
    refused(replaced("<Data>$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA</Data>", "<Data>secret</Data>"),
            "SCEP node Challenge's <Data> must be $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_<CA>", "Challenge")
    refused(replaced("<Data>$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA</Data>",
                     "<Data>x$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA</Data>"),
            "SCEP node Challenge's <Data> must be $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_<CA>", "Challenge")
    refused(replaced("CHALLENGE_WIFI_CA", "CHALLENGE_OTHER_CA"),
            "Challenge names CA 'OTHER_CA' but ServerURL names CA 'WIFI_CA'", "ServerURL")


def test_the_renewal_id_goes_in_cn_or_ou_of_the_subject_name():
    message = "SCEP node SubjectName must contain $FLEET_VAR_SCEP_RENEWAL_ID in its CN or OU"
    refused(replaced("CN=WIN-WIFI,OU=$FLEET_VAR_SCEP_RENEWAL_ID", "CN=WIN-WIFI,O=$FLEET_VAR_SCEP_RENEWAL_ID"),
            message, "SubjectName")
    refused(replaced("CN=WIN-WIFI,OU=$FLEET_VAR_SCEP_RENEWAL_ID", "CN=WIN-WIFI"), message, "SubjectName")
    refused(replaced("<Data>1.3.6.1.5.5.7.3.2</Data>", "<Data>$FLEET_VAR_SCEP_RENEWAL_ID</Data>"),
            "variable $FLEET_VAR_SCEP_RENEWAL_ID appears 2 times; each may appear at most once")
    assert parse_profile(replaced("CN=WIN-WIFI,OU=$FLEET_VAR_SCEP_RENEWAL_ID",
                                  "CN=${FLEET_VAR_SCEP_RENEWAL_ID}-wifi;O=Example")).kind == "windows_syncml"


def test_ca_thumbprint_must_be_a_sha1_thumbprint():
    refused(replaced("0123456789ABCDEF0123456789ABCDEF01234567", "not-a-thumbprint"),
            "SCEP node CAThumbprint's <Data> must be the CA certificate's SHA-1 thumbprint (40 hexadecimal digits)",
            "CAThumbprint")


def test_one_scep_install_per_profile():
    refused(before_exec(command("Replace", "Install/KeyLength", "4096")),
            '"ClientCertificateInstall/SCEP/%s/Install/KeyLength" is set more than once; a profile installs one'
            " SCEP certificate, each setting once" % (ID,), "KeyLength")


def test_enroll_must_come_last():
    text = GOOD_TEXT.replace("<Replace>", command("Exec", "Install/Enroll") + "<Replace>", 1)
    text = re.sub(r"<Exec>\s*<Item>\s*<Target>\s*<LocURI>[^<]*</LocURI>\s*</Target>\s*</Item>\s*</Exec>\s*$", "", text)
    refused(text.encode(), "the <Exec> of Install/Enroll must be the profile's last command: Windows enrolls with"
            " the settings sent before it", "Enroll")


def test_unknown_csp_settings_and_variables_are_refused():
    with pytest.raises(ProfileError, match=r'"ClientCertificateInstall/SCEP/\$FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID/'
                                           r'Install/Bogus" is not a setting'):
        parse_profile(before_exec(command("Replace", "Install/Bogus", "1")))
    refused(replaced("CN=WIN-WIFI", "CN=$FLEET_VAR_NDES_SCEP_CHALLENGE"), "unknown variable $FLEET_VAR_NDES_SCEP_CHALLENGE")
    refused(replaced("<Data>160</Data>", "<Data>%s</Data>" % (ID,)),
            "variable $FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID may only appear in a <LocURI>")


def test_the_windows_certificate_id_is_refused_in_other_kinds():
    apple = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_text()
    apple = apple.replace("WIFI $FLEET_VAR_SCEP_RENEWAL_ID", "WIFI $FLEET_VAR_SCEP_RENEWAL_ID " + ID, 1)
    assert ID in apple
    refused(apple.encode(), "variable $FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID is only for Windows SyncML profiles"
            " (in a ClientCertificateInstall/SCEP <LocURI>), not in an Apple profile")


# -- XML safety ---------------------------------------------------------------------------------------

DTD = ("profile declares a DTD or entities (<!DOCTYPE or <!ENTITY); SyncML profiles may not, so the device"
       " applies exactly the text that was checked")


@pytest.mark.parametrize("content", [
    '<?xml version="1.0"?>\n<!DOCTYPE Add [<!ENTITY c "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA">]>\n' + GOOD_TEXT,
    '<!DOCTYPE x SYSTEM "file:///etc/passwd">' + GOOD_TEXT,
    GOOD_TEXT.replace("<Data>160</Data>", "<Data><!ENTITY x 'y'></Data>"),
])
def test_dtds_and_entities_are_refused(content):
    refused(content.encode(), DTD)


def test_undeclared_entities_and_malformed_xml_are_refused():
    with pytest.raises(ProfileError, match="^profile is not well-formed XML: undefined entity$"):
        parse_profile(replaced("<Data>160</Data>", "<Data>&lol;</Data>"))
    with pytest.raises(ProfileError, match="^profile is not well-formed XML: mismatched tag$"):
        parse_profile(GOOD + b"<Exec></Replace>")


@pytest.mark.parametrize("hidden", [
    "<!-- $FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA -->",
    "<![CDATA[$FLEET_VAR_SCEP_RENEWAL_ID]]>",
])
def test_variables_hidden_from_one_view_are_refused(hidden):
    with pytest.raises(ProfileError, match="must be written as plain text"):
        parse_profile(replaced("<Data>160</Data>", "<Data>160%s</Data>" % (hidden,)))


@pytest.mark.parametrize("old, new", [
    ('<Format xmlns="syncml:metinf">int</Format>', '<Format xmlns="syncml:metinf">$FLEET_VAR_SCEP_RENEWAL_ID</Format>'),
    ('<Format xmlns="syncml:metinf">int</Format>', '<Format xmlns="$FLEET_VAR_SCEP_RENEWAL_ID">int</Format>'),
    ("<Add>", "<Add><CmdID>$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_WIFI_CA</CmdID>"),
])
def test_a_variable_outside_locuri_and_data_is_refused(old, new):
    with pytest.raises(ProfileError, match="must be written as plain text in a <LocURI> or <Data>"):
        parse_profile(replaced(old, new))


def test_a_variable_spelled_with_character_references_is_refused():
    with pytest.raises(ProfileError, match="must be written as plain text"):
        parse_profile(replaced("<Data>160</Data>", "<Data>&#36;FLEET_VAR_SCEP_RENEWAL_ID</Data>"))


def test_deep_nesting_is_refused():
    deep = GOOD_TEXT.replace("<Data>160</Data>", "<Meta>" + "<a>" * 100 + "</a>" * 100 + "</Meta><Data>160</Data>")
    refused(deep.encode(), "profile is nested too deeply")


def test_a_whole_syncml_message_is_refused_with_its_own_message():
    for envelope in ("<SyncML><SyncBody>%s</SyncBody></SyncML>", "<SyncBody>%s</SyncBody>"):
        refused((envelope % (GOOD_TEXT,)).encode(),
                "upload the SyncML commands themselves (<Add>, <Replace>, <Exec>), without the <SyncML> or <SyncBody>"
                " around them: scepproxyd profiles are written as Fleet's are")


def test_text_between_commands_and_other_commands_are_refused():
    with pytest.raises(ProfileError, match="must be a sequence of <Add>, <Replace> and <Exec>"):
        parse_profile(GOOD + b"stray text")
    with pytest.raises(ProfileError, match="^profile has a <Delete> command"):
        parse_profile(GOOD_TEXT.replace("<Exec>", "<Delete><Item/></Delete><Exec>").encode())


# -- rendering ----------------------------------------------------------------------------------------

def render(content=GOOD, challenge="s3cret<&>'\"", url="https://proxy.example/mdm/scep/proxy/h%2Cp%2CWIFI_CA%2Cc?a=1&b=2"):
    return render_profile("windows_syncml", content, ca_challenge=challenge, proxy_url=url, renewal_id=RENEWAL_ID)


def data_of(rendered: bytes) -> dict:
    """Each LocURI's Data in a rendered profile, read back by an XML parser as a device would."""
    found, stack, texts = {}, [], {}
    parser = expat.ParserCreate()
    parser.StartElementHandler = lambda tag, a: (stack.append(tag), texts.__setitem__(len(stack), ""))
    parser.CharacterDataHandler = lambda d: texts.__setitem__(len(stack), texts[len(stack)] + d)

    def end(tag):
        text = texts[len(stack)]
        stack.pop()
        if tag == "LocURI":
            found["_uri"] = text.strip()
        elif tag == "Data":
            found[found["_uri"]] = text

    parser.EndElementHandler = end
    parser.Parse(b"<r>" + rendered + b"</r>", True)
    found.pop("_uri")
    return found


def test_rendering_escapes_values_and_names_the_node_with_the_renewal_id():
    rendered = render()
    assert b"$FLEET_VAR" not in rendered
    node = "./Device/Vendor/MSFT/ClientCertificateInstall/SCEP/" + RENEWAL_ID
    data = data_of(rendered)
    assert data[node + "/Install/Challenge"] == "s3cret<&>'\""
    assert data[node + "/Install/ServerURL"] == "https://proxy.example/mdm/scep/proxy/h%2Cp%2CWIFI_CA%2Cc?a=1&b=2"
    assert data[node + "/Install/SubjectName"] == "CN=WIN-WIFI,OU=" + RENEWAL_ID
    assert rendered.count(("SCEP/%s" % (RENEWAL_ID,)).encode()) == 10
    # Everything else is the admin's text, unchanged.
    assert rendered.decode().replace(RENEWAL_ID, ID) .count("<Replace>") == GOOD_TEXT.count("<Replace>")


def test_rendering_the_same_host_profile_twice_names_the_same_node():
    assert render(challenge="a").count(RENEWAL_ID.encode()) == render(challenge="b").count(RENEWAL_ID.encode()) == 11


def test_a_value_xml_cannot_carry_is_refused_without_showing_it():
    with pytest.raises(ProfileError) as e:
        render(challenge="bad\x01secret")
    assert "secret" not in str(e.value)


def test_install_settings_and_subject_names():
    install = install_settings(GOOD)
    assert install.scope == "./Device"
    assert install.nodes["Install/KeyLength"] == "2048"
    assert subject_attributes('CN="Doe, John";OU=sp-1, O=Ex\\,ample') == [
        ("CN", "Doe, John"), ("OU", "sp-1"), ("O", "Ex,ample")]
    with pytest.raises(ProfileError, match="must be a distinguished name"):
        subject_attributes("just text")


def test_docs_example_is_the_fixture_and_every_message_is_documented():
    docs = (Path(__file__).parents[1] / "docs" / "profiles.md").read_text()
    example = docs.split("<!-- windows-example -->\n```xml\n", 1)[1].split("```", 1)[0]
    assert example == GOOD_TEXT.split("\n", 1)[1]
    assert parse_profile(example.encode()).kind == "windows_syncml"
    from scepproxyd.profiles import syncml

    for message in (syncml.OUTSIDE_SCEP, syncml.NO_ID, syncml.MIXED_SCOPES, syncml.NO_ENROLL, syncml.EXECS,
                    syncml.DTD, syncml.NOT_SYNCML, syncml.NO_SCEP, syncml.ENVELOPE, syncml.MISSING % (ID, "/Install/X")):
        assert message in docs, message
