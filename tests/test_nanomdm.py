"""The NanoMDM backend: enqueue through StubTreq and a Clock, webhook parsing, backoff, one real port."""

import base64
import json
import plistlib

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols import policies
from twisted.web import resource, server

from scepproxyd.delivery.nanomdm import (
    CommandReport,
    DeliveryError,
    NanoMDMClient,
    backoff_delay,
    install_profile_command,
    parse_webhook,
)
from scepproxyd.scep.upstream import make_http_client
from support.nanomdm_fake import (
    PROFILE_ERROR_CHAIN,
    FakeNanoMDM,
    acknowledge_event,
    checkin_event,
    idle_event,
    post_event,
)

KEY = "s3cret-api-key"
BASE = "http://nanomdm.test:9000"
UDID = "0000FE00-4C2A1D9E3A6B802E"
COMMAND = "5A1E7E4C-9F1B-4E54-B3C1-2D4A8A1B0C9D"
PROFILE = b"<?xml version='1.0'?><plist><dict><key>Challenge</key><string>PROFILE-SECRET</string></dict></plist>"


def client_for(fake, key=KEY, clock=None, base=BASE, timeout=30.0):
    clock = clock or Clock()
    stub = StubTreq(fake)
    return NanoMDMClient(stub, clock, base, key, timeout=timeout), stub, clock


async def failure_of(d) -> DeliveryError:
    with pytest.raises(DeliveryError) as e:
        await d
    return e.value


# -- the command -----------------------------------------------------------------


def test_install_profile_command_is_an_xml_plist_with_the_profile_as_data():
    raw = install_profile_command(COMMAND, PROFILE)
    assert raw.startswith(b"<?xml")
    assert b"<data>" in raw
    assert plistlib.loads(raw) == {
        "CommandUUID": COMMAND,
        "Command": {"RequestType": "InstallProfile", "Payload": PROFILE},
    }
    with pytest.raises(ValueError):
        install_profile_command("", PROFILE)


# -- enqueue -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_enqueue_puts_the_command_with_basic_auth():
    fake = FakeNanoMDM(api_key=KEY)
    client, _, clock = client_for(fake, base=BASE + "/")
    assert await client.enqueue(UDID, COMMAND, PROFILE) is None
    (seen,) = fake.requests
    assert seen.method == b"PUT"
    assert seen.raw_path == b"/v1/enqueue/" + UDID.encode()
    assert seen.ids == (UDID,)
    assert seen.auth == ("nanomdm", KEY)
    assert seen.content_type == b"application/x-apple-plist"
    assert seen.command["CommandUUID"] == COMMAND
    assert seen.command["Command"]["RequestType"] == "InstallProfile"
    assert seen.command["Command"]["Payload"] == PROFILE
    assert fake.queued_uuids(UDID) == [COMMAND]
    assert clock.getDelayedCalls() == []  # the deadline is gone once answered


@pytest_twisted.ensureDeferred
async def test_odd_enrollment_ids_are_escaped():
    fake = FakeNanoMDM(api_key=KEY)
    client, _, _ = client_for(fake)
    odd = UDID + ":user name/ü?#%"
    await client.enqueue(odd, COMMAND, PROFILE)
    (seen,) = fake.requests
    assert seen.ids == (odd,)
    assert seen.raw_path == b"/v1/enqueue/" + UDID.encode() + b"%3Auser%20name%2F%C3%BC%3F%23%25"


@pytest_twisted.ensureDeferred
async def test_ids_nanomdm_would_split_or_drop_are_refused_before_sending():
    fake = FakeNanoMDM(api_key=KEY)
    client, _, _ = client_for(fake)
    for bad in ("A,B", ""):
        e = await failure_of(client.enqueue(bad, COMMAND, PROFILE))
        assert not e.retryable
    assert fake.requests == []


@pytest_twisted.ensureDeferred
async def test_nanomdm_down_is_retryable_then_works_again():
    fake = FakeNanoMDM(api_key=KEY)
    fake.down()
    client, _, _ = client_for(fake)
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert e.retryable and e.status == 500
    assert str(e) == "NanoMDM failed (HTTP 500)"
    fake.up()
    await client.enqueue(UDID, COMMAND, PROFILE)
    assert fake.queued_uuids(UDID) == [COMMAND]


@pytest_twisted.ensureDeferred
async def test_wrong_api_key_is_401_and_final():
    fake = FakeNanoMDM(api_key=KEY)
    client, _, _ = client_for(fake, key="not-the-key")
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert not e.retryable and e.status == 401
    assert "NanoMDM refused the command (HTTP 401)" in str(e)
    assert "not-the-key" not in str(e)
    assert fake.queues == {}


@pytest_twisted.ensureDeferred
async def test_wrong_url_is_final():
    client, _, _ = client_for(FakeNanoMDM(api_key=KEY), base=BASE + "/nanomdm")
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert not e.retryable and "HTTP 404" in str(e)


class NotNanoMDM(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.setHeader(b"Content-Type", b"text/html")
        return b"<html>welcome</html>"


@pytest_twisted.ensureDeferred
async def test_a_200_that_is_not_nanomdm_json_is_final():
    client, _, _ = client_for(NotNanoMDM())
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert not e.retryable and "is the URL NanoMDM's?" in str(e)


@pytest_twisted.ensureDeferred
async def test_unknown_enrollment_is_final_and_named():
    fake = FakeNanoMDM(api_key=KEY, known_ids={"SOME-OTHER-DEVICE"})
    client, _, _ = client_for(fake)
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert not e.retryable and e.status == 500
    assert str(e) == "NanoMDM has no enrollment %s" % (UDID,)


@pytest_twisted.ensureDeferred
async def test_per_id_enqueue_error_is_final_and_names_the_id():
    fake = FakeNanoMDM(api_key=KEY)
    fake.id_errors[UDID] = "open /var/db/nanomdm/%s/Queue: permission denied" % (UDID,)
    client, _, _ = client_for(fake)
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert not e.retryable
    assert str(e).startswith("NanoMDM could not queue the command for enrollment %s: open " % (UDID,))


@pytest_twisted.ensureDeferred
async def test_queued_but_push_failed_is_delivered():
    """NanoMDM answers 500 when only the APNs push failed; the command is queued all the same."""
    fake = FakeNanoMDM(api_key=KEY, push_fails=True)
    client, _, _ = client_for(fake)
    await client.enqueue(UDID, COMMAND, PROFILE)
    assert fake.queued_uuids(UDID) == [COMMAND]


@pytest_twisted.ensureDeferred
async def test_retry_of_a_command_already_queued_is_delivered():
    """An attempt whose answer was lost queued the command; the retry's duplicate means done."""
    fake = FakeNanoMDM(api_key=KEY)
    client, _, _ = client_for(fake)
    await client.enqueue(UDID, COMMAND, PROFILE)
    await client.enqueue(UDID, COMMAND, PROFILE)
    assert len(fake.requests) == 2
    assert fake.queued_uuids(UDID) == [COMMAND]


class FailingStorage(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.setResponseCode(500)
        return json.dumps({"command_error": "inserting command: dial tcp 10.0.0.5:3306: connection refused"}).encode()


@pytest_twisted.ensureDeferred
async def test_unexplained_enqueue_failure_is_retryable_with_its_reason():
    client, _, _ = client_for(FailingStorage())
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert e.retryable
    assert str(e) == "NanoMDM could not queue the command (HTTP 500): inserting command: dial tcp 10.0.0.5:3306: connection refused"


@pytest_twisted.ensureDeferred
async def test_no_answer_in_time_is_retryable():
    fake = FakeNanoMDM(api_key=KEY)
    fake.hang = True
    client, stub, clock = client_for(fake, timeout=10)
    d = client.enqueue(UDID, COMMAND, PROFILE)
    stub.flush()
    assert not d.called
    clock.advance(10.1)
    e = await failure_of(d)
    assert e.retryable and str(e) == "NanoMDM sent no answer within 10 s"
    assert len(fake.pending) == 1


@pytest_twisted.ensureDeferred
async def test_unreachable_is_retryable():
    class Refusing:
        def request(self, *a, **kw):
            return defer.fail(ConnectionRefusedError())

    client = NanoMDMClient(Refusing(), Clock(), BASE, KEY)
    e = await failure_of(client.enqueue(UDID, COMMAND, PROFILE))
    assert e.retryable and str(e) == "NanoMDM unreachable (ConnectionRefusedError)"


class EchoingError(resource.Resource):
    """A NanoMDM whose error text repeats what it was sent: nothing secret may pass through."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(500)
        text = "bad %s %s" % (request.getHeader(b"Authorization"), request.getPassword().decode())
        return json.dumps({"status": {UDID: {"command_error": text}}}).encode()


@pytest_twisted.ensureDeferred
async def test_api_key_and_profile_never_appear_in_errors_or_logs():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        modes = []
        down = FakeNanoMDM(api_key=KEY)
        down.down()
        modes.append((down, KEY))
        modes.append((FakeNanoMDM(api_key="other"), KEY))
        modes.append((FakeNanoMDM(api_key=KEY, known_ids=()), KEY))
        per_id = FakeNanoMDM(api_key=KEY)
        per_id.id_errors[UDID] = "broken"
        modes.append((per_id, KEY))
        modes.append((EchoingError(), KEY))
        modes.append((NotNanoMDM(), KEY))
        errors = []
        for fake, key in modes:
            client, _, _ = client_for(fake, key=key)
            errors.append(await failure_of(client.enqueue(UDID, COMMAND, PROFILE)))
            assert KEY not in repr(client)
        hanging = FakeNanoMDM(api_key=KEY)
        hanging.hang = True
        client, stub, clock = client_for(hanging)
        d = client.enqueue(UDID, COMMAND, PROFILE)
        stub.flush()
        clock.advance(31)
        errors.append(await failure_of(d))
        client, _, _ = client_for(FakeNanoMDM(api_key=KEY, push_fails=True))
        await client.enqueue(UDID, COMMAND, PROFILE)  # logs a warning
    finally:
        globalLogPublisher.removeObserver(events.append)
    basic = base64.b64encode(("nanomdm:" + KEY).encode()).decode()
    for e in errors:
        for text in (str(e), repr(e), repr(e.args)):
            assert KEY not in text and basic not in text and "PROFILE-SECRET" not in text
    logged = " ".join(repr(event) for event in events)
    assert "queued command" in logged
    assert KEY not in logged and basic not in logged and "PROFILE-SECRET" not in logged


# -- webhook -------------------------------------------------------------------------


def test_acknowledged_report():
    assert parse_webhook(acknowledge_event(UDID, COMMAND)) == [
        CommandReport(command_uuid=COMMAND, enrollment_id=UDID, status="Acknowledged", error=None)
    ]


def test_error_report_carries_the_error_chain():
    (report,) = parse_webhook(acknowledge_event(UDID, COMMAND, "Error", PROFILE_ERROR_CHAIN))
    assert report.status == "Error" and report.command_uuid == COMMAND
    assert report.error == (
        "Profile Installation Failed (MCInstallationErrorDomain 4001); "
        "The SCEP server returned an invalid response. (MCSCEPErrorDomain 22013)"
    )


def test_error_report_without_a_readable_chain_has_no_text():
    assert parse_webhook(acknowledge_event(UDID, COMMAND, "Error")) == [CommandReport(COMMAND, UDID, "Error", None)]
    broken = acknowledge_event(UDID, COMMAND, "Error", raw_payload="%%% not base64")
    assert parse_webhook(broken) == [CommandReport(COMMAND, UDID, "Error", None)]


def test_command_format_error_is_an_error():
    (report,) = parse_webhook(acknowledge_event(UDID, COMMAND, "CommandFormatError"))
    assert report.status == "Error" and "CommandFormatError" in report.error


def test_not_now_report():
    assert parse_webhook(acknowledge_event(UDID, COMMAND, "NotNow")) == [CommandReport(COMMAND, UDID, "NotNow", None)]


def test_user_channel_report_names_nanomdm_enrollment_id():
    user_channel = UDID + ":A1B2C3D4-0000-1111-2222-333344445555"
    (report,) = parse_webhook(acknowledge_event(user_channel, COMMAND))
    assert report.enrollment_id == user_channel


def test_events_without_a_command_result_give_nothing():
    assert parse_webhook(idle_event(UDID)) == []
    for topic in ("mdm.Authenticate", "mdm.TokenUpdate", "mdm.CheckOut"):
        assert parse_webhook(checkin_event(topic, UDID)) == []
    assert parse_webhook(b'{"topic": "mdm.Connect"}') == []


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "^webhook body is not valid JSON: Expecting value"),
        (b"<html>", "^webhook body is not valid JSON: Expecting value"),
        (b"\xff\xfe", "^webhook body is not valid UTF-8: byte 0xff at position 0$"),
        (b"[1, 2]", "not a JSON object"),
        (b'"mdm.Connect"', "not a JSON object"),
        (b'{"topic": "mdm.Connect", "acknowledge_event": []}', "acknowledge_event is not a JSON object"),
        (b'{"topic": "mdm.Connect", "acknowledge_event": {"udid": "X"}}', "no status"),
        (b'{"topic": "mdm.Connect", "acknowledge_event": {"udid": "X", "status": "Maybe", "command_uuid": "C"}}',
         "unknown status"),
        (b'{"topic": "mdm.Connect", "acknowledge_event": {"status": "Acknowledged", "command_uuid": "C"}}',
         "names no device"),
    ],
)
def test_garbage_is_refused_with_a_reason(body, reason):
    with pytest.raises(ValueError, match=reason):
        parse_webhook(body)


class WebhookReceiver(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.reports = []

    def render_POST(self, request):
        self.reports.extend(parse_webhook(request.content.read()))
        return b""


@pytest_twisted.ensureDeferred
async def test_fake_plays_back_acknowledgements_to_a_webhook():
    fake = FakeNanoMDM(api_key=KEY)
    client, _, _ = client_for(fake)
    await client.enqueue(UDID, COMMAND, PROFILE)
    await client.enqueue(UDID, "SECOND-COMMAND", PROFILE)
    receiver = WebhookReceiver()
    hook = StubTreq(receiver)
    assert await fake.acknowledge(hook, "http://scepproxyd.test/hook", COMMAND, "NotNow") == 200
    assert await fake.acknowledge(hook, "http://scepproxyd.test/hook", COMMAND) == 200
    assert await fake.acknowledge(hook, "http://scepproxyd.test/hook", "SECOND-COMMAND", "Error", PROFILE_ERROR_CHAIN) == 200
    assert await post_event(hook, "http://scepproxyd.test/hook", idle_event(UDID)) == 200
    assert [(r.command_uuid, r.status) for r in receiver.reports] == [
        (COMMAND, "NotNow"), (COMMAND, "Acknowledged"), ("SECOND-COMMAND", "Error"),
    ]
    assert receiver.reports[-1].error.startswith("Profile Installation Failed")
    assert fake.queues == {UDID: []}


# -- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 320, 600]
    assert backoff_delay(10**6) == 600.0
    assert backoff_delay(3, base=1.0, cap=3.0) == 3.0
    assert backoff_delay(2, base=0.5) == 1.0
    with pytest.raises(ValueError):
        backoff_delay(0)


# -- a real port and the real pooled client -------------------------------------------


class CountingFactory(policies.WrappingFactory):
    """Counts the connections NanoMDM accepts and can drop the open ones."""

    accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return super().buildProtocol(addr)

    def drop_connections(self):
        for connection in list(self.protocols):
            connection.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_real_port_pooled_client_survives_nanomdm_restart():
    fake = FakeNanoMDM(api_key=KEY)
    site = CountingFactory(server.Site(fake))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    number = port.getHost().port
    http, pool = make_http_client(reactor, 2)
    client = NanoMDMClient(http, reactor, "http://127.0.0.1:%d" % (number,), KEY, timeout=5)
    try:
        await client.enqueue(UDID, "FIRST", PROFILE)
        await client.enqueue(UDID, "SECOND", PROFILE)
        assert fake.queued_uuids(UDID) == ["FIRST", "SECOND"]
        assert site.accepted == 1  # one pooled, persistent connection

        # NanoMDM stops: its port closes and its open connections go.
        await port.stopListening()
        site.drop_connections()
        await task.deferLater(reactor, 0.05, lambda: None)
        e = await failure_of(client.enqueue(UDID, "THIRD", PROFILE))
        assert e.retryable
        assert "unreachable" in str(e)

        port = reactor.listenTCP(number, site, interface="127.0.0.1")
        await client.enqueue(UDID, "THIRD", PROFILE)
        assert fake.queued_uuids(UDID) == ["FIRST", "SECOND", "THIRD"]
        assert len(fake.requests) == 3
    finally:
        await defer.maybeDeferred(port.stopListening)
        await pool.closeCachedConnections()
