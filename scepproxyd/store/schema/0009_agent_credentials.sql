-- scepproxyd schema version 9: per-host agent credentials.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 9.

-- Each host's agent holds a bearer credential for that host only. Only the
-- SHA-256 of the credential is kept (hex); the credential itself is shown
-- once, when the admin issues it. One per host: issuing again replaces it,
-- so the old one stops working at once. Deleting the host deletes it.
-- last_used_at is refreshed at most about once a minute, not per request.
CREATE TABLE agent_credentials (
    host_uuid TEXT NOT NULL PRIMARY KEY REFERENCES hosts (uuid) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_used_at REAL
);
