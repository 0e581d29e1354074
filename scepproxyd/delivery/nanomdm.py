"""Deliver profiles through NanoMDM: enqueue InstallProfile commands, read its webhook.

NanoMDM answers an enqueue with a JSON result whose HTTP status only says
"all went well" (200), "some ids failed" (207) or "everything failed" (500).
A 500 is also what it sends when the command *was* queued but the APNs push
failed, when the enrollment id is unknown to its database, and when the
command UUID is already queued. So the status code alone cannot say whether
to retry: the JSON body decides, and only an unexplained failure is retried.

Retries reuse the command UUID. If an earlier attempt reached NanoMDM but its
answer was lost (our timeout), NanoMDM refuses the retry as a duplicate; that
means the command is already queued, which is a success.
"""

import base64
import plistlib
from urllib.parse import quote

import attrs
from twisted.internet import defer, error

from scepproxyd.jsoninput import JsonInputError, read_json
from scepproxyd.httpbody import BodyTooLarge, read_limited
from scepproxyd.daemon.logs import get_logger

API_USER = "nanomdm"
COMMAND_CONTENT_TYPE = b"application/x-apple-plist"
MAX_ANSWER_BYTES = 64 * 1024
_SHORT = 160  # longest piece of NanoMDM's own error text we repeat
_COMMAND_STATUSES = {"Acknowledged": "Acknowledged", "NotNow": "NotNow", "Error": "Error", "CommandFormatError": "Error"}
SHARED_IPAD_USER_ID = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"


class DeliveryError(Exception):
    """NanoMDM did not take the command.

    ``retryable`` says whether the same request may succeed later (NanoMDM
    down, slow, or failing for a reason it did not explain); a refusal that
    needs an admin (bad API key, unknown enrollment, wrong URL) is not.
    The message never holds the API key or the profile.
    """

    def __init__(self, reason: str, retryable: bool, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status


def install_profile_command(command_uuid: str, profile: bytes) -> bytes:
    """The raw MDM command plist NanoMDM queues and hands to the device as-is."""
    if not command_uuid:
        raise ValueError("an MDM command needs a CommandUUID")
    if not isinstance(profile, bytes):
        raise TypeError("the profile must be bytes")
    command = {
        "CommandUUID": command_uuid,
        "Command": {"RequestType": "InstallProfile", "Payload": profile},
    }
    return plistlib.dumps(command, fmt=plistlib.FMT_XML)


def backoff_delay(attempts: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Seconds to wait before attempt number ``attempts + 1``: doubling from ``base``, at most ``cap``."""
    if attempts < 1:
        raise ValueError("attempts counts failed attempts and starts at 1, got %r" % (attempts,))
    return float(min(cap, base * 2.0 ** min(attempts - 1, 64)))


def _short(text: object, secrets: tuple[str, ...] = ()) -> str:
    """NanoMDM's error text, short, and without our credentials should it echo them."""
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= _SHORT else text[: _SHORT - 1] + "…"


class NanoMDMClient:
    """Enqueue InstallProfile commands with NanoMDM's ``PUT /v1/enqueue/<id>`` API."""

    log = get_logger(__name__)

    def __init__(self, http_client, clock, base_url: str, api_key: str, timeout: float = 30.0):
        self._http = http_client
        self._clock = clock
        self._base = base_url.rstrip("/")
        credentials = base64.b64encode(("%s:%s" % (API_USER, api_key)).encode("utf-8"))
        self._authorization = b"Basic " + credentials
        self._secrets = (api_key, credentials.decode("ascii"))
        self._timeout = timeout

    def __repr__(self) -> str:
        return "<NanoMDMClient %s>" % (self._base,)

    def enqueue(self, enrollment_id: str, command_uuid: str, profile: bytes) -> defer.Deferred:
        """Queue the profile for one enrollment; fires with None or fails with L{DeliveryError}."""
        return defer.ensureDeferred(self._enqueue(enrollment_id, command_uuid, profile))

    async def _enqueue(self, enrollment_id: str, command_uuid: str, profile: bytes) -> None:
        if not enrollment_id:
            raise DeliveryError("empty enrollment id", retryable=False)
        if "," in enrollment_id:
            # NanoMDM unescapes the path and then splits it on commas.
            raise DeliveryError("enrollment id %r contains a comma" % (enrollment_id,), retryable=False)
        url = self._base + "/v1/enqueue/" + quote(enrollment_id, safe="")
        body = install_profile_command(command_uuid, profile)
        code, answer = await self._put(url, body)
        self._judge(enrollment_id, command_uuid, code, answer)
        self.log.info(
            "NanoMDM queued command {command} for enrollment {enrollment}",
            command=command_uuid, enrollment=enrollment_id,
        )

    async def _put(self, url: str, body: bytes) -> tuple[int, bytes | None]:
        """One PUT under one deadline for headers and body; answer None if unreadable."""
        headers = {b"Content-Type": [COMMAND_CONTENT_TYPE], b"Authorization": [self._authorization]}
        stage = [
            self._http.request(
                "PUT", url, data=body, headers=headers, unbuffered=True,
                allow_redirects=False, reactor=self._clock,
            )
        ]
        expired = []

        def give_up():
            expired.append(True)
            stage[0].cancel()

        deadline = self._clock.callLater(self._timeout, give_up)
        try:
            try:
                response = await stage[0]
            except Exception as e:
                if expired or isinstance(e, (TimeoutError, error.TimeoutError, error.TCPTimedOutError)):
                    raise DeliveryError(
                        "NanoMDM sent no answer within %g s" % (self._timeout,), retryable=True
                    ) from None
                raise DeliveryError(
                    "NanoMDM unreachable (%s)" % (type(e).__name__,), retryable=True
                ) from None
            stage[0] = read_limited(response, MAX_ANSWER_BYTES)
            try:
                raw = await stage[0]
            except BodyTooLarge:
                raw = None  # judged as "not NanoMDM's answer"
            except Exception:
                if expired:
                    raise DeliveryError(
                        "NanoMDM did not finish its answer within %g s" % (self._timeout,),
                        retryable=True, status=response.code,
                    ) from None
                raise DeliveryError(
                    "NanoMDM connection failed while it answered (HTTP %d)" % (response.code,),
                    retryable=True, status=response.code,
                ) from None
            return response.code, raw
        finally:
            if deadline.active():
                deadline.cancel()

    def _judge(self, enrollment_id: str, command_uuid: str, code: int, raw: bytes | None) -> None:
        """Raise L{DeliveryError} unless NanoMDM's answer says the command is queued."""
        if code in (401, 403):
            raise DeliveryError(
                "NanoMDM refused the command (HTTP %d): check the API key" % (code,), retryable=False, status=code
            )
        if code in (408, 429):
            raise DeliveryError("NanoMDM is busy (HTTP %d)" % (code,), retryable=True, status=code)
        if 300 <= code < 500:
            raise DeliveryError(
                "NanoMDM refused the command (HTTP %d): check the NanoMDM URL" % (code,), retryable=False, status=code
            )
        result = _json_object(raw)
        if result is None:
            if code >= 500:
                raise DeliveryError("NanoMDM failed (HTTP %d)" % (code,), retryable=True, status=code)
            raise DeliveryError(
                "HTTP %d without NanoMDM's JSON result: is the URL NanoMDM's?" % (code,), retryable=False, status=code
            )

        per_id = result.get("status") if isinstance(result.get("status"), dict) else {}
        for entry in per_id.values():
            if isinstance(entry, dict) and entry.get("command_error"):
                raise DeliveryError(
                    "NanoMDM could not queue the command for enrollment %s: %s"
                    % (enrollment_id, _short(entry["command_error"], self._secrets)),
                    retryable=False, status=code,
                )

        command_error = result.get("command_error")
        if command_error:
            text = str(command_error)
            lowered = text.lower()
            if "duplicate" in lowered or "already exists" in lowered:
                self.log.info(
                    "NanoMDM already holds command {command}: an earlier attempt queued it",
                    command=command_uuid,
                )
            elif "foreign key" in lowered:
                raise DeliveryError(
                    "NanoMDM has no enrollment %s" % (enrollment_id,), retryable=False, status=code
                )
            elif "decoding command" in lowered:
                raise DeliveryError("NanoMDM could not decode the command", retryable=False, status=code)
            else:
                raise DeliveryError(
                    "NanoMDM could not queue the command (HTTP %d): %s" % (code, _short(text, self._secrets)),
                    retryable=True, status=code,
                )
        elif code >= 300 and not _push_failed(result):
            raise DeliveryError("NanoMDM failed (HTTP %d)" % (code,), retryable=True, status=code)

        answered_uuid = result.get("command_uuid")
        if not command_error and answered_uuid and answered_uuid != command_uuid:
            raise DeliveryError(
                "NanoMDM queued command %s, not %s" % (_short(answered_uuid, self._secrets), command_uuid),
                retryable=False, status=code,
            )
        if _push_failed(result):
            # The command is queued; the device fetches it at its next check-in.
            self.log.warn(
                "NanoMDM queued command {command} for enrollment {enrollment} but its APNs push failed",
                command=command_uuid, enrollment=enrollment_id,
            )


def _json_object(raw: bytes | None) -> dict | None:
    if not raw:
        return None
    try:
        value = read_json(raw, "NanoMDM's answer")
    except JsonInputError:
        return None
    return value if isinstance(value, dict) else None


def _push_failed(result: dict) -> bool:
    if result.get("push_error"):
        return True
    per_id = result.get("status")
    if not isinstance(per_id, dict):
        return False
    return any(isinstance(entry, dict) and entry.get("push_error") for entry in per_id.values())


# -- webhook -------------------------------------------------------------------


@attrs.frozen
class CommandReport:
    """What a device said about one command: ``Acknowledged``, ``Error`` or ``NotNow``."""

    command_uuid: str
    enrollment_id: str
    status: str
    error: str | None = None


def parse_webhook(body: bytes) -> list[CommandReport]:
    """The command results in one NanoMDM (MicroMDM-style) webhook POST.

    Check-ins (``mdm.Authenticate``, ``mdm.TokenUpdate``, ...) and ``Idle``
    reports carry no command result and give ``[]``. ``CommandFormatError``
    (the device could not read the command) is reported as ``Error``.
    """
    event = read_json(body, "webhook body")  # its JsonInputError is a ValueError with the reason
    if not isinstance(event, dict):
        raise ValueError("webhook body is not a JSON object")
    if event.get("topic") != "mdm.Connect":
        return []
    ack = event.get("acknowledge_event")
    if ack is None:
        return []
    if not isinstance(ack, dict):
        raise ValueError("acknowledge_event is not a JSON object")
    status = ack.get("status")
    if not isinstance(status, str) or not status:
        raise ValueError("acknowledge_event has no status")
    if status == "Idle":
        return []
    if status not in _COMMAND_STATUSES:
        raise ValueError("acknowledge_event has an unknown status %r" % (status[:40],))
    command_uuid = ack.get("command_uuid")
    if command_uuid is None or command_uuid == "":
        return []
    if not isinstance(command_uuid, str):
        raise ValueError("acknowledge_event command_uuid is not a string")
    payload = _raw_payload(ack.get("raw_payload"))
    enrollment_id = _enrollment_id(ack, payload)
    if not enrollment_id:
        raise ValueError("acknowledge_event names no device (no udid or enrollment_id)")
    error_text = None
    if status == "CommandFormatError":
        error_text = _error_chain_text(payload) or "the device could not read the command (CommandFormatError)"
    elif status == "Error":
        error_text = _error_chain_text(payload)
    return [CommandReport(command_uuid, enrollment_id, _COMMAND_STATUSES[status], error_text)]


def _raw_payload(value) -> dict | None:
    """The device's own report (base64 of a plist), or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        payload = plistlib.loads(base64.b64decode(value, validate=True))
    except Exception:  # bad base64, not a plist, XML errors: the status still stands
        return None
    return payload if isinstance(payload, dict) else None


def _text(value) -> str:
    """A string of the report, or "": a NUL-bearing one is garbage no host or store could take."""
    return value if isinstance(value, str) and "\0" not in value else ""


def _enrollment_id(ack: dict, payload: dict | None) -> str:
    """NanoMDM's enrollment id: the device channel id, plus ``:<user>`` for a user channel."""
    payload = payload or {}
    device = (
        _text(ack.get("udid")) or _text(payload.get("UDID"))
        or _text(ack.get("enrollment_id")) or _text(payload.get("EnrollmentID"))
    )
    if not device:
        return ""
    user = ""
    user_id = _text(payload.get("UserID"))
    if _text(ack.get("udid")) or _text(payload.get("UDID")):
        if user_id == SHARED_IPAD_USER_ID:
            user = _text(payload.get("UserShortName"))
        else:
            user = user_id
    else:
        user = _text(payload.get("EnrollmentUserID"))
    return "%s:%s" % (device, user) if user else device


def _error_chain_text(payload: dict | None) -> str | None:
    """A short text from the report's ErrorChain: description and (domain code) of each link."""
    if not payload:
        return None
    chain = payload.get("ErrorChain")
    if not isinstance(chain, list):
        return None
    parts = []
    for link in chain:
        if not isinstance(link, dict):
            continue
        description = _text(link.get("LocalizedDescription")) or _text(link.get("USEnglishDescription"))
        where = " ".join(
            str(v) for v in (link.get("ErrorDomain"), link.get("ErrorCode")) if isinstance(v, (str, int)) and v != ""
        )
        if description and where:
            parts.append("%s (%s)" % (description.strip(), where))
        elif description or where:
            parts.append(description.strip() or where)
    if not parts:
        return None
    return _short("; ".join(parts))
