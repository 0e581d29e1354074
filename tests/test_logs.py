"""The daemon's log lines: what an operator reads, whatever the cost-saving path that wrote them."""

import gc

from twisted.logger import LogLevel, formatEvent

from scepproxyd.daemon.lifecycle import freeze_start_up_heap
from scepproxyd.daemon.logs import emit_rendered, get_logger

LINE = ("proxy {operation} host={host} profile={profile} ca={ca} outcome={outcome} "
        "status={status} upstream_status={upstream_status} ms={ms:.1f}")
FIELDS = {"operation": "GetCACaps", "host": "C8QHT3K1Q6L4", "profile": "a1b2c3d4-profile", "ca": "UPSTREAM_CA",
          "outcome": "ok", "status": 200, "upstream_status": "-", "ms": 0.4321}


def events_of(logs, namespace):
    return [e for e in logs.events if e.get("log_namespace") == namespace]


def test_a_rendered_line_reads_and_carries_fields_as_twisted_would_write_them(logs):
    log = get_logger("test.rendered")
    emit_rendered(log, LogLevel.info, LINE, **FIELDS)
    log.info(LINE, **FIELDS)
    rendered, plain = events_of(logs, "test.rendered")
    assert formatEvent(rendered) == formatEvent(plain) == (
        "proxy GetCACaps host=C8QHT3K1Q6L4 profile=a1b2c3d4-profile ca=UPSTREAM_CA outcome=ok "
        "status=200 upstream_status=- ms=0.4")
    assert {key: rendered[key] for key in FIELDS} == FIELDS
    assert rendered["log_level"] is LogLevel.info


def test_text_a_device_chose_cannot_break_or_drive_the_line(logs):
    log = get_logger("test.hostile")
    emit_rendered(log, LogLevel.info, LINE, **dict(FIELDS, host="A\nproxy forged\x1b[2J", ca="{status}{0}"))
    (event,) = events_of(logs, "test.hostile")
    text = formatEvent(event)
    assert "\n" not in text and "\x1b" not in text
    assert "host=A\\nproxy forged\\x1b[2J" in text and "ca={status}{0} " in text
    assert event["host"] == "A\\nproxy forged\\x1b[2J"


def test_the_start_up_heap_is_frozen_out_of_later_collections():
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    freeze_start_up_heap()
    try:
        # Every object alive now (this process's modules and the rest) is out of later collections.
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()  # the rest of the test run collects as usual
