-- scepproxyd schema version 15: what every node sharing this database must hold.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 15.
--
-- Several nodes on one PostgreSQL database must use the same state files:
-- the secrets key (it opens the sealed challenges and RA keys), the admin
-- and webhook tokens, the built-in CA's certificate. The first node to start
-- records a fingerprint of each (an HMAC under the secrets key, a hash of a
-- token, the CA certificate's SHA-256: none of them opens anything), and a
-- node whose files differ refuses to start, naming them, instead of
-- quietly running a second site with its own keys (docs/operations.md,
-- Several nodes). One node on SQLite records nothing here.
CREATE TABLE node_fingerprints (
    name TEXT NOT NULL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL
);
