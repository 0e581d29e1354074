"""Profiles: Apple mobileconfigs and Android certificate templates, as uploaded."""

from __future__ import annotations

import json

from twisted.internet import defer

from scepproxyd.store.database import keyset, order_by
from scepproxyd.store.models import (
    PLATFORMS,
    PROFILE_KINDS,
    DuplicateError,
    IdentifierInUseError,
    NotFoundError,
    Profile,
    check_choice,
)

#: The sort key of profile lists (keyset pagination).
PROFILE_ORDER = (("name", False), ("uuid", False))
_PROFILE_COLUMNS = "uuid, name, platform, kind, identifier, ca_name, variables, content, created_at, updated_at"


def _profile(row) -> Profile:
    """A Profile from a row; ``variables`` is stored as a JSON list (NULL in rows older than schema 2)."""
    uuid, name, platform, kind, identifier, ca_name, variables, content, created_at, updated_at = row
    names = tuple(json.loads(variables)) if variables else ()
    return Profile(uuid, name, platform, kind, identifier, ca_name, names, bytes(content), created_at, updated_at)


class ProfileQueries:
    def add_profile(
        self,
        uuid,
        name,
        platform,
        content: bytes,
        ca_name: str | None,
        kind: str = "mobileconfig",
        identifier: str | None = None,
        variables=(),
    ) -> defer.Deferred:
        """
        Add a profile and fire it; DuplicateError if the uuid exists, NotFoundError if the CA does not.

        ``identifier`` is the Apple PayloadIdentifier or the template name;
        ``variables`` the variable names found in it, kept for display.
        IdentifierInUseError if another profile of the same kind has that
        identifier: the check runs in the insert's own transaction, with the
        unique index of schema 7 behind it. On PostgreSQL two uploads can
        pass the check at once; the insert then skips the row the index
        refuses (ON CONFLICT DO NOTHING, which waits for the other to commit)
        and the check, run again, names the winner, as on SQLite.
        """
        now = self._clock.seconds()
        variables = tuple(variables)

        def refuse_taken(conn):
            if conn.execute("SELECT 1 FROM profiles WHERE uuid = ?", (uuid,)).fetchone() is not None:
                raise DuplicateError(f"a profile with uuid {uuid} already exists")
            if identifier is not None:
                holder = conn.execute(
                    "SELECT uuid, name FROM profiles WHERE kind = ? AND identifier = ? ORDER BY created_at, uuid LIMIT 1",
                    (kind, identifier),
                ).fetchone()
                if holder is not None:
                    raise IdentifierInUseError(kind, identifier, *holder)

        def add_profile(conn):
            check_choice(platform, PLATFORMS, "platform")
            check_choice(kind, PROFILE_KINDS, "profile kind")
            refuse_taken(conn)
            if ca_name is not None and conn.execute("SELECT 1 FROM cas WHERE name = ?", (ca_name,)).fetchone() is None:
                raise NotFoundError(f"profile {uuid} uses CA {ca_name!r}, which does not exist")
            row = conn.execute(
                f"INSERT INTO profiles ({_PROFILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT DO NOTHING RETURNING {_PROFILE_COLUMNS}",
                (uuid, name, platform, kind, identifier, ca_name, json.dumps(list(variables)), content, now, now),
            ).fetchone()
            if row is None:
                # Taken since the check: on PostgreSQL (READ COMMITTED) a concurrent upload, on another node or
                # thread, passed it too and committed first. Checked again, the winner shows; say which it is.
                refuse_taken(conn)
                raise DuplicateError(f"profile {uuid} or its identifier was added by another upload at the same time")
            return _profile(row)

        return self._submit(add_profile, changes_targets=True)

    def get_profile(self, uuid) -> defer.Deferred:
        def get_profile(conn):
            row = conn.execute(f"SELECT {_PROFILE_COLUMNS} FROM profiles WHERE uuid = ?", (uuid,)).fetchone()
            return None if row is None else _profile(row)

        return self._submit(get_profile, write=False)

    def list_profiles(self, after=None, limit=None) -> defer.Deferred:
        """Profiles ordered by name then uuid: all, or one page (``after`` a PROFILE_ORDER key)."""

        def list_profiles(conn):
            where, params = keyset(PROFILE_ORDER, after)
            return [_profile(row) for row in conn.execute(
                f"SELECT {_PROFILE_COLUMNS} FROM profiles WHERE {where} ORDER BY {order_by(PROFILE_ORDER)} LIMIT ?",
                (*params, -1 if limit is None else limit),
            )]

        return self._submit(list_profiles, write=False)

    def delete_profile(self, uuid) -> defer.Deferred:
        """Delete a profile, unassigning it from every host; fires whether it existed."""

        def delete_profile(conn):
            return conn.execute("DELETE FROM profiles WHERE uuid = ?", (uuid,)).rowcount == 1

        return self._submit(delete_profile, changes_targets=True)

    def shared_profile_identifiers(self) -> defer.Deferred:
        """
        Identifiers that more than one profile of a kind holds, as ``[(kind, identifier, [uuids])]``.

        Only databases made before schema 7 can have them (uploads refuse a
        taken identifier since); the daemon warns about them at start.
        """

        def shared_profile_identifiers(conn):
            shared = {}
            for kind, identifier, uuid in conn.execute(
                "SELECT kind, identifier, uuid FROM profiles WHERE identifier_shared = 1"
                " ORDER BY kind, identifier, created_at, uuid"
            ):
                shared.setdefault((kind, identifier), []).append(uuid)
            return [(kind, identifier, uuids) for (kind, identifier), uuids in shared.items() if len(uuids) > 1]

        return self._submit(shared_profile_identifiers, write=False)
