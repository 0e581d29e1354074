"""SIGHUP: re-read the configuration and apply what can change safely while running.

The log level and the CAs' upstream TLS trust apply at once; anything else
that changed (listeners, paths, timeouts baked into objects) is named in
the log as needing a restart, so an operator is never left guessing.
"""

import signal

import attrs
from twisted.application import service
from twisted.internet import defer, task

from scepproxyd.config import ConfigError, load_settings
from scepproxyd.daemon.logs import get_logger, set_level

log = get_logger(__name__)


def changed_keys(old, new) -> list[str]:
    """``section.key`` names whose values differ between two Settings."""
    changed = []
    for section in attrs.fields(type(old)):
        before, after = getattr(old, section.name), getattr(new, section.name)
        if attrs.has(type(before)):
            for key in attrs.fields(type(before)):
                if getattr(before, key.name) != getattr(after, key.name):
                    changed.append("%s.%s" % (section.name, key.name))
        elif before != after:
            changed.append(section.name)
    return changed


APPLIED_LIVE = {"logging.level"}


def _trust_mark(cas) -> tuple:
    """What a CA list says about TLS trust: a change in it means the trust must be loaded again."""
    return tuple(sorted((ca.name, ca.url, ca.tls_trust_bundle, ca.tls_verify, ca.updated_at) for ca in cas))


class ReloadService(service.Service):
    name = "reload"

    #: Several nodes (PostgreSQL): how often this node looks for CA changes another node's admin made.
    follow_interval = 10.0

    def __init__(self, settings, store, trust, reactor):
        self.settings = settings
        self._store = store
        self._trust = trust
        self._reactor = reactor
        self._previous_handler = None
        self._seen = None
        self._follow = None

    def started(self) -> defer.Deferred:
        """Fires once the CAs' TLS trust is loaded from the store (part of being ready)."""
        return self.refresh_trust()

    def refresh_trust(self) -> defer.Deferred:
        d = self._store.list_cas()
        d.addCallback(self._configure)
        return d

    def _configure(self, cas) -> None:
        self._seen = _trust_mark(cas)
        self._trust.configure(cas)

    def follow_other_nodes(self) -> defer.Deferred:
        """Re-load the CAs' TLS trust when another node changed a CA (several nodes on PostgreSQL)."""
        d = self._store.list_cas()

        def compare(cas):
            if _trust_mark(cas) != self._seen:
                log.info("CA integrations changed on another node: TLS trust re-read")
                self._configure(cas)

        def failed(failure):
            log.warn("could not look for CA changes made on other nodes: {reason}",
                     reason=failure.getErrorMessage())

        return d.addCallbacks(compare, failed)

    def startService(self):
        super().startService()
        try:
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_signal)
        except ValueError:  # not the main thread (some test runners)
            self._previous_handler = None
        if getattr(self._store, "engine", "sqlite") == "postgresql":
            self._follow = task.LoopingCall(self.follow_other_nodes)
            self._follow.clock = self._reactor
            self._follow.start(self.follow_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._follow is not None and self._follow.running:
            self._follow.stop()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)

    def _on_signal(self, signum, frame):
        self._reactor.callFromThread(lambda: defer.ensureDeferred(self.reload()))

    async def reload(self) -> dict:
        """Re-read the file; apply log level and CA trust; report the rest."""
        try:
            new = load_settings(self.settings.config_path)
        except ConfigError as e:
            log.error("reload refused, still running on the old configuration: {problem}", problem=str(e))
            return {"applied": [], "needs_restart": [], "error": str(e)}
        changed = changed_keys(self.settings, new)
        applied = [key for key in changed if key in APPLIED_LIVE]
        needs_restart = [key for key in changed if key not in APPLIED_LIVE]
        await self.refresh_trust()
        # Logged before a new level applies, so raising the level never hides this report.
        log.info(
            "reloaded configuration: applied {applied}; CA trust bundles re-read; needs a restart: {restart}",
            applied=", ".join(applied) or "nothing",
            restart=", ".join(needs_restart) or "nothing",
        )
        if "logging.level" in applied:
            set_level(new.logging.level)
        self.settings = attrs.evolve(self.settings, logging=new.logging)
        return {"applied": applied, "needs_restart": needs_restart}
