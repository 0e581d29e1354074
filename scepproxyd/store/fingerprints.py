"""Several nodes must hold the same state files: the first one to start records what they are, the rest compare.

Runs before the reactor (from the tap's ``prepare_state``), with a
connection of its own, like the migration.
"""

from __future__ import annotations

from scepproxyd.store import postgres


def differing_state_files(url: str, password: str | None, fingerprints: dict[str, str], now: float) -> list[str]:
    """
    Record ``fingerprints`` (name -> fingerprint) where none is recorded yet; the names whose recorded one differs.

    One transaction, so two nodes starting at once agree on whose files are
    recorded: the second compares with the first's.
    """
    conn = postgres.connect(url, password)
    try:
        conn.execute("BEGIN")
        try:
            for name, fingerprint in sorted(fingerprints.items()):
                conn.execute(
                    "INSERT INTO node_fingerprints (name, fingerprint, created_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO NOTHING", (name, fingerprint, now),
                )
            recorded = dict(conn.execute("SELECT name, fingerprint FROM node_fingerprints").fetchall())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return sorted(name for name, fingerprint in fingerprints.items() if recorded.get(name) != fingerprint)
