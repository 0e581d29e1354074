"""Assemble the built-in CA from settings: authority, admin actions, routes, and its CA row.

The tap calls ``prepare_ca_material`` before the reactor runs (files, modes,
first-start creation); ``service.build_ca`` calls ``build_builtin_ca`` to load
them and wire the pieces, and adds ``ManagedCaService`` so the CA
integration row is created or refreshed once the store is up.
"""

from __future__ import annotations

from functools import partial

import attrs
from twisted.application import service

from scepproxyd.ca.authority import ScepCA
from scepproxyd.ca.local import LocalUpstream
from scepproxyd.ca.manage import CaManager
from scepproxyd.ca.material import load_ca_material, read_static_challenge
from scepproxyd.ca.policy import Policy
from scepproxyd.daemon.logs import get_logger
from scepproxyd.web.api import off_reactor

log = get_logger(__name__)


@attrs.frozen
class BuiltinCA:
    name: str
    url: str
    authority: ScepCA
    manager: CaManager
    local: LocalUpstream
    static_challenge: str = attrs.field(repr=False)


def build_builtin_ca(settings, store, reactor, metrics=None) -> BuiltinCA:
    """The built-in CA for ``settings`` (the whole Settings: it needs [ca], [server] and [challenges]).

    ``reactor`` is its clock, and its worker threads sign and parse off the reactor thread.
    """
    ca = settings.ca
    static = read_static_challenge(ca)
    authority = ScepCA(
        store, load_ca_material(ca), Policy.from_settings(ca, static), ca.templates,
        settings.server.public_url, ca.crl_validity, reactor, run_in_thread=partial(off_reactor, reactor),
        key_policy=ca.key_policy, metrics=metrics,
    )
    return BuiltinCA(
        name=ca.name,
        url=settings.server.public_url + "/scep",
        authority=authority,
        manager=CaManager(authority, store, ca.templates, settings.challenges.ttl),
        local=LocalUpstream(authority),
        static_challenge=static,
    )


class ManagedCaService(service.Service):
    """
    Registers the built-in CA as the CA integration ``[ca] name`` at start.

    Its URL is refreshed every start, so a changed ``public_url`` reaches
    rendered profiles. The row is marked built-in and holds no static
    challenge: its profiles get one-time CA challenges. An install that
    rendered the static challenge before is told once what changed. The
    store queues this behind its own start-up, so ordering is safe.
    """

    name = "builtin-ca"

    def __init__(self, store, builtin: BuiltinCA):
        self._store = store
        self._builtin = builtin

    def startService(self):
        super().startService()
        d = self._store.register_managed_ca(self._builtin.name, self._builtin.url)
        d.addCallback(self._registered)
        d.addErrback(lambda f: log.failure("could not register the built-in CA as CA {name}", f,
                                           name=self._builtin.name))

    def _registered(self, had_static_challenge: bool) -> None:
        log.info("built-in CA registered as CA {name} at {url}", name=self._builtin.name, url=self._builtin.url)
        if had_static_challenge:
            log.warn(
                "built-in CA {name}: profiles now carry a one-time CA challenge bound to their host profile instead"
                " of the static challenge, and /scep refuses the static challenge unless [ca] static_challenge = yes;"
                " devices holding an older profile fail once and are sent a fresh one",
                name=self._builtin.name,
            )
