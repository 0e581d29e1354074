"""Per-host agent credentials: only their SHA-256 is stored, one per host.

The credential itself is made and shown by the admin API (scepproxyd.agents);
here rows are written, replaced, looked up by hash and revoked. A credential
row goes with its host (ON DELETE CASCADE).
"""

from __future__ import annotations

import attrs
from twisted.internet import defer

from scepproxyd.store.database import chunks, keyset, one, order_by, placeholders
from scepproxyd.store.models import PLATFORMS, NotFoundError, check_choice, check_filter

#: Rows written per transaction when credentials are issued in bulk, so other
#: queued queries (the proxy's) are not held behind one long write.
BULK_BATCH = 1000

_COLUMNS = "host_uuid, created_at, last_used_at"

#: The sort key of credential lists (keyset pagination).
AGENT_CREDENTIAL_ORDER = (("a.host_uuid", False),)


@attrs.frozen
class AgentCredential:
    """What may be shown about a host's credential: never the credential or its hash."""

    host_uuid: str
    created_at: float
    last_used_at: float | None


@attrs.frozen
class AgentIdentity:
    """The host a presented credential belongs to, and when it was last marked used."""

    host_uuid: str
    last_used_at: float | None


class AgentCredentialQueries:
    def set_agent_credential(self, host_uuid, token_hash: str) -> defer.Deferred:
        """
        Give the host this credential hash, replacing any it had; fires ``(AgentCredential, replaced)``.

        NotFoundError when there is no such host.
        """
        now = self._clock.seconds()

        def set_agent_credential(conn):
            if conn.execute("SELECT 1 FROM hosts WHERE uuid = ?", (host_uuid,)).fetchone() is None:
                raise NotFoundError(f"no host {host_uuid!r}")
            replaced = conn.execute("DELETE FROM agent_credentials WHERE host_uuid = ?", (host_uuid,)).rowcount == 1
            conn.execute(
                "INSERT INTO agent_credentials (host_uuid, token_hash, created_at) VALUES (?, ?, ?)",
                (host_uuid, token_hash, now),
            )
            return AgentCredential(host_uuid, now, None), replaced

        return self._submit(set_agent_credential)

    def hosts_for_agent_credentials(self, hosts=None, platform=None, rotate: bool = False) -> defer.Deferred:
        """
        The host uuids a bulk issue should cover, in order; fires ``(uuids, kept)``.

        ``hosts`` (a list), or every host of ``platform``, or every host when
        both are None. Without ``rotate``, hosts that already have a
        credential are left out and counted in ``kept``. NotFoundError names
        the first listed host that does not exist.
        """
        listed = None if hosts is None else list(dict.fromkeys(hosts))

        def hosts_for_agent_credentials(conn):
            if listed is not None:
                found = set()
                for keys in chunks(listed):
                    found.update(row[0] for row in conn.execute(
                        f"SELECT uuid FROM hosts WHERE uuid IN ({placeholders(keys)})", keys))
                missing = [uuid for uuid in listed if uuid not in found]
                if missing:
                    raise NotFoundError(f"no host {missing[0]!r}")
                selected = listed
            else:
                check_filter(platform, PLATFORMS, "platform")
                selected = [row[0] for row in conn.execute(
                    "SELECT uuid FROM hosts WHERE ? IS NULL OR platform = ? ORDER BY uuid", (platform, platform))]
            if rotate:
                return selected, 0
            have = set()
            for keys in chunks(selected):
                have.update(row[0] for row in conn.execute(
                    f"SELECT host_uuid FROM agent_credentials WHERE host_uuid IN ({placeholders(keys)})", keys))
            return [uuid for uuid in selected if uuid not in have], len(have)

        return self._submit(hosts_for_agent_credentials, write=False)

    @defer.inlineCallbacks
    def set_agent_credentials(self, rows, rotate: bool = False):
        """
        Write ``(host_uuid, token_hash)`` rows in batches; fires ``{host_uuid: created_at}`` of those written.

        A host deleted meanwhile is skipped; without ``rotate`` so is one
        that got a credential meanwhile (the one it has stays valid).
        """
        rows = list(rows)
        written = {}
        for batch_start in range(0, len(rows), BULK_BATCH):
            batch = rows[batch_start:batch_start + BULK_BATCH]
            now = self._clock.seconds()

            def set_batch(conn, batch=batch, now=now):
                done = []
                for host_uuid, token_hash in batch:
                    if rotate:
                        conn.execute("DELETE FROM agent_credentials WHERE host_uuid = ?", (host_uuid,))
                    row = conn.execute(
                        "INSERT INTO agent_credentials (host_uuid, token_hash, created_at)"
                        " SELECT uuid, ?, ? FROM hosts WHERE uuid = ?"
                        " ON CONFLICT (host_uuid) DO NOTHING RETURNING host_uuid",
                        (token_hash, now, host_uuid),
                    ).fetchone()
                    if row is not None:
                        done.append(row[0])
                return done

            for host_uuid in (yield self._submit(set_batch)):
                written[host_uuid] = now
        return written

    def agent_credential(self, host_uuid) -> defer.Deferred:
        """The host's credential (dates only), or None."""

        def agent_credential(conn):
            return one(AgentCredential, conn.execute(
                f"SELECT {_COLUMNS} FROM agent_credentials WHERE host_uuid = ?", (host_uuid,)))

        return self._submit(agent_credential, write=False)

    def list_agent_credentials(self, platform=None, after=None, limit=None) -> defer.Deferred:
        """Issued credentials (dates only), by host uuid; only hosts of ``platform`` if given; ``after``/``limit`` page."""

        def list_agent_credentials(conn):
            if platform is not None:
                check_choice(platform, PLATFORMS, "platform")
            where, params = keyset(AGENT_CREDENTIAL_ORDER, after)
            return [AgentCredential(*row) for row in conn.execute(
                "SELECT a.host_uuid, a.created_at, a.last_used_at FROM agent_credentials a"
                f" JOIN hosts h ON h.uuid = a.host_uuid WHERE (? IS NULL OR h.platform = ?) AND {where}"
                f" ORDER BY {order_by(AGENT_CREDENTIAL_ORDER)} LIMIT ?",
                (platform, platform, *params, -1 if limit is None else limit),
            )]

        return self._submit(list_agent_credentials, write=False)

    def revoke_agent_credential(self, host_uuid) -> defer.Deferred:
        """Delete the host's credential; fires whether it had one."""

        def revoke_agent_credential(conn):
            return conn.execute("DELETE FROM agent_credentials WHERE host_uuid = ?", (host_uuid,)).rowcount == 1

        return self._submit(revoke_agent_credential)

    def agent_identity(self, token_hash: str) -> defer.Deferred:
        """The host whose credential has this hash, as an AgentIdentity, or None."""

        def agent_identity(conn):
            return one(AgentIdentity, conn.execute(
                "SELECT host_uuid, last_used_at FROM agent_credentials WHERE token_hash = ?", (token_hash,)))

        return self._submit(agent_identity, write=False)

    def agent_credential_used(self, token_hash: str, when: float) -> defer.Deferred:
        """Record that the credential with this hash was used at ``when`` (the caller rate-limits this)."""

        def agent_credential_used(conn):
            conn.execute("UPDATE agent_credentials SET last_used_at = ? WHERE token_hash = ?", (when, token_hash))

        return self._submit(agent_credential_used, group=True)
