"""A small fake NanoMDM: its enqueue API, and playback of its webhook events.

``FakeNanoMDM`` is a twisted.web resource. Wrap it in ``StubTreq`` for unit
tests or in a ``Site`` on a real port for interop tests. It answers
``PUT /v1/enqueue/<id>[,<id>...]`` the way NanoMDM with its SQL storage does:

- HTTP basic auth, user ``nanomdm``, password the API key; else 401.
- The body must be a command plist with a ``CommandUUID`` and a
  ``Command.RequestType``; else 500 with a top-level ``command_error``.
- An id it does not know (``known_ids``) fails the whole enqueue: 500 and a
  foreign-key ``command_error``. A command UUID it already holds: 500 and a
  duplicate-entry ``command_error``.
- ``id_errors`` gives per-id ``command_error`` entries (as its file and
  key-value storages report them); ``push_fails`` per-id ``push_error``
  entries on a command that *is* queued. The status is 200, 207 or 500 by
  the same rule as NanoMDM's (no failed id, some, all).
- ``down()`` makes every request a bare 500 until ``up()``; ``hang`` leaves
  requests unanswered (kept in ``pending``).

Every request that reaches it is kept in ``requests``, as an ``EnqueueRequest``.
Unlike NanoMDM, it refuses methods other than PUT (405), so a client that
uses the wrong one is caught.
"""

import base64
import json
import plistlib
import uuid
from urllib.parse import unquote

import attrs
import treq
from twisted.internet import defer
from twisted.web import resource, server

API_USER = "nanomdm"
ENQUEUE_PREFIX = b"/v1/enqueue/"

PROFILE_ERROR_CHAIN = [
    {
        "ErrorCode": 4001,
        "ErrorDomain": "MCInstallationErrorDomain",
        "LocalizedDescription": "Profile Installation Failed",
        "USEnglishDescription": "Profile Installation Failed",
    },
    {
        "ErrorCode": 22013,
        "ErrorDomain": "MCSCEPErrorDomain",
        "LocalizedDescription": "The SCEP server returned an invalid response.",
        "USEnglishDescription": "The SCEP server returned an invalid response.",
    },
]


@attrs.frozen
class EnqueueRequest:
    method: bytes
    raw_path: bytes
    ids: tuple[str, ...]
    auth: tuple[str, str] | None
    content_type: bytes | None
    command: dict | None = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)


class FakeNanoMDM(resource.Resource):
    isLeaf = True

    def __init__(self, api_key: str = "test-api-key", known_ids=None, push_fails: bool = False):
        super().__init__()
        self.api_key = api_key
        self.known_ids = None if known_ids is None else set(known_ids)
        self.push_fails = push_fails
        self.id_errors: dict[str, str] = {}
        self.is_down = False
        self.hang = False
        self.requests: list[EnqueueRequest] = []
        self.pending: list = []
        self.queues: dict[str, list[dict]] = {}
        self._commands: set[str] = set()

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def queued_uuids(self, enrollment_id: str) -> list[str]:
        return [c["CommandUUID"] for c in self.queues.get(enrollment_id, [])]

    # -- HTTP --------------------------------------------------------------

    def render(self, request):
        if self.is_down:
            request.setResponseCode(500)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"Internal Server Error\n"
        if not request.path.startswith(ENQUEUE_PREFIX):
            request.setResponseCode(404)
            return b"404 page not found\n"
        body = request.content.read()
        ids = tuple(unquote(request.path[len(ENQUEUE_PREFIX):].decode("ascii")).split(","))
        user, password = request.getUser(), request.getPassword()
        auth = (user.decode("utf-8"), password.decode("utf-8")) if user or password else None
        command = _decode_command(body)
        self.requests.append(
            EnqueueRequest(
                request.method, request.path, ids, auth,
                request.getHeader(b"Content-Type"), command, body,
            )
        )
        if auth != (API_USER, self.api_key):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Basic realm="nanomdm"')
            return b"Unauthorized\n"
        if request.method != b"PUT":
            request.setResponseCode(405)
            return b"PUT only\n"
        if self.hang:
            self.pending.append(request)
            return server.NOT_DONE_YET
        code, result = self._enqueue(ids, command)
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(result, indent="\t").encode() + b"\n"

    def _enqueue(self, ids: tuple[str, ...], command: dict | None) -> tuple[int, dict]:
        if command is None:
            return 500, {"command_error": "decoding command: not a command plist"}
        result = {"command_uuid": command["CommandUUID"], "request_type": command["Command"]["RequestType"]}
        if ids == ("",):
            result["command_error"] = "no id(s) supplied to queue command to"
            return 500, result
        if command["CommandUUID"] in self._commands:
            result["command_error"] = (
                "inserting command: Error 1062 (23000): Duplicate entry '%s' for key 'commands.PRIMARY'"
                % (command["CommandUUID"],)
            )
            return 500, result
        if self.known_ids is not None and not set(ids) <= self.known_ids:
            result["command_error"] = (
                "insert enrollment queue : Error 1452 (23000): Cannot add or update a child row: "
                "a foreign key constraint fails"
            )
            return 500, result
        self._commands.add(command["CommandUUID"])
        status: dict[str, dict] = {}
        for enrollment_id in ids:
            if enrollment_id in self.id_errors:
                status[enrollment_id] = {"command_error": self.id_errors[enrollment_id]}
            else:
                self.queues.setdefault(enrollment_id, []).append(command)
        for enrollment_id in ids:
            entry = status.setdefault(enrollment_id, {})
            if self.push_fails:
                entry["push_error"] = "retrieving push info: no push info for %s" % (enrollment_id,)
            else:
                entry["push_result"] = str(uuid.uuid4()).upper()
        result["status"] = status
        failed = sum(1 for entry in status.values() if "command_error" in entry or "push_error" in entry)
        return (200 if failed == 0 else 500 if failed == len(ids) else 207), result

    # -- webhook playback --------------------------------------------------

    def acknowledge(self, http_client, webhook_url: str, command_uuid: str, status: str = "Acknowledged",
                    error_chain=None):
        """POST the device's report on a queued command to ``webhook_url``, like NanoMDM does.

        Fires with the webhook's HTTP status. The command leaves the queue
        unless the status is ``NotNow``.
        """
        for enrollment_id, queue in self.queues.items():
            for command in queue:
                if command["CommandUUID"] == command_uuid:
                    if status != "NotNow":
                        queue.remove(command)
                    body = acknowledge_event(enrollment_id, command_uuid, status, error_chain)
                    return post_event(http_client, webhook_url, body)
        raise KeyError("command %s is not queued" % (command_uuid,))


def _decode_command(body: bytes) -> dict | None:
    try:
        command = plistlib.loads(body)
    except Exception:
        return None
    if not isinstance(command, dict) or not isinstance(command.get("Command"), dict):
        return None
    if not command.get("CommandUUID") or not command["Command"].get("RequestType"):
        return None
    return command


# -- webhook events, shaped as NanoMDM's MicroMDM-compatible webhook sends them ---------


def _event(topic: str, **payloads) -> bytes:
    event = {"topic": topic, "event_id": "", "created_at": "2024-05-01T12:00:00.123456Z", **payloads}
    return json.dumps(event, indent="\t").encode()


def _b64_plist(value: dict) -> str:
    return base64.b64encode(plistlib.dumps(value)).decode("ascii")


def acknowledge_event(enrollment_id: str, command_uuid: str | None, status: str = "Acknowledged",
                      error_chain=None, raw_payload: str | None = None) -> bytes:
    """An ``mdm.Connect`` event: a device's report on a command (or ``Idle``).

    ``enrollment_id`` is NanoMDM's id: ``UDID`` for the device channel,
    ``UDID:UserID`` for a user channel. ``raw_payload`` replaces the encoded
    device report, to send a broken one.
    """
    udid, _, user_id = enrollment_id.partition(":")
    report = {"UDID": udid, "Status": status}
    if user_id:
        report["UserID"] = user_id
    if command_uuid:
        report["CommandUUID"] = command_uuid
    if error_chain is not None:
        report["ErrorChain"] = error_chain
    ack = {"udid": udid, "status": status}
    if command_uuid:
        ack["command_uuid"] = command_uuid
    ack["raw_payload"] = _b64_plist(report) if raw_payload is None else raw_payload
    return _event("mdm.Connect", acknowledge_event=ack)


def idle_event(udid: str) -> bytes:
    return acknowledge_event(udid, None, "Idle")


def checkin_event(topic: str, udid: str) -> bytes:
    """A check-in event (``mdm.Authenticate``, ``mdm.TokenUpdate``, ``mdm.CheckOut``...)."""
    message_type = topic.split(".", 1)[1]
    report = {"MessageType": message_type, "UDID": udid, "Topic": "com.apple.mgmt.External.test"}
    return _event(
        topic,
        checkin_event={"udid": udid, "url_params": None, "raw_payload": _b64_plist(report)},
    )


async def _post(http_client, url: str, body: bytes) -> int:
    response = await http_client.request(
        "POST", url, data=body, headers={b"Content-Type": [b"application/json; charset=utf-8"]}
    )
    await response.content()
    return response.code


def post_event(http_client, url: str, body: bytes):
    """POST one webhook event; fires with the answer's HTTP status (NanoMDM wants 200)."""
    return defer.ensureDeferred(_post(http_client or treq, url, body))
