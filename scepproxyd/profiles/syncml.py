"""Windows SyncML profiles: one ClientCertificateInstall/SCEP install, Fleet's way.

A Windows profile written for Fleet is a sequence of SyncML commands
(``<Add>``, ``<Replace>``, ``<Exec>``, optionally inside one ``<Atomic>``)
with no single root element, each carrying ``<Item>``s that set a node of
the ClientCertificateInstall CSP. Validation reads the commands; rendering
substitutes in the XML text, so the agent receives the admin's document
unchanged apart from the variables. As for .mobileconfig files, a variable
that the parsed view and the text view see differently (in a comment, CDATA
or a character reference) is refused, and so is any DTD or entity
declaration: what the device applies must be what was checked.

The rules follow Fleet's, with Fleet's messages where it has them: every
LocURI is a node of ``ClientCertificateInstall/SCEP/<the Windows certificate ID variable>``
(all ``./Device`` or all ``./User``), the required nodes are set once each,
exactly one ``<Exec>`` runs ``Install/Enroll``; and ours: ServerURL and
Challenge are exactly the proxy URL and challenge variables of one CA, the
SubjectName carries the renewal ID in its CN or OU, CAThumbprint is a SHA-1
thumbprint, and the Enroll comes last (Microsoft: the device enrolls with
the settings sent before it).
"""

from __future__ import annotations

import re
from xml.parsers import expat

import attrs

from scepproxyd.profiles import checks, variables
from scepproxyd.profiles.mobileconfig import xml_escape, xml_text
from scepproxyd.profiles.model import TOO_DEEP, WINDOWS_SYNCML, ParsedProfile, ProfileError

COMMANDS = ("Add", "Replace", "Exec")
ATOMIC = "Atomic"
# A whole SyncML message rather than the commands: recognised, to be refused with its own message.
_ENVELOPES = ("SyncML", "SyncBody")
_SCOPES = ("./Device", "./User")
_CSP = "/Vendor/MSFT/ClientCertificateInstall/SCEP/"
_ID = variables.WINDOWS_CERTIFICATE_ID_PLACEHOLDER
_ID_BRACED = "${%s}" % (variables.WINDOWS_CERTIFICATE_ID,)
#: The SCEP install's own node (``""``) and its settings under ``Install/``, as the CSP defines them.
NODES = (
    "", "Install/AADKeyIdentifierList", "Install/CAThumbprint", "Install/Challenge", "Install/ContainerName",
    "Install/CustomTextToShowInPrompt", "Install/EKUMapping", "Install/Enroll", "Install/HashAlgorithm",
    "Install/KeyLength", "Install/KeyProtection", "Install/KeyUsage", "Install/RetryCount", "Install/RetryDelay",
    "Install/ServerURL", "Install/SubjectAlternativeNames", "Install/SubjectName", "Install/TemplateName",
    "Install/ValidPeriod", "Install/ValidPeriodUnits",
)
#: What a profile must set (Fleet requires the same).
REQUIRED = (
    "", "Install/CAThumbprint", "Install/Challenge", "Install/EKUMapping", "Install/HashAlgorithm",
    "Install/KeyLength", "Install/KeyUsage", "Install/ServerURL", "Install/SubjectName",
)
ENROLL = "Install/Enroll"
SERVER_URL = "Install/ServerURL"
CHALLENGE = "Install/Challenge"
SUBJECT_NAME = "Install/SubjectName"
CA_THUMBPRINT = "Install/CAThumbprint"
SUBJECT_ALT_NAMES = "Install/SubjectAlternativeNames"
#: Where host and end-user variables may be written: the names the certificate carries.
_HOST_VALUE_NODES = (SUBJECT_NAME, SUBJECT_ALT_NAMES)
_MAX_DEPTH = 32
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")
_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_WRAPPER = "scepproxyd-syncml"
# Whitespace, comments and one DOCTYPE (with its internal subset) before the first element.
_PROLOGUE = re.compile(r"\A(?:\s+|<!--.*?-->|<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>)*", re.S | re.I)

# Fleet's messages.
OUTSIDE_SCEP = ('Only options that have <LocURI> starting with "ClientCertificateInstall/SCEP/"'
                " can be added to SCEP profile.")
NO_ID = 'You must use "%s" after "ClientCertificateInstall/SCEP/".' % (_ID,)
MIXED_SCOPES = 'All <LocURI> elements in the SCEP profile must start either with "./Device" or "./User".'
NO_ENROLL = ('"ClientCertificateInstall/SCEP/%s/Install/Enroll" must be included within <Exec>.'
             " Please add and try again." % (_ID,))
EXECS = "SCEP profiles must include exactly one <Exec> element."
MISSING = '"ClientCertificateInstall/SCEP/%s%s" is missing. Please add and try again.'
# Ours.
DTD = ("profile declares a DTD or entities (<!DOCTYPE or <!ENTITY); SyncML profiles may not, so the device"
       " applies exactly the text that was checked")
NOT_SYNCML = ("a Windows SyncML profile must be a sequence of <Add>, <Replace> and <Exec> commands"
              " (optionally in one <Atomic>)")
ENVELOPE = ("upload the SyncML commands themselves (<Add>, <Replace>, <Exec>), without the <SyncML> or <SyncBody>"
            " around them: scepproxyd profiles are written as Fleet's are")
NO_SCEP = ("profile sets no ClientCertificateInstall/SCEP node; scepproxyd manages certificate profiles only:"
           " add a SCEP install whose LocURIs use %s" % (_ID,))


@attrs.frozen
class Item:
    """One ``<Item>`` of one command: which node it sets, and its ``<Data>`` text (None when absent)."""

    command: str
    loc_uri: str
    data: str | None


@attrs.frozen
class Install:
    """The one SCEP install a profile describes: its scope and each node's data (``""`` is the node itself)."""

    scope: str
    nodes: dict


def looks_like_syncml(head: bytes) -> bool:
    """True when the first element of an upload (after any XML declaration, comments and DOCTYPE) is a
    SyncML command; parse.py asks this before taking ``<?xml`` for a plist. A DOCTYPE is skipped here
    only to recognise the kind: L{parse} then refuses it with its own message."""
    start = _DECLARATION.sub("", head[:65536].decode("utf-8", "replace"), count=1)
    start = _PROLOGUE.sub("", start)
    return re.match(r"<(%s)\b" % "|".join(COMMANDS + (ATOMIC,) + _ENVELOPES), start) is not None


def parse(content: bytes) -> ParsedProfile:
    """Validate a Windows SyncML profile against the upload rules."""
    text = xml_text(content)
    items = _items(text)
    occurrences = []
    for number, item in enumerate(items):
        occurrences.extend(checks.occurrences_in(item.loc_uri, (number, "LocURI")))
        if item.data is not None:
            occurrences.extend(checks.occurrences_in(item.data, (number, "Data")))
    checks.refuse_hidden(text, variables.find(text), occurrences, "a <LocURI> or <Data>")
    install = _install(items)
    where = {number: _node(item.loc_uri)[1] for number, item in enumerate(items)}
    for occurrence in occurrences:
        number, part = occurrence.location
        if occurrence.variable.kind == variables.WINDOWS_ID:
            if part != "LocURI":
                raise ProfileError("variable %s may only appear in a <LocURI>" % (_ID,), where[number] or "LocURI")
        elif part != "Data":
            raise ProfileError("variable %s may not appear in a <LocURI>" % (occurrence.variable.spelled,), "LocURI")
        elif occurrence.variable.kind == variables.SECRET:
            # Every node of the profile describes the one certificate; none keeps a secret on the device.
            raise checks.secret_in_certificate(occurrence.variable, "a Windows SCEP profile")
        elif occurrence.variable.kind == variables.HOST and where[number] not in _HOST_VALUE_NODES:
            raise ProfileError(
                "variable %s may only appear in the <Data> of SubjectName or SubjectAlternativeNames"
                % (occurrence.variable.spelled,),
                where[number] or "Data",
            )
    named = [o for o in occurrences if o.variable.kind != variables.WINDOWS_ID]
    checks.refuse_repeats(named)
    at = {node: (number, "Data") for number, node in where.items()}
    challenge = checks.whole_variable_at(named, at[CHALLENGE], variables.CHALLENGE)
    if challenge is None:
        raise ProfileError("SCEP node Challenge's <Data> must be %s" % (variables.CHALLENGE_PLACEHOLDER,), "Challenge")
    url = checks.whole_variable_at(named, at[SERVER_URL], variables.PROXY_URL)
    if url is None:
        raise ProfileError("SCEP node ServerURL's <Data> must be %s" % (variables.PROXY_URL_PLACEHOLDER,), "ServerURL")
    ca_name = checks.same_ca(challenge, url, "Challenge", "ServerURL")
    checks.refuse_strays(named, (at[CHALLENGE], "SCEP node Challenge's <Data>"),
                         (at[SERVER_URL], "SCEP node ServerURL's <Data>"))
    _require_renewal_id(named, install.nodes[SUBJECT_NAME], at[SUBJECT_NAME])
    thumbprint = (install.nodes[CA_THUMBPRINT] or "").strip()
    if not _THUMBPRINT.fullmatch(thumbprint):
        raise ProfileError("SCEP node CAThumbprint's <Data> must be the CA certificate's SHA-1 thumbprint"
                           " (40 hexadecimal digits)", "CAThumbprint")
    name = "Windows SCEP (%s)" % (ca_name,)
    return ParsedProfile(WINDOWS_SYNCML, name, None, ca_name, checks.names(occurrences))


def render(content: bytes, values: variables.Values) -> bytes:
    """Fill in the variables of an accepted profile, XML-escaping each value; the result still parses."""
    rendered = variables.substitute(xml_text(content), values, xml_escape)
    _items(rendered)
    return rendered.encode("utf-8")


def install_settings(content: bytes) -> Install:
    """The SCEP install of an accepted profile, as written (variables not filled in), for the CA's binding."""
    return _install(_items(xml_text(content)))


# -- reading -----------------------------------------------------------------------------------------


class _Element:
    __slots__ = ("tag", "children", "text")

    def __init__(self, tag: str) -> None:
        self.tag, self.children, self.text = tag, [], []


def _local(tag: str) -> str:
    return tag.rpartition(":")[2]


def _tree(text: str) -> _Element:
    """The commands under one synthetic root, read by expat with no DTD, entity or deep nesting allowed."""
    if re.search(r"<!DOCTYPE|<!ENTITY", text, re.IGNORECASE):
        raise ProfileError(DTD)
    body = _DECLARATION.sub("", text, count=1)
    document = _Element("")
    stack = [document]
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def start(tag, attributes):
        if len(stack) > _MAX_DEPTH + 1:
            raise ProfileError(TOO_DEEP)
        element = _Element(_local(tag))
        stack[-1].children.append(element)
        stack.append(element)

    def end(tag):
        stack.pop()

    def refuse_dtd(*args):
        raise ProfileError(DTD)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda data: stack[-1].text.append(data)
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    try:
        parser.Parse("<%s>%s</%s>" % (_WRAPPER, body, _WRAPPER), True)
    except expat.ExpatError as e:
        raise ProfileError("profile is not well-formed XML: %s" % (expat.ErrorString(e.code),)) from None
    return document.children[0]


def _items(text: str) -> list[Item]:
    root = _tree(text)
    if "".join(root.text).strip():
        raise ProfileError(NOT_SYNCML)
    if any(element.tag in _ENVELOPES for element in root.children):
        raise ProfileError(ENVELOPE)
    commands = []
    for element in root.children:
        if element.tag == ATOMIC:
            if len(root.children) != 1:
                raise ProfileError("an <Atomic> must hold every command of the profile: " + NOT_SYNCML)
            commands.extend(c for c in element.children if c.tag != "CmdID")
            if "".join(element.text).strip():
                raise ProfileError(NOT_SYNCML)
        else:
            commands.append(element)
    items = []
    for command in commands:
        if command.tag not in COMMANDS:
            raise ProfileError("profile has a <%s> command; %s" % (command.tag, NOT_SYNCML))
        for child in command.children:
            if child.tag == "Item":
                items.append(_item(command.tag, child))
            elif child.tag not in ("CmdID", "Meta"):
                raise ProfileError("<%s> may hold only <CmdID>, <Meta> and <Item>, not <%s>" % (command.tag, child.tag))
        if not any(child.tag == "Item" for child in command.children):
            raise ProfileError("a <%s> command has no <Item>" % (command.tag,))
    return items


def _item(command: str, element: _Element) -> Item:
    targets = [c for c in element.children if c.tag == "Target"]
    uris = [u for t in targets for u in t.children if u.tag == "LocURI"]
    if len(targets) != 1 or len(uris) != 1 or uris[0].children:
        raise ProfileError("each <Item> of a <%s> must have one <Target> with one <LocURI>" % (command,), "LocURI")
    data = [c for c in element.children if c.tag == "Data"]
    others = [c.tag for c in element.children if c.tag not in ("Target", "Data", "Meta", "Source")]
    if len(data) > 1 or others:
        raise ProfileError("an <Item> may hold <Target>, <Meta> and one <Data>, not %s"
                           % (", ".join("<%s>" % (t,) for t in others) or "two <Data>"))
    if data and data[0].children:
        raise ProfileError("the <Data> of %s must be text, not elements" % ("".join(uris[0].text).strip(),))
    return Item(command, "".join(uris[0].text).strip(), "".join(data[0].text) if data else None)


def _node(loc_uri: str) -> tuple[str, str]:
    """``(scope, node)`` of a SCEP install LocURI, ``node`` as in L{NODES}; refused with Fleet's messages."""
    for scope in _SCOPES:
        prefix = scope + _CSP
        if loc_uri.startswith(prefix):
            rest = loc_uri[len(prefix):]
            for spelled in (_ID, _ID_BRACED):
                if rest == spelled or rest.startswith(spelled + "/"):
                    node = rest[len(spelled) + 1:]
                    if node not in NODES:
                        raise ProfileError(
                            '"ClientCertificateInstall/SCEP/%s/%s" is not a setting of the ClientCertificateInstall'
                            " CSP's SCEP install; allowed: %s" % (_ID, node, ", ".join(n for n in NODES if n)),
                            "LocURI",
                        )
                    return scope, node
            raise ProfileError(NO_ID, "LocURI")
    raise ProfileError(OUTSIDE_SCEP, "LocURI")


def _install(items: list[Item]) -> Install:
    if not items:
        raise ProfileError(NO_SCEP)
    scopes, nodes, execs = set(), {}, []
    for position, item in enumerate(items):
        scope, node = _node(item.loc_uri)
        scopes.add(scope)
        if len(scopes) > 1:
            raise ProfileError(MIXED_SCOPES, "LocURI")
        if item.command == "Exec":
            execs.append((position, node))
            continue
        if node == ENROLL:
            raise ProfileError(NO_ENROLL, "Enroll")
        if node in nodes:
            shown = "ClientCertificateInstall/SCEP/%s%s" % (_ID, "/" + node if node else "")
            raise ProfileError('"%s" is set more than once; a profile installs one SCEP certificate, each setting'
                               " once" % (shown,), node.rpartition("/")[2] or "LocURI")
        nodes[node] = item.data
    if not any(node == ENROLL for _, node in execs):
        raise ProfileError(NO_ENROLL, "Enroll")
    if len(execs) != 1:
        raise ProfileError(EXECS, "Enroll")
    for node in REQUIRED:
        if node not in nodes:
            raise ProfileError(MISSING % (_ID, "/" + node if node else ""), node.rpartition("/")[2] or "LocURI")
    if execs[0][0] != len(items) - 1:
        raise ProfileError("the <Exec> of Install/Enroll must be the profile's last command: Windows enrolls"
                           " with the settings sent before it", "Enroll")
    return Install(scopes.pop(), nodes)


def subject_attributes(subject: str) -> list[tuple[str, str]]:
    """A SubjectName as written, left to right: ``(TYPE, value)``; Windows separates RDNs with ``,`` or ``;``.

    Quoted values (``CN="a, b"``) and backslash escapes are read as Windows' CertStrToName reads them.
    """
    attributes, position = [], 0
    pattern = re.compile(r'\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)\s*=\s*("(?:[^"]|"")*"|(?:\\.|[^,;\\])*)\s*')
    while position < len(subject):
        match = pattern.match(subject, position)
        if match is None or match.end() == position:
            raise ProfileError('SCEP node SubjectName must be a distinguished name such as "CN=name,OU=unit"',
                               "SubjectName")
        value = match.group(2)
        if value.startswith('"'):
            value = value[1:-1].replace('""', '"')
        else:
            value = re.sub(r"\\(.)", r"\1", value.strip())
        attributes.append((match.group(1), value))
        position = match.end()
        if position < len(subject):
            if subject[position] not in ",;":
                raise ProfileError('SCEP node SubjectName must be a distinguished name such as "CN=name,OU=unit"',
                                   "SubjectName")
            position += 1
    if not attributes:
        raise ProfileError('SCEP node SubjectName must be a distinguished name such as "CN=name,OU=unit"',
                           "SubjectName")
    return attributes


def _require_renewal_id(occurrences: list[checks.Occurrence], subject: str | None, at) -> None:
    """The renewal ID must land in CN or OU, where renewal looks for it in the certificate."""
    renewal = [o for o in occurrences if o.variable.kind == variables.RENEWAL]
    message = ProfileError("SCEP node SubjectName must contain %s in its CN or OU"
                           % (variables.RENEWAL_ID_PLACEHOLDER,), "SubjectName")
    if not renewal or any(o.location != at for o in renewal) or subject is None:
        raise message
    if not any(kind.upper() in checks.RENEWAL_ID_TYPES and any(f.variable.kind == variables.RENEWAL
                                                          for f in variables.find(value))
               for kind, value in subject_attributes(subject)):
        raise message
