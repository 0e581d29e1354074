"""A temporary Store on a Clock, with the few rows most store tests start from."""

import re
import sqlite3

from twisted.internet.task import Clock

from scepproxyd.store import Store, postgres
from scepproxyd.store.database import _schema_files
from scepproxyd.store.models import challenge_hash

EPOCH = 1_700_000_000.0
TTL = 3600.0
HOST, PROFILE, CA = "host-1", "profile-1", "acme"
SCHEMA_VERSION = _schema_files()[-1][0]  # the latest: numbers are given out at merge
RENEWAL_ID = re.compile(r"^sp-[0-9a-f]{16}$")
#: Delivery backend per platform, as a site with NanoMDM for Apple and the outbox for Android sets it.
BACKENDS = {"macos": "nanomdm", "ios": "nanomdm", "ipados": "nanomdm", "android": "outbox", "windows": "outbox"}


def make_clock() -> Clock:
    """A Clock standing at EPOCH, so times in rows are recognisable."""
    clock = Clock()
    clock.advance(EPOCH)
    return clock


def migrated(path):
    """``path`` as a new database at the latest schema."""
    Store.migrate(path)
    return path


async def started_store(path, reactor, clock, **options) -> Store:
    """A started Store on ``path`` (one-time challenges live TTL unless ``options`` say otherwise)."""
    options.setdefault("challenge_ttl", TTL)
    store = Store(path, reactor, clock=clock, **options)
    await store.start()
    return store


async def seed(s, host=HOST, profile=PROFILE, ca=CA):
    """A host with one profile using one CA, assigned."""
    if await s.get_ca(ca) is None:
        await s.add_ca(ca, "https://ca.example/scep")
    await s.upsert_host(host, "C02XYZ", "macos")
    await s.add_profile(profile, "Wi-Fi cert", "macos", b"<plist/>", ca)
    return await s.assign_profile(host, profile)


async def assign_to(s, hosts, profile=PROFILE):
    """More macOS hosts (no serial), each with ``profile`` assigned: the fleet a store test works on."""
    for host in hosts:
        await s.upsert_host(host, None, "macos")
        await s.assign_profile(host, profile)


async def refuse_latest(s, host=HOST, profile=PROFILE, detail="custom scep challenge failed"):
    """A refused challenge that counts: the host profile's latest one (it must be pending); fires the ChallengeRefusal."""
    challenge = await s.issue_challenge(host, profile)
    return await s.challenge_failed(challenge, host, profile, detail)


async def claim_all(store, limit=1000):
    """Claim every host profile due for processing; ``{(host, profile): claim}``."""
    result = await store.claim_host_profiles(limit, BACKENDS)
    return {(c.host_uuid, c.profile_uuid): c for c in result.claimed}


class _RawPostgres(postgres.Connection):
    """A PostgreSQL connection used as tests use a raw sqlite3 one. It autocommits each statement, so
    ``commit`` and ``rollback`` (which tests call after writing around the store) have nothing left to do."""

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def raw(target):
    """
    A plain connection to look at rows behind the store's back: ``target`` a SQLite file (foreign keys
    on), or a Store on either engine (its own database, with ``?`` placeholders on PostgreSQL too;
    each statement commits at once there).
    """
    if isinstance(target, Store):
        if target.engine == "postgresql":
            return _RawPostgres(postgres.connect(target._path, target._password).raw)
        target = target._path
    conn = sqlite3.connect(target)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def set_schema_version(database, version: int) -> None:
    """Mark ``database`` (``(target, password)``, as the ``database`` fixture gives it) as at schema ``version``,
    as a newer release would leave it: SQLite's ``PRAGMA user_version``, PostgreSQL's ``scepproxyd_schema``."""
    target, password = database
    if postgres.is_postgres(target):
        conn = postgres.connect(target, password)
        conn.execute("UPDATE scepproxyd_schema SET version = ?", (version,))
    else:
        conn = raw(target)
        conn.execute("PRAGMA user_version = %d" % (version,))
    conn.close()


def wal_position(store):
    """Where ``store``'s engine writes its log now, for ``bytes_on_disk``: PostgreSQL's WAL position, or None on
    SQLite (whose -wal file is the database's own)."""
    if store.engine != "postgresql":
        return None
    return raw(store).execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]


def bytes_on_disk(store, since=None) -> bytes:
    """
    Every byte the engine keeps on disk for ``store``'s database, free space included. SQLite: the file
    and its -wal. PostgreSQL (after a CHECKPOINT, so the pages are written out): the database's own
    directory, and the WAL segments written since ``since`` (a ``wal_position``), which the server
    shares with every other database on it.
    """
    from pathlib import Path

    if store.engine != "postgresql":
        path = Path(store._path)
        return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    conn = raw(store)
    conn.execute("CHECKPOINT")
    data = Path(conn.execute("SHOW data_directory").fetchone()[0])
    oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    first, last = conn.execute("SELECT pg_walfile_name(?::pg_lsn), pg_walfile_name(pg_current_wal_insert_lsn())",
                               (since,)).fetchone()
    conn.close()
    files = sorted((data / "base" / str(oid)).iterdir())
    files += [p for p in sorted((data / "pg_wal").iterdir()) if first <= p.name <= last]
    return b"".join(p.read_bytes() for p in files if p.is_file())


def refused_by_schema(engine: str) -> type[Exception]:
    """What a raw connection (``raw``) on ``engine`` raises for a row a constraint refuses:
    sqlite3's IntegrityError, or psycopg's (whose subclasses name the kind of constraint)."""
    if engine == "postgresql":
        import psycopg

        return psycopg.IntegrityError
    return sqlite3.IntegrityError


def without_foreign_keys(store):
    """A raw connection to ``store``'s database that does not enforce foreign keys, for the state a bug or a
    hand edit could leave: sqlite3's default, or PostgreSQL's replication role (the tests' user is a superuser)."""
    conn = raw(store)
    if store.engine == "postgresql":
        conn.execute("SET session_replication_role = replica")
    else:
        conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def database_at_schema(path, version: int):
    """An open connection to a new database at schema ``version``, as an older release left it."""
    conn = raw(path)
    conn.create_function("sha256_hex", 1, challenge_hash, deterministic=True)  # as Store.migrate registers it
    for number, script in _schema_files():
        if number > version:
            break
        conn.executescript(script)
    conn.execute("PRAGMA user_version = %d" % (version,))
    return conn


#: What ``populate`` puts in a store, for tests that read it back elsewhere (a copy, a backup).
POPULATED_HOSTS = (HOST, "host-2")
AGENT_TOKEN_HASH = "a" * 64
CA_CHALLENGE_HASH = "c" * 64


async def populate(s):
    """
    A site with a row in every table: CAs (one with a sealed challenge and a trust bundle), hosts, profiles,
    host profiles claimed (commands), a live one-time challenge and one in flight, an agent credential, the
    built-in CA's request, certificate and one-time challenge, an end user, a custom secret. Fires the live proxy challenge (plain text).
    """
    from scepproxyd.pacing import RenewalPacing
    from scepproxyd.store import CaRequest, IssuedCertificate

    await s.add_ca(CA, "https://ca.example/scep", challenge_ciphertext=b"\x00sealed\xff",
                   tls_trust_bundle="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", tls_verify=False)
    await s.add_ca("other_ca", "http://other.example/scep")
    await seed(s)
    await s.upsert_host("host-2", None, "android")
    await s.add_profile("profile-2", "VPN cert", "android", b'{"template": "x"}', "other_ca")
    await s.assign_profile("host-2", "profile-2")
    await claim_all(s)
    live = await s.issue_challenge(HOST, PROFILE)
    spent = await s.issue_challenge("host-2", "profile-2")
    assert await s.consume_challenge(spent, "host-2", "profile-2") is not None  # left in flight
    await s.set_agent_credential(HOST, AGENT_TOKEN_HASH)
    now = s._clock.seconds()
    request = CaRequest("TX-1", "issued", "CN=device", b"\x30\x82csr", b"\x30signer", "10.0.0.1", "default",
                        None, "0a1b", now, now, "nonce-1")
    certificate = IssuedCertificate("0a1b", "CN=device", now, now + 86400, "valid", None, None, "10.0.0.1", "TX-1",
                                    "default", None, b"\x30\x82der\x00", now, "nonce-1")
    await s.record_issued(request, certificate)
    await s.add_ca_challenge(CA_CHALLENGE_HASH, "default", 3600)
    # A host's end user and a custom secret (sealed).
    await s.set_end_user(HOST, {"idp_username": "user@example.com", "idp_groups": ["wifi"]})
    await s.put_secret("WIFI_PASSWORD", b"\x00sealed-secret\xff")
    # The renewal pace of a CA (nothing is due, so only the CA's row is made).
    await s.start_renewals(CA, 30 * 86400.0, 0.5, 10, now - now % 3600, RenewalPacing(5, 3600.0).pace(CA, 5, now))
    # What the first of several nodes records at start (service._check_shared_state), outside the Store's API.
    conn = raw(s)
    conn.execute("INSERT INTO node_fingerprints (name, fingerprint, created_at) VALUES (?, ?, ?)",
                 ("secrets_key", "5e" * 32, now))
    if isinstance(conn, sqlite3.Connection):
        conn.commit()
    conn.close()
    return live


async def certified_fleet(s, ca, profile, hosts, expiries, validity: float = 365 * 86400.0) -> None:
    """
    ``hosts`` (macOS) holding ``profile`` (using CA ``ca``, added if missing; None: no CA), each host profile verified
    with a certificate expiring at its entry of ``expiries``: what the renewal job works on. The
    certificates' dates are written behind the store's back, in one statement each, so a fleet of
    thousands is ready in moments.
    """
    hosts = list(hosts)
    if ca is not None and await s.get_ca(ca) is None:
        await s.add_ca(ca, "https://%s.example/scep" % (ca,))
    await s.add_profile(profile, "cert " + profile, "macos", b"<plist/>", ca)
    await s.import_hosts([(host, None, "macos") for host in hosts])
    await s.assign_profile_to_hosts(profile, hosts)
    conn = raw(s)
    conn.executemany(
        "UPDATE host_profiles SET status = 'verified', cert_serial = ?, cert_not_before = ?, cert_not_after = ?"
        " WHERE host_uuid = ? AND profile_uuid = ?",
        [(host, expiry - validity, expiry, host, profile) for host, expiry in zip(hosts, expiries)],
    )
    if isinstance(conn, sqlite3.Connection):
        conn.commit()
    conn.close()


def table_rows(conn, table: str) -> list[tuple]:
    """Every row of ``table`` on a raw connection (either engine), as plain values in a stable order."""
    rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in conn.execute("SELECT * FROM %s" % (table,)).fetchall()]
    return sorted(rows, key=repr)


def postgres_password(database) -> str | None:
    """The password of a ``postgres_url`` fixture's database (support.postgres): its ``password_file``'s first line."""
    return database.password_file.read_text().strip() or None
