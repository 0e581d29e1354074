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
