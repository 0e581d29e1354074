"""Upstream CAs: named SCEP endpoints with a sealed static challenge."""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.database import keyset, one, order_by
from scepproxyd.store.models import (
    CertificateAuthority,
    DuplicateError,
    InUseError,
    NotFoundError,
    RaIdentityRecord,
)

#: The sort key of CA lists (keyset pagination).
CA_ORDER = (("name", False),)
_CA_COLUMNS = (
    "name, url, challenge_ciphertext, created_at, updated_at, tls_trust_bundle, tls_verify, builtin,"
    " mode, ra_key_ciphertext, ra_certificate, ra_enrolled"
)


def _profiles_using(conn, name) -> list[str]:
    return [uuid for (uuid,) in conn.execute("SELECT uuid FROM profiles WHERE ca_name = ? ORDER BY uuid", (name,))]


def _refuse_in_use(conn, name) -> None:
    """
    Name the profiles that hold the CA, rather than let the foreign key refuse.

    The RESTRICT in the schema still backs this up, but its error names no
    profile, and the admin needs to know which ones to change first.
    """
    profiles = _profiles_using(conn, name)
    if profiles:
        raise InUseError(name, profiles)


def _ra_columns(ra: RaIdentityRecord | None, forget: bool) -> tuple:
    """update_ca's parameters for the RA identity: (forget, new value) for each of its three columns."""
    values = (None, None, None) if ra is None else (ra.key_ciphertext, ra.certificate, int(ra.enrolled))
    forget = bool(forget) and ra is None
    return tuple(item for value in values for item in (forget, value))


class CaQueries:
    def add_ca(self, name, url, challenge_ciphertext=None, tls_trust_bundle=None, tls_verify=True,
               mode="passthrough", ra: RaIdentityRecord | None = None) -> defer.Deferred:
        """Add an upstream CA (in ``mode``, with its RA identity ``ra``); a name already in use fails with DuplicateError."""
        now = self._clock.seconds()
        ra_columns = (None, None, 0) if ra is None else (ra.key_ciphertext, ra.certificate, int(ra.enrolled))

        def add_ca(conn):
            cursor = conn.execute(
                f"INSERT INTO cas ({_CA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
                f" ON CONFLICT (name) DO NOTHING RETURNING {_CA_COLUMNS}",
                (name, url, challenge_ciphertext, now, now, tls_trust_bundle, int(bool(tls_verify)), mode,
                 *ra_columns),
            )
            ca = one(CertificateAuthority, cursor)
            if ca is None:
                raise DuplicateError(f"a CA named {name!r} already exists")
            return ca

        return self._submit(add_ca, changes_targets=True)

    def get_ca(self, name) -> defer.Deferred:
        def get_ca(conn):
            return one(CertificateAuthority, conn.execute(f"SELECT {_CA_COLUMNS} FROM cas WHERE name = ?", (name,)))

        return self._submit(get_ca, write=False)

    def list_cas(self, after=None, limit=None) -> defer.Deferred:
        """CAs by name: all, or one page (``after`` a CA_ORDER key)."""

        def list_cas(conn):
            where, params = keyset(CA_ORDER, after)
            return [CertificateAuthority(*row) for row in conn.execute(
                f"SELECT {_CA_COLUMNS} FROM cas WHERE {where} ORDER BY {order_by(CA_ORDER)} LIMIT ?",
                (*params, -1 if limit is None else limit),
            )]

        return self._submit(list_cas, write=False)

    def update_ca(self, name, new_name=None, url=None, challenge_ciphertext=None,
                  tls_trust_bundle=None, tls_verify=None, mode=None,
                  ra: RaIdentityRecord | None = None, forget_ra: bool = False) -> defer.Deferred:
        """
        Change a CA's name, URL, sealed challenge, TLS trust, mode or RA identity; None leaves a field as
        it is (an empty trust bundle removes the bundle; a CA back in passthrough keeps its RA identity
        unless ``forget_ra``: one enrolled from a CA at another URL is no use).

        NotFoundError if there is no such CA; a rename fails with InUseError
        while profiles use the CA, and with DuplicateError if the new name is taken.
        """
        now = self._clock.seconds()
        renaming = new_name is not None and new_name != name

        def update_ca(conn):
            if conn.execute("SELECT 1 FROM cas WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"no CA named {name!r}")
            if renaming:
                _refuse_in_use(conn, name)
                if conn.execute("SELECT 1 FROM cas WHERE name = ?", (new_name,)).fetchone() is not None:
                    raise DuplicateError(f"a CA named {new_name!r} already exists")
            cursor = conn.execute(
                "UPDATE cas SET name = ?, url = COALESCE(?, url),"
                " challenge_ciphertext = COALESCE(?, challenge_ciphertext),"
                " tls_trust_bundle = CASE WHEN ? IS NULL THEN tls_trust_bundle ELSE NULLIF(?, '') END,"
                " tls_verify = COALESCE(?, tls_verify), mode = COALESCE(?, mode),"
                " ra_key_ciphertext = CASE WHEN ? THEN NULL ELSE COALESCE(?, ra_key_ciphertext) END,"
                " ra_certificate = CASE WHEN ? THEN NULL ELSE COALESCE(?, ra_certificate) END,"
                " ra_enrolled = CASE WHEN ? THEN 0 ELSE COALESCE(?, ra_enrolled) END, updated_at = ?"
                f" WHERE name = ? RETURNING {_CA_COLUMNS}",
                (new_name if renaming else name, url, challenge_ciphertext, tls_trust_bundle, tls_trust_bundle,
                 None if tls_verify is None else int(bool(tls_verify)), mode,
                 *_ra_columns(ra, forget_ra), now, name),
            )
            return one(CertificateAuthority, cursor)

        return self._submit(update_ca, changes_targets=True)

    def delete_ca(self, name) -> defer.Deferred:
        """Delete a CA; NotFoundError if there is none, InUseError while profiles use it."""

        def delete_ca(conn):
            if conn.execute("SELECT 1 FROM cas WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"no CA named {name!r}")
            _refuse_in_use(conn, name)
            conn.execute("DELETE FROM cas WHERE name = ?", (name,))

        return self._submit(delete_ca, changes_targets=True)

    def profiles_using_ca(self, name) -> defer.Deferred:
        """The uuids of the profiles that use the CA, sorted; empty for an unknown CA."""

        def profiles_using_ca(conn):
            return _profiles_using(conn, name)

        return self._submit(profiles_using_ca, write=False)
