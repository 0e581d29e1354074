"""A twistd log observer for systemd's journal: one line per event with an sd-daemon priority.

Run ``twistd --logger scepproxyd.journald.observer ...``. Under systemd,
stdout goes to the journal, which adds its own timestamp, so lines carry
only the ``<N>`` priority prefix (sd-daemon(3)) and the namespace. Events
below ``[logging] level`` are dropped; tracebacks keep their priority on
every line so ``journalctl -p err`` shows them whole.
"""

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    eventAsText,
)
from zope.interface import provider
from twisted.logger import ILogObserver

from scepproxyd.daemon import logs

PRIORITIES = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}


def format_journal_lines(event) -> list[str]:
    """The journal lines for one event, priority-prefixed."""
    level = event.get("log_level", LogLevel.info)
    if event.get("isError") or "log_failure" in event:
        level = LogLevel.critical if level is LogLevel.critical else LogLevel.error
    priority = PRIORITIES.get(level, 6)
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        text = formatEvent(event)
    namespace = event.get("log_namespace", "-")
    lines = text.rstrip("\n").split("\n")
    first = "<%d>[%s] %s" % (priority, namespace, lines[0])
    return [first] + ["<%d>  %s" % (priority, line) for line in lines[1:]]


def _writer(stream):
    @provider(ILogObserver)
    def write(event) -> None:
        stream.write("\n".join(format_journal_lines(event)) + "\n")
        stream.flush()

    return write


def _at_or_above_level(event) -> PredicateResult:
    level = event.get("log_level", LogLevel.info)
    if level >= logs.current_level() or event.get("isError"):
        return PredicateResult.yes
    return PredicateResult.no


def observer(stream=None):
    """The factory twistd's ``--logger`` calls (with no arguments)."""
    return FilteringLogObserver(_writer(stream or sys.stdout), [_at_or_above_level])
