"""What only PostgreSQL has: migrations from several nodes at once, its password, its server.

The rest of the store's behaviour is tested on both engines by the other
test_store modules (tests/conftest.py parametrizes them), a database newer
than the code or never migrated included (test_store.py).
"""

import threading

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from scepproxyd.store import Store, StoreError, StoreUnavailable
from scepproxyd.store.postgres import redacted, translate
from support.postgres import need_postgres
from support.store import SCHEMA_VERSION, make_clock, postgres_password, seed


def version_rows(database) -> list:
    with psycopg.connect(database.url, password=postgres_password(database), autocommit=True) as db:
        return db.execute("SELECT version FROM scepproxyd_schema").fetchall()


def test_two_nodes_migrating_at_once_apply_each_schema_once(postgres_url):
    results, errors = [], []

    def migrate():
        try:
            results.append(Store.migrate(postgres_url.url, password=postgres_password(postgres_url)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [SCHEMA_VERSION] * 4
    assert version_rows(postgres_url) == [(SCHEMA_VERSION,)]


def test_a_wrong_password_is_refused_without_showing_any_password(postgres_url):
    with pytest.raises(StoreError) as refused:
        Store.migrate(postgres_url.url, password="not-the-password")
    assert "password authentication failed" in str(refused.value)
    assert "not-the-password" not in str(refused.value) and postgres_password(postgres_url) not in str(refused.value)


def test_urls_in_messages_never_carry_a_password():
    assert redacted("postgresql://app:s3cret@db:5432/site") == "postgresql://app:***@db:5432/site"
    assert redacted("postgresql://app@db/site") == "postgresql://app@db/site"


def test_the_stores_sql_is_translated_once_for_psycopg():
    assert translate("SELECT x FROM t WHERE a = ? AND b LIKE 'x%' LIMIT ?") == (
        "SELECT x FROM t WHERE a = %s AND b LIKE 'x%%' LIMIT NULLIF(%s, -1)")


@pytest_twisted.ensureDeferred
async def test_a_server_that_goes_away_makes_the_store_unavailable_not_broken():
    server = need_postgres().start()
    try:
        database = server.fresh_database()
        password = postgres_password(database)
        Store.migrate(database.url, password=password)
        store = Store(database.url, reactor, clock=make_clock(), password=password, busy_timeout=2.0)
        await store.start()
        await seed(store)
        server.stop()
        with pytest.raises(StoreUnavailable) as down:
            await store.list_hosts()
        assert password not in str(down.value)
        await store.stop()
    finally:
        server.stop()
        server.remove()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_a_clear_start_up_error(postgres_server):
    url = postgres_server.url.replace(":%d/" % postgres_server.port, ":1/")
    store = Store(url, reactor, clock=make_clock(), password="x", busy_timeout=2.0)
    with pytest.raises(StoreUnavailable, match="cannot reach the database server"):
        await store.start()
    await store.stop()
