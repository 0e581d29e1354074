"""One place that decides which of scepproxyd's own log events are written, and how their text shows.

Every module gets its Logger from L{get_logger}; the events go through a
level filter set from ``[logging] level`` before reaching twistd's log
observers. Twisted's own events are not filtered here.

Log lines carry text that devices and agents chose (CSR subjects, host
serials, an agent's error text, proxy identifier parts, profile names).
Every string field of scepproxyd's own events goes out through
L{printable}, so such text cannot start a new log line, drive the terminal
of someone reading the log, or carry a lone surrogate the log cannot encode.
"""

import time

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)
from zope.interface import provider

from scepproxyd.printable import printable

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_filtered = FilteringLogObserver(globalLogPublisher, [_predicate])


@provider(ILogObserver)
def _observer(event: dict) -> None:
    """Pass ``event`` on with its string fields (not Twisted's own ``log_*`` keys) escaped."""
    _filtered({
        key: printable(value) if isinstance(value, str) and not key.startswith("log_") else value
        for key, value in event.items()
    })


def emit_rendered(logger: Logger, level: LogLevel, format: str, **fields) -> None:
    """
    Emit ``format`` with ``fields``, rendered here once with Python's own ``str.format``.

    The same line and the same fields as ``logger.emit(level, format, **fields)``,
    for the lines written once per request: Twisted renders an event's format
    with a formatter written in Python at every observer, several times the
    cost of the rest of a GetCACaps answer. The event carries the finished
    text (braces escaped) as its format, and the fields as they were, string
    fields made printable first, exactly as L{_observer} would.
    """
    if level < _level:
        return  # what _predicate would decide (it holds only the one level set_level gives), before any work
    clean = {key: printable(value) if isinstance(value, str) else value for key, value in fields.items()}
    text = format.format(**clean)
    # The event Logger.emit would build, past the level filter already passed above, and with fields
    # clean already, so _observer's second printable pass is skipped too.
    clean.update(
        log_logger=logger, log_level=level, log_namespace=logger.namespace, log_source=logger.source,
        log_format=text.replace("{", "{{").replace("}", "}}"), log_time=time.time(),
    )
    globalLogPublisher(clean)


def get_logger(namespace: str) -> Logger:
    return Logger(namespace=namespace, observer=_observer)


_level = LogLevel.info


def set_level(level: LogLevel) -> None:
    """Lowest level of scepproxyd's own events that is written."""
    global _level
    _level = level
    _predicate.setLogLevelForNamespace("", level)


def current_level() -> LogLevel:
    """The configured level, for observers that filter every namespace (the journal's)."""
    return _level
