"""
Custom secrets: named values that profiles use as ``$FLEET_SECRET_<NAME>``, sealed like a CA's static challenge.

The store holds only the ciphertext (the admin API seals and opens it with
the daemon's key); no list or row it returns carries a value in its repr.
A secret cannot be deleted while a profile uses it. When its value
changes, every host profile of every profile that uses it is sent again,
in batches, each its own transaction, so device-facing store calls are
not held behind one long update.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer

from scepproxyd.profiles import variables
from scepproxyd.store.database import chunks, placeholders
from scepproxyd.store.end_users import CHANGED_DETAIL, profiles_using, resend
from scepproxyd.store.models import StoreError

#: Host profiles sent again per store job when a secret changes.
RESEND_BATCH = 500


@attrs.frozen
class CustomSecret:
    name: str
    value_ciphertext: bytes = attrs.field(repr=False)
    created_at: float
    updated_at: float


class SecretInUseError(StoreError):
    """A secret cannot be deleted while profiles use it; ``profiles`` lists their uuids."""

    def __init__(self, name: str, profiles: list[str]):
        super().__init__(f"secret {name!r} is used by profiles: {', '.join(profiles)}")
        self.name = name
        self.profiles = profiles


def _variable(name: str) -> str:
    return variables.SECRET_PREFIX + name


class SecretQueries:
    def put_secret(self, name, value_ciphertext: bytes) -> defer.Deferred:
        """Add or replace a secret's sealed value; fires True if it was added."""
        now = self._clock.seconds()

        def put_secret(conn):
            created = conn.execute(
                "INSERT INTO custom_secrets (name, value_ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, value_ciphertext, now, now),
            ).fetchone()
            if created is None:
                conn.execute(
                    "UPDATE custom_secrets SET value_ciphertext = ?, updated_at = ? WHERE name = ?",
                    (value_ciphertext, now, name),
                )
            return created is not None

        return self._submit(put_secret)

    def get_secret(self, name) -> defer.Deferred:
        def get_secret(conn):
            row = conn.execute(
                "SELECT name, value_ciphertext, created_at, updated_at FROM custom_secrets WHERE name = ?", (name,)
            ).fetchone()
            return None if row is None else CustomSecret(row[0], bytes(row[1]), row[2], row[3])

        return self._submit(get_secret, write=False)

    def list_secrets(self) -> defer.Deferred:
        """Every secret by name; the ciphertexts are left out (b"")."""

        def list_secrets(conn):
            return [
                CustomSecret(name, b"", created_at, updated_at)
                for name, created_at, updated_at in conn.execute(
                    "SELECT name, created_at, updated_at FROM custom_secrets ORDER BY name")
            ]

        return self._submit(list_secrets, write=False)

    def missing_secrets(self, names) -> defer.Deferred:
        """Those of ``names`` that are not stored, sorted."""
        names = sorted(set(names))

        def missing_secrets(conn):
            found = set()
            for keys in chunks(names):
                found.update(n for (n,) in conn.execute(
                    f"SELECT name FROM custom_secrets WHERE name IN ({placeholders(keys)})", keys))
            return [name for name in names if name not in found]

        return self._submit(missing_secrets, write=False)

    def profiles_using_secret(self, name) -> defer.Deferred:
        """The uuids of the profiles that use the secret, sorted."""

        def profiles_using_secret(conn):
            return sorted(profiles_using(conn, [_variable(name)]))

        return self._submit(profiles_using_secret, write=False)

    def delete_secret(self, name) -> defer.Deferred:
        """Delete a secret no profile uses; fires whether it existed. SecretInUseError names the profiles using it."""

        def delete_secret(conn):
            using = sorted(profiles_using(conn, [_variable(name)]))
            if using:
                raise SecretInUseError(name, using)
            return conn.execute("DELETE FROM custom_secrets WHERE name = ?", (name,)).rowcount == 1

        return self._submit(delete_secret)

    def resend_for_secret(self, name) -> defer.Deferred:
        """
        Send again every sent host profile of every profile that uses the secret; fires how many.

        The host profiles are listed once (one read), then sent again in
        batches of RESEND_BATCH, each its own transaction: a listing walked
        by keyset instead would scan and sort every matching row for each
        batch. Each listed host profile is sent again once; one claimed again
        between two batches is not sent a second time, and one that was not
        sent yet when the list was made renders the new value when it is.
        """
        variable = _variable(name)
        detail = CHANGED_DETAIL % ("$" + variable,)

        def sent_host_profiles(conn):
            found = []
            for profiles in chunks(sorted(profiles_using(conn, [variable]))):
                found += conn.execute(
                    "SELECT host_uuid, profile_uuid FROM host_profiles"
                    f" WHERE profile_uuid IN ({placeholders(profiles)}) AND status IS NOT NULL",
                    profiles,
                ).fetchall()
            return found

        def batch(rows):
            now = self._clock.seconds()  # read here, on the caller's thread, as every store method does

            def resend_batch(conn):
                return resend(conn, rows, detail, now)

            return resend_batch

        async def in_batches():
            total = 0
            for rows in chunks(await self._submit(sent_host_profiles, write=False), RESEND_BATCH):
                total += len(await self._submit(batch(rows)))
            return total

        return defer.ensureDeferred(in_batches())
