"""Shared web helpers: answering later when the client may be gone, and choice filters."""

import json

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from scepproxyd.web.api import Conflict, Invalid, JsonApi, one_of, query_choice, refusing
from scepproxyd.web.later import answer_later


def real_request() -> server.Request:
    """A twisted.web Request on a fake channel: it refuses finish() after its connection is lost, as in production."""
    return server.Request(DummyChannel(), False)


def write_ok(request, result):
    request.setResponseCode(200)
    request.write(result)
    request.finish()


def test_the_answer_is_written_when_it_is_ready():
    request = real_request()
    work = defer.Deferred()
    assert answer_later(request, work, write_ok) == server.NOT_DONE_YET
    assert not request.finished
    work.callback(b"done\n")
    assert request.finished and request.code == 200


def test_an_answer_for_a_client_that_hung_up_is_dropped_without_an_error():
    request = real_request()
    work = defer.Deferred()
    outcome = []
    answer_later(request, work, write_ok)
    request.connectionLost(Failure(ConnectionLost()))
    work.addBoth(outcome.append)
    work.callback(b"done\n")  # write_ok would raise RuntimeError in finish()
    assert outcome == [None] and not request.finished


def api_request(path: bytes) -> DummyRequest:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    request.method = b"GET"
    request.content = None
    request.requestHeaders.setRawHeaders(b"Authorization", [b"Bearer secret-token"])
    return request


def slow_api():
    pending = defer.Deferred()

    async def slow(request):
        return await pending

    return JsonApi("secret-token", [("GET", r"/api/v1/slow", slow)], realm="test", reactor=object()), pending


def test_the_json_api_answers_when_its_handler_is_done():
    api, pending = slow_api()
    request = api_request(b"/api/v1/slow")
    assert api.render(request) == server.NOT_DONE_YET
    pending.callback({"answer": 42})
    assert request.finished == 1 and request.responseCode == 200
    assert json.loads(b"".join(request.written)) == {"answer": 42}


def test_the_json_api_does_not_answer_a_client_that_hung_up():
    api, pending = slow_api()
    request = api_request(b"/api/v1/slow")
    api.render(request)
    request.processingFailed(Failure(ConnectionLost()))
    pending.callback({"answer": 42})
    assert request.finished == 0 and request.written == []


def test_one_of_passes_an_absent_or_known_value_and_refuses_others_listing_the_choices():
    assert one_of(None, "platform", ("macos", "ios")) is None
    assert one_of("ios", "platform", ("macos", "ios")) == "ios"
    with pytest.raises(Invalid) as refused:
        one_of("beos", "platform", ("macos", "ios"))
    assert (refused.value.status, refused.value.message, refused.value.field) == (
        422, "platform must be one of macos, ios", "platform")


def test_query_choice_reads_the_query_parameter():
    request = DummyRequest([b""])
    assert query_choice(request, "status", ["pending", "null"]) is None
    request.addArg(b"status", b"null")
    assert query_choice(request, "status", ["pending", "null"]) == "null"
    request.addArg(b"status", b"issued")
    with pytest.raises(Invalid, match="^status must be one of pending, null$"):
        query_choice(request, "status", ["pending", "null"])
    request.addArg(b"status", b"\xff")
    with pytest.raises(Invalid, match="^query parameter status is not valid UTF-8$"):
        query_choice(request, "status", ["pending", "null"])


class DomainRefusal(Exception):
    pass


def test_refusing_turns_a_domain_error_into_the_routes_refusal_and_lets_others_pass():
    answered = refusing(DomainRefusal, lambda e: Conflict(str(e), field="name"))

    @answered
    async def handler(request, fail=None):
        """A route."""
        if fail is not None:
            raise fail
        return {"ok": True}

    def outcome(coroutine):
        results = []
        defer.ensureDeferred(coroutine).addBoth(results.append)
        return results[0]

    assert handler.__name__ == "handler" and handler.__doc__ == "A route."
    assert outcome(handler(None)) == {"ok": True}
    refused = outcome(handler(None, DomainRefusal("taken"))).value
    assert isinstance(refused, Conflict) and (refused.status, refused.message, refused.field) == (409, "taken", "name")
    assert isinstance(outcome(handler(None, KeyError("bug"))).value, KeyError)
