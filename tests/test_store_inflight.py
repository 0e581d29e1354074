"""A challenge taken by the proxy is either settled, put back, or put back at the next start."""

import pytest_twisted
from twisted.internet import reactor

from scepproxyd.store.models import challenge_hash
from scepproxyd.store import Store
from support.store import HOST, PROFILE, seed


@pytest_twisted.ensureDeferred
async def test_settled_challenge_stays_spent_and_orphans_come_back(database, engine, clock):
    target, password = database
    store = Store(target, reactor, clock=clock, password=password)
    await store.start()
    try:
        await seed(store)
        spent = await store.new_challenge(HOST, PROFILE)
        orphan = await store.new_challenge(HOST, PROFILE)
        taken = await store.consume_challenge(spent, HOST, PROFILE)
        await store.challenge_settled(taken)
        assert await store.consume_challenge(orphan, HOST, PROFILE) is not None  # then the daemon "dies"
    finally:
        await store.stop()

    if engine == "postgresql":
        # Other nodes may hold challenges in flight on PostgreSQL: a start puts back only those taken
        # longer ago than any upstream call lasts (SQLite, one daemon per file, puts back all at once).
        clock.advance(store._in_flight_limit + 1)
    restarted = Store(target, reactor, clock=clock, password=password)
    await restarted.start()
    try:
        assert await restarted.restore_orphaned_challenges() == 1
        assert await restarted.restore_orphaned_challenges() == 0
        assert await restarted.consume_challenge(spent, HOST, PROFILE) is None
        again = await restarted.consume_challenge(orphan, HOST, PROFILE)
        assert again is not None and again.challenge_hash == challenge_hash(orphan)
    finally:
        await restarted.stop()
