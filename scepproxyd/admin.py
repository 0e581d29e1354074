"""Admin rules that are more than storage: CA integrations, host imports, end users and custom secrets.

A CA is only saved once it has shown a certificate for GetCACert, and its
static challenge is encrypted before it reaches the store. Host imports are
parsed completely before anything is written, so a bad row changes nothing.
Refusals are L{InvalidAdminInput}; the admin API answers them 422.
"""

import csv
import io
from urllib.parse import urlsplit

from scepproxyd.jsoninput import JsonInputError, read_json
from scepproxyd.platforms import PLATFORMS
from scepproxyd.profiles import variables
from scepproxyd.scep import codec
from scepproxyd.scep.identifier import CA_NAME
from scepproxyd.scep.upstream import UpstreamError

MAX_CHALLENGE_LENGTH = 1024
HOST_UUID_PATTERN = r"[A-Za-z0-9._-]{1,255}"
#: The end-user attributes of a host, as the API, the import and ``scepproxyctl host set`` name them.
END_USER_FIELDS = ("idp_username", "idp_full_name", "idp_groups", "idp_department", "idp_email")
MAX_END_USER_VALUE = 255
MAX_GROUPS = 100
MAX_SECRET_LENGTH = 4096
#: What a secret's name may be: what follows FLEET_SECRET_ in a variable.
class InvalidAdminInput(Exception):
    """
    An admin's input that breaks a rule here; ``message`` says which, ``field`` names the input.

    The rules know nothing of HTTP: the admin API turns this into its 422
    answer with the same message and field.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def check_ca_name(name: str) -> str:
    if not CA_NAME.fullmatch(name):
        raise InvalidAdminInput(
            "name must be 1-255 letters, digits or underscores (it becomes part of profile variable names)",
            field="name",
        )
    return name


def check_ca_url(url: str) -> str:
    """An absolute http(s) URL, parsed strictly: no credentials, no fragment, no spaces."""
    expected = "url must be an absolute http:// or https:// URL with a host"
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidAdminInput("url must not contain spaces or control characters", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise InvalidAdminInput("%s (%s)" % (expected, e), field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidAdminInput(expected, field="url")
    if "@" in parts.netloc:
        raise InvalidAdminInput("url must not contain a user name or password", field="url")
    if parts.fragment or url.endswith("#"):
        raise InvalidAdminInput("url must not have a fragment", field="url")
    return url


def check_challenge(challenge: str) -> str:
    if not challenge:
        raise InvalidAdminInput("challenge must not be empty", field="challenge")
    if len(challenge) > MAX_CHALLENGE_LENGTH:
        raise InvalidAdminInput("challenge must be at most %d characters" % (MAX_CHALLENGE_LENGTH,), field="challenge")
    return challenge


CA_MODES = ("passthrough", "ra")


def check_ca_mode(mode) -> str:
    if mode not in CA_MODES:
        raise InvalidAdminInput("mode must be one of %s" % (", ".join(CA_MODES),), field="mode")
    return mode


def check_ra_certificate(source, mode: str) -> str | None:
    """How to get a new RA certificate (``enroll`` or ``self-signed``), or None to keep the one there is."""
    from scepproxyd.scep.ra import RA_CERTIFICATE_SOURCES

    if source is None:
        return None
    if source not in RA_CERTIFICATE_SOURCES:
        raise InvalidAdminInput("ra_certificate must be one of %s" % (", ".join(RA_CERTIFICATE_SOURCES),),
                                field="ra_certificate")
    if mode != "ra":
        raise InvalidAdminInput("ra_certificate applies to a CA in mode ra", field="ra_certificate")
    return source


async def check_ca_answers(upstream, url: str) -> None:
    """Ask the CA for its certificate now, so a wrong URL is caught by the admin, not by devices."""
    upstream.forget(url)
    try:
        answer = await upstream.get_ca_cert(url)
    except UpstreamError as e:
        raise InvalidAdminInput("CA did not answer GetCACert: %s" % (e.reason,), field="url") from None
    if answer.status != 200:
        raise InvalidAdminInput("CA answered GetCACert with HTTP %d, not a certificate" % (answer.status,), field="url")
    if not codec.ca_certificates(answer.body):
        raise InvalidAdminInput("CA answered GetCACert without a certificate", field="url")


def _check_text(value, name: str, where: str = "", limit: int = MAX_END_USER_VALUE) -> str:
    """One end-user value: a printable string of 1-``limit`` characters without spaces at either end."""
    if not isinstance(value, str):
        raise InvalidAdminInput(where + "%s must be a string or null" % (name,), field=name)
    if not value or len(value) > limit:
        raise InvalidAdminInput(where + "%s must be 1-%d characters (null clears it)" % (name, limit), field=name)
    if not value.isprintable():
        raise InvalidAdminInput(
            where + "%s must be printable text (no control or line-break characters)" % (name,), field=name)
    if value != value.strip():
        raise InvalidAdminInput(where + "%s must not start or end with a space" % (name,), field=name)
    return value


def _check_groups(value, where: str = "") -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(group, str) for group in value):
        raise InvalidAdminInput(where + "idp_groups must be a list of group names (strings)", field="idp_groups")
    if len(value) > MAX_GROUPS:
        raise InvalidAdminInput(where + "idp_groups must have at most %d groups" % (MAX_GROUPS,), field="idp_groups")
    for group in value:
        _check_text(group, "idp_groups", where)
        if "," in group:
            raise InvalidAdminInput(
                where + "idp_groups: group %r has a comma; $%s renders the groups"
                " comma-separated, so a name cannot contain one" % (group, variables.HOST_END_USER_IDP_GROUPS),
                field="idp_groups",
            )
    if len(set(value)) != len(value):
        raise InvalidAdminInput(where + "idp_groups names a group twice", field="idp_groups")
    return tuple(value)


def check_end_user(body: dict, where: str = "") -> dict:
    """
    The end-user changes in ``body``: each of END_USER_FIELDS present (null or an empty list clears it).

    Values must be printable (they are rendered into profiles and shown to
    operators); ``idp_email`` must look like an address; ``idp_groups`` is a
    list of group names without commas (the variable joins them with commas).
    """
    changes = {}
    for name in END_USER_FIELDS:
        if name not in body:
            continue
        value = body[name]
        if name == "idp_groups":
            changes[name] = () if value is None else _check_groups(value, where)
        elif value is None:
            changes[name] = None
        else:
            changes[name] = _check_text(value, name, where)
            if name == "idp_email" and (value.count("@") != 1 or " " in value or value.startswith("@")
                                        or value.endswith("@")):
                raise InvalidAdminInput(where + "idp_email must be an address such as user@example.com",
                                        field=name)
    return changes


def check_secret_name(name: str) -> str:
    if not variables.SECRET_NAME.fullmatch(name):
        raise InvalidAdminInput(
            "secret name must be 1-255 letters, digits or underscores (profiles write it as $FLEET_SECRET_<NAME>)",
            field="name",
        )
    return name


def check_secret_value(value) -> str:
    """A secret's value: 1-4096 characters, none of them a control character other than tab.

    It is rendered into profiles (XML and JSON), which cannot carry most
    control characters, and a line break at either end is almost always a
    mistake of the tool that wrote it.
    """
    if not isinstance(value, str) or not value:
        raise InvalidAdminInput("value must be a non-empty string", field="value")
    if len(value) > MAX_SECRET_LENGTH:
        raise InvalidAdminInput("value must be at most %d characters" % (MAX_SECRET_LENGTH,), field="value")
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
        raise InvalidAdminInput("value must not contain control characters (tab excepted)", field="value")
    if any(c in "\ufffe\uffff" or "\ud800" <= c <= "\udfff" for c in value):
        raise InvalidAdminInput("value must not contain U+FFFE, U+FFFF or lone surrogates (XML cannot carry them)",
                                field="value")
    return value


def _check_host_row(index: int, uuid, serial, platform) -> tuple[str, str | None, str]:
    import re

    where = "row %d: " % (index,)
    if not isinstance(uuid, str) or not re.fullmatch(HOST_UUID_PATTERN, uuid):
        raise InvalidAdminInput(where + "uuid must be 1-255 letters, digits, '.', '_' or '-'", field="uuid")
    if serial is not None and (not isinstance(serial, str) or len(serial) > 255):
        raise InvalidAdminInput(where + "serial must be a string of at most 255 characters", field="serial")
    if platform not in PLATFORMS:
        raise InvalidAdminInput(where + "platform must be one of %s" % (", ".join(PLATFORMS),), field="platform")
    return uuid, serial or None, platform


def check_host(uuid, serial, platform) -> tuple[str, str | None, str]:
    try:
        return _check_host_row(1, uuid, serial, platform)
    except InvalidAdminInput as e:
        raise InvalidAdminInput(e.message.removeprefix("row 1: "), field=e.field) from None


def _csv_rows(text: str) -> list[tuple]:
    """(uuid, serial, platform) of each CSV line after the header; a line the csv module cannot read is named."""
    nul = text.find("\0")
    if nul >= 0:
        raise InvalidAdminInput("CSV line %d has a NUL character" % (text.count("\n", 0, nul) + 1,), field="file")
    reader = csv.reader(io.StringIO(text))
    rows = []
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if "uuid" not in header or "platform" not in header:
            raise InvalidAdminInput("CSV import needs a header line with uuid, serial, platform", field="file")
        for line in reader:
            if not any(cell.strip() for cell in line):
                continue
            if len(line) != len(header):
                raise InvalidAdminInput(
                    "row %d: expected %d columns, got %d" % (len(rows) + 1, len(header), len(line)),
                    field="file",
                )
            record = dict(zip(header, (cell.strip() for cell in line)))
            end_user = {name: record[name] or None for name in END_USER_FIELDS if name in record}
            if end_user.get("idp_groups") is not None:
                end_user["idp_groups"] = [group.strip() for group in end_user["idp_groups"].split(",")]
            rows.append((record.get("uuid"), record.get("serial") or None, record.get("platform"), end_user))
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            reason = "has a field longer than %d characters" % (csv.field_size_limit(),)
        else:
            reason = "cannot be read as CSV (%s)" % (e,)
        raise InvalidAdminInput("CSV line %d %s" % (reader.line_num, reason), field="file") from None
    return rows


def parse_host_import(raw: bytes, content_type: str) -> list[tuple[str, str | None, str, dict]]:
    """
    Hosts from JSON (a list of objects) or CSV (header uuid,serial,platform); all rows checked.

    Each row is (uuid, serial, platform, end-user changes): the END_USER_FIELDS
    a JSON object has, or the CSV has columns for (optional columns; an empty
    cell clears the value, ``idp_groups`` is comma-separated in its cell).
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidAdminInput("import must be UTF-8 text", field="file") from None
    if "json" in content_type or text.lstrip().startswith(("[", "{")):
        try:
            data = read_json(raw, "import")
        except JsonInputError as e:
            raise InvalidAdminInput(e.message, field="file") from None
        if isinstance(data, dict) and isinstance(data.get("hosts"), list):
            data = data["hosts"]
        if not isinstance(data, list):
            raise InvalidAdminInput("JSON import must be a list of {uuid, serial, platform} objects", field="file")
        rows = []
        for index, item in enumerate(data, 1):
            if not isinstance(item, dict):
                raise InvalidAdminInput(
                    "row %d: must be an object with uuid, serial, platform" % (index,), field="file"
                )
            rows.append((item.get("uuid"), item.get("serial"), item.get("platform"),
                         {name: item[name] for name in END_USER_FIELDS if name in item}))
    else:
        rows = _csv_rows(text)
    if not rows:
        raise InvalidAdminInput("import has no hosts", field="file")
    checked = [
        _check_host_row(i, *row[:3]) + (check_end_user(row[3], "row %d: " % (i,)),)
        for i, row in enumerate(rows, 1)
    ]
    seen = set()
    for index, (uuid, *_) in enumerate(checked, 1):
        if uuid in seen:
            raise InvalidAdminInput("row %d: host %s appears twice" % (index, uuid), field="uuid")
        seen.add(uuid)
    return checked
