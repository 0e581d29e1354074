"""Fixtures every test module may use without importing them."""

import pytest
from twisted.logger import formatEvent, globalLogPublisher


class LogCapture:
    """Every log event while it is installed, formatted and as its raw fields."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def text(self) -> str:
        return "\n".join(formatEvent(e) + " " + repr(sorted(e.items(), key=lambda kv: kv[0])) for e in self.events)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") is not None and e["log_level"].name == "warn"]


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)
