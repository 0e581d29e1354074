"""Assemble the built-in CA from settings: authority, admin actions, routes, and its CA row.

The tap calls ``prepare_ca_material`` before the reactor runs (files, modes,
first-start creation); ``make_service`` calls ``build_builtin_ca`` to load
them and wire the pieces, and adds ``ManagedCaService`` so the CA
integration row is created or refreshed once the store is up.
"""

from __future__ import annotations

import attrs
from twisted.application import service

from scepproxyd.ca.authority import ScepCA
from scepproxyd.ca.local import LocalUpstream
from scepproxyd.ca.manage import CaManager
from scepproxyd.ca.material import load_ca_material, read_static_challenge
from scepproxyd.ca.policy import Policy
from scepproxyd.logs import get_logger

log = get_logger(__name__)


@attrs.frozen
class BuiltinCA:
    name: str
    url: str
    authority: ScepCA
    manager: CaManager
    local: LocalUpstream
    static_challenge: str = attrs.field(repr=False)


def build_builtin_ca(settings, store, clock) -> BuiltinCA:
    """The built-in CA for ``settings`` (the whole Settings: it needs [ca], [server] and [challenges])."""
    ca = settings.ca
    static = read_static_challenge(ca)
    authority = ScepCA(
        store, load_ca_material(ca), Policy.from_settings(ca, static), ca.templates,
        settings.server.public_url, ca.crl_validity, clock,
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

    Its URL and sealed static challenge are refreshed every start, so a
    changed ``public_url`` or challenge file reaches rendered profiles.
    The store queues this behind its own start-up, so ordering is safe.
    """

    def __init__(self, store, builtin: BuiltinCA, cipher):
        self._store = store
        self._builtin = builtin
        self._cipher = cipher

    def startService(self):
        super().startService()
        d = self._store.register_managed_ca(
            self._builtin.name, self._builtin.url, self._cipher.encrypt(self._builtin.static_challenge)
        )
        d.addCallback(lambda _: log.info("built-in CA registered as CA {name} at {url}",
                                         name=self._builtin.name, url=self._builtin.url))
        d.addErrback(lambda f: log.failure("could not register the built-in CA as CA {name}", f,
                                           name=self._builtin.name))
