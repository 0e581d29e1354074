"""One place that decides which of scepproxyd's own log events are written.

Every module gets its Logger from L{get_logger}; the events go through a
level filter set from ``[logging] level`` before reaching twistd's log
observers. Twisted's own events are not filtered here.
"""

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


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
