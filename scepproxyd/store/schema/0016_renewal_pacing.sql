-- scepproxyd schema version 16: renewal pacing.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 16.
--
-- Each CA's renewal pace (scepproxyd/pacing.py), so that several nodes
-- sharing one PostgreSQL database hold [renewal] limit together: a node
-- locks its CA's row (an UPDATE) for the transaction in which it starts
-- renewals, and writes what it started before it commits.
-- started: renewals started in the window beginning at window_start
-- ([renewal] limit_interval, aligned to the epoch); window_start only moves
-- forward. next_start_at: when the CA's next start is due at its even pace
-- (0: long ago). ca_name is the profile's CA, or '-' for profiles that name
-- none; no foreign key, since a deleted CA's last count harms nothing and a
-- CA may be deleted at any time.
CREATE TABLE renewal_windows (
    ca_name TEXT NOT NULL PRIMARY KEY,
    window_start REAL NOT NULL,
    started INTEGER NOT NULL,
    next_start_at REAL NOT NULL
);
