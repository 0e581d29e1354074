"""What each node keeps in memory stays right when another node, sharing the database, changes a CA."""

import pytest_twisted

from scepproxyd.daemon.reload import ReloadService


class RecordedTrust:
    """Stands in for UpstreamTrust: what was loaded, in order."""

    def __init__(self):
        self.loaded = []

    def configure(self, cas):
        self.loaded.append({ca.name: (ca.url, ca.tls_trust_bundle, ca.tls_verify) for ca in cas})


@pytest_twisted.ensureDeferred
async def test_a_trust_change_made_on_another_node_is_loaded_here(store, clock):
    await store.add_ca("acme", "https://ca.example/scep")
    trust = RecordedTrust()
    node = ReloadService(None, store, trust, clock)
    await node.started()
    await node.follow_other_nodes()
    assert len(trust.loaded) == 1  # nothing changed: nothing loaded again
    clock.advance(1)
    await store.update_ca("acme", tls_trust_bundle="-----BEGIN CERTIFICATE-----...", tls_verify=False)
    await node.follow_other_nodes()
    assert trust.loaded[-1] == {"acme": ("https://ca.example/scep", "-----BEGIN CERTIFICATE-----...", False)}
    await store.delete_ca("acme")
    await node.follow_other_nodes()
    assert trust.loaded[-1] == {}
