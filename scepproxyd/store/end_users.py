"""
Host end users (the IdP attributes the end-user variables render), and sending profiles again when a value changes.

A host profile renders its host's values at hand-over. When one of those
values changes (an end-user attribute, the serial), every host profile of
that host whose profile uses a variable whose value changed is sent again
from scratch, in the same transaction as the change: status NULL, retries
and command cleared, challenges deleted, like an admin's resend. A change
that leaves every rendered value as it was sends nothing. A host profile
that failed because the host had no value is among them once the value is set.
"""

from __future__ import annotations

import json

import attrs
from twisted.internet import defer

from scepproxyd.profiles import variables
from scepproxyd.profiles.model import EndUser
from scepproxyd.store.assignments import ONE_HOST_PROFILE, retire_sent_copies
from scepproxyd.store.database import chunks, placeholders
from scepproxyd.store.models import NotFoundError

#: The end-user attributes, in EndUser's field order; also the API's and the import's field names.
END_USER_FIELDS = ("idp_username", "idp_full_name", "idp_groups", "idp_department", "idp_email")
_COLUMNS = ", ".join(END_USER_FIELDS)
#: The detail of a host profile sent again because a value it renders changed; names variables, never values.
CHANGED_DETAIL = "sent again: a value it renders changed (%s)"


def _end_user(row) -> EndUser:
    username, full_name, groups, department, email = row
    return EndUser(username, full_name, tuple(json.loads(groups or "[]")), department, email)


def read_end_user(conn, host_uuid) -> EndUser | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM host_end_users WHERE host_uuid = ?", (host_uuid,)).fetchone()
    return None if row is None else _end_user(row)


def write_end_user(conn, host_uuid, changes: dict, now) -> EndUser:
    """Apply ``changes`` (END_USER_FIELDS -> value, None clears) to the host's end user; the result."""
    return write_end_users(conn, [(host_uuid, changes)], now)[0]


def write_end_users(conn, changes_by_host, now) -> list[EndUser]:
    """
    L{write_end_user} for many ``(host_uuid, changes)`` at once (an import's batch); the results, in order.

    The current end users are read a chunk of hosts at a time and written
    with one executemany, not two statements per host.
    """
    changes_by_host = list(changes_by_host)
    current = {}
    for hosts in chunks(sorted({host_uuid for host_uuid, _ in changes_by_host})):
        for host_uuid, *row in conn.execute(
            f"SELECT host_uuid, {_COLUMNS} FROM host_end_users WHERE host_uuid IN ({placeholders(hosts)})", hosts
        ):
            current[host_uuid] = _end_user(row)
    merged_users, rows = [], []
    for host_uuid, changes in changes_by_host:
        fields = attrs.asdict(current.get(host_uuid) or EndUser())
        fields.update(changes)
        fields["idp_groups"] = tuple(fields["idp_groups"] or ())
        merged = current[host_uuid] = EndUser(**fields)
        merged_users.append(merged)
        rows.append((host_uuid, merged.idp_username, merged.idp_full_name, json.dumps(list(merged.idp_groups)),
                     merged.idp_department, merged.idp_email, now))
    conn.executemany(
        f"INSERT INTO host_end_users (host_uuid, {_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (host_uuid) DO UPDATE SET idp_username = excluded.idp_username,"
        " idp_full_name = excluded.idp_full_name, idp_groups = excluded.idp_groups,"
        " idp_department = excluded.idp_department, idp_email = excluded.idp_email, updated_at = excluded.updated_at",
        rows,
    )
    return merged_users


def snapshot(conn, host_uuids) -> dict:
    """
    What each host variable renders to, for the hosts among ``host_uuids`` that have a host profile sent.

    Only those can need sending again; taken before and after a change, the
    two snapshots say which values changed (L{resend_changed}).
    """
    found = {}
    for keys in chunks(list(host_uuids)):
        rows = conn.execute(
            f"SELECT h.uuid, h.serial, h.platform, e.host_uuid, {', '.join('e.' + c for c in END_USER_FIELDS)}"
            " FROM hosts h LEFT JOIN host_end_users e ON e.host_uuid = h.uuid"
            f" WHERE h.uuid IN ({placeholders(keys)})"
            " AND EXISTS (SELECT 1 FROM host_profiles hp WHERE hp.host_uuid = h.uuid AND hp.status IS NOT NULL)",
            keys,
        )
        for uuid, serial, platform, has_user, *user in rows:
            end_user = _end_user(user) if has_user is not None else None
            found[uuid] = variables.host_values(uuid, serial, platform, end_user)
    return found


def profiles_using(conn, names) -> dict[str, set[str]]:
    """Profile uuid -> the variables among ``names`` it uses, for every profile that uses any."""
    names = set(names)
    using = {}
    for uuid, written in conn.execute("SELECT uuid, variables FROM profiles WHERE variables IS NOT NULL"):
        found = names & set(json.loads(written))
        if found:
            using[uuid] = found
    return using


def send_again(conn, sent, detail: str, now) -> None:
    """
    Send each ``(host_uuid, profile_uuid)``, read as sent in this transaction, again from scratch.

    As an admin's resend does, and the one-time challenges of the built-in
    CA rendered into the old copy are deleted as well. One executemany: a
    value that changes for a whole fleet sends tens of thousands again.
    """
    conn.executemany(
        "UPDATE host_profiles SET status = NULL, retries = 0, detail = ?, command_uuid = NULL, updated_at = ?"
        f" WHERE {ONE_HOST_PROFILE} AND status IS NOT NULL",
        [(detail, now, host_uuid, profile_uuid) for host_uuid, profile_uuid in sent],
    )
    retire_sent_copies(conn, sent, now)


def resend(conn, rows, detail: str, now) -> list[tuple[str, str]]:
    """
    L{send_again} for ``(host_uuid, profile_uuid)`` listed in an earlier transaction; those still sent.

    They are found by host (the primary key's prefix) a chunk at a time.
    """
    rows = list(rows)
    wanted = set(rows)
    found = set()
    for hosts in chunks(sorted({host_uuid for host_uuid, _ in rows})):
        found.update(row for row in map(tuple, conn.execute(
            f"SELECT host_uuid, profile_uuid FROM host_profiles WHERE host_uuid IN ({placeholders(hosts)})"
            " AND status IS NOT NULL",
            hosts,
        )) if row in wanted)
    sent = [row for row in rows if row in found]
    send_again(conn, sent, detail, now)
    return sent


def resend_changed(conn, before: dict, after: dict, now) -> list[tuple[str, str]]:
    """Send again the host profiles whose profile uses a host variable whose value differs between two snapshots."""
    changed = {}
    for host_uuid, old in before.items():
        new = after.get(host_uuid)
        if new is not None:
            names = {name for name in variables.HOST_VARIABLES if old.get(name) != new.get(name)}
            if names:
                changed[host_uuid] = names
    if not changed:
        return []
    using = profiles_using(conn, set().union(*changed.values()))
    if not using:
        return []
    by_detail: dict[str, list[tuple[str, str]]] = {}
    for hosts in chunks(sorted(changed)):
        rows = conn.execute(
            f"SELECT host_uuid, profile_uuid FROM host_profiles WHERE host_uuid IN ({placeholders(hosts)})"
            " AND status IS NOT NULL ORDER BY host_uuid, profile_uuid",
            hosts,
        ).fetchall()
        for host_uuid, profile_uuid in rows:
            used = using.get(profile_uuid, set()) & changed[host_uuid]
            if used:
                detail = CHANGED_DETAIL % (", ".join("$" + name for name in sorted(used)),)
                by_detail.setdefault(detail, []).append((host_uuid, profile_uuid))
    sent = []
    for detail, rows in by_detail.items():  # read as sent just now, in this transaction
        send_again(conn, rows, detail, now)
        sent += rows
    return sent


class EndUserQueries:
    def set_end_user(self, host_uuid, changes: dict) -> defer.Deferred:
        """
        Change some of the host's end-user attributes (``changes``: END_USER_FIELDS -> value, None clears).

        Fires ``(EndUser, sent)``: the end user now, and the ``(host_uuid,
        profile_uuid)`` pairs sent again because a value they render
        changed. NotFoundError if there is no such host.
        """
        now = self._clock.seconds()
        changes = dict(changes)

        def set_end_user(conn):
            unknown = set(changes) - set(END_USER_FIELDS)
            if unknown:
                raise ValueError("unknown end-user fields: %s" % (", ".join(sorted(unknown)),))
            if conn.execute("SELECT 1 FROM hosts WHERE uuid = ?", (host_uuid,)).fetchone() is None:
                raise NotFoundError(f"no host {host_uuid}")
            before = snapshot(conn, [host_uuid])
            end_user = write_end_user(conn, host_uuid, changes, now)
            return end_user, resend_changed(conn, before, snapshot(conn, [host_uuid]), now)

        return self._submit(set_end_user)

    def render_inputs(self, host_uuid, profile_uuid) -> defer.Deferred:
        """
        What rendering one host profile needs beyond its RenderJob: fires RenderInputs, or None if it is gone.

        The host's values for every host variable, and the sealed values of
        the custom secrets its profile uses (a secret missing from the
        store is simply absent: rendering then names it).
        """

        def render_inputs(conn):
            row = conn.execute(
                "SELECT h.serial, h.platform, p.variables FROM host_profiles hp JOIN hosts h ON h.uuid = hp.host_uuid"
                " JOIN profiles p ON p.uuid = hp.profile_uuid WHERE hp.host_uuid = ? AND hp.profile_uuid = ?",
                (host_uuid, profile_uuid),
            ).fetchone()
            if row is None:
                return None
            serial, platform, written = row
            names = tuple(json.loads(written)) if written else ()
            host = variables.host_values(host_uuid, serial, platform, read_end_user(conn, host_uuid))
            sealed = {}
            for keys in chunks(variables.secret_names(names)):
                sealed.update(
                    (name, bytes(ciphertext)) for name, ciphertext in conn.execute(
                        f"SELECT name, value_ciphertext FROM custom_secrets WHERE name IN ({placeholders(keys)})", keys)
                )
            return RenderInputs(names, host, sealed)

        return self._submit(render_inputs, write=False)

    def render_failed(self, command_uuid, detail: str) -> defer.Deferred:
        """
        The host profile whose current command this is cannot be rendered: 'failed' with ``detail``, no retry.

        For a value the host lacks, which no retry would find; setting the
        value sends it again (L{resend_changed}). Fires the (host_uuid,
        profile_uuid) failed, or None if the command is no longer current.
        """
        now = self._clock.seconds()

        def render_failed(conn):
            row = conn.execute(
                "UPDATE host_profiles SET status = 'failed', detail = ?, updated_at = ?"
                " WHERE command_uuid = ? AND status = 'pending' RETURNING host_uuid, profile_uuid",
                (detail, now, command_uuid),
            ).fetchone()
            conn.execute(
                "UPDATE commands SET status = 'error', detail = ?, updated_at = ? WHERE command_uuid = ?",
                (detail, now, command_uuid),
            )
            return None if row is None else tuple(row)

        return self._submit(render_failed)


@attrs.frozen
class RenderInputs:
    """The variables a host profile's profile uses, its host's values, and its secrets still sealed."""

    variables: tuple[str, ...]
    host: dict = attrs.field(eq=False)
    sealed_secrets: dict = attrs.field(repr=False, eq=False)
