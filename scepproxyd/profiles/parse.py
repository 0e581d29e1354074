"""Recognise what an admin uploaded and hand it to the validator for its kind.

Detection goes by content, not by the upload's content type, which browsers
and tools set inconsistently (Apple's own type covers signed and unsigned
profiles alike). A Windows SyncML profile is told from a plist by its first
element (a command: ``<Add>``, ``<Replace>``, ``<Exec>`` or ``<Atomic>``), since
it has no single root and may start with an XML declaration too. Signed and binary profiles get their own messages because
they are the two usual ways a valid-looking profile still cannot be rendered.
"""

from asn1crypto import cms, pem

from scepproxyd.profiles import android, mobileconfig, syncml
from scepproxyd.profiles.model import TOO_DEEP, ParsedProfile, ProfileError

SIGNED = "profile is signed (CMS); upload it unsigned: signed profiles cannot be rendered"
BINARY_PLIST = (
    "profile is a binary plist; convert it to XML (plutil -convert xml1 FILE) and upload it again"
)
NEITHER = (
    "profile is neither an Apple .mobileconfig (XML plist),"
    " an Android certificate template (JSON)"
    " nor a Windows SyncML profile (<Add>, <Replace> and <Exec> commands)"
)

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"


def parse_profile(content: bytes, content_type: str | None = None) -> ParsedProfile:
    """Detect the kind of ``content``, validate it and describe it.

    ``content_type`` is accepted for callers that have one but is not trusted:
    the bytes decide. Raises L{ProfileError} for every refusal. Whether the
    named CA exists is the caller's question (it has the store); the answer's
    ``ca_name`` is what to look up.
    """
    head = content[len(_BOM) :] if content.startswith(_BOM) else content
    head = head.lstrip(_WHITESPACE)
    try:
        if syncml.looks_like_syncml(head):
            return syncml.parse(content)
        if head.startswith((b"<?xml", b"<plist")):
            return mobileconfig.parse(content)
        if head.startswith(b"{"):
            return android.parse(content)
    except RecursionError:
        raise ProfileError(TOO_DEEP) from None
    if head.startswith(b"bplist"):
        raise ProfileError(BINARY_PLIST)
    if _is_signed_data(head):
        raise ProfileError(SIGNED)
    raise ProfileError(NEITHER)


def _is_signed_data(data: bytes) -> bool:
    """True for a DER or PEM CMS SignedData, the shape of a signed .mobileconfig."""
    if data.startswith(b"-----BEGIN"):
        try:
            _, _, data = pem.unarmor(data)
        except ValueError:
            return False
    try:
        return cms.ContentInfo.load(data, strict=True)["content_type"].native == "signed_data"
    except Exception:  # asn1crypto reports malformed input through assorted types
        return False
