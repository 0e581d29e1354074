-- scepproxyd schema version 16: renewal pacing.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 16.
--
-- How many renewals the renewal job started for each CA in the current
-- pacing window ([renewal] limit_interval, aligned to the epoch), so that
-- several nodes sharing one PostgreSQL database hold [renewal] limit
-- together: a node locks its CA's row (an UPDATE) for the transaction in
-- which it starts renewals, and adds what it started before it commits.
-- ca_name is the profile's CA, or '-' for profiles that name none; no
-- foreign key, since the count of a deleted CA's last window harms nothing
-- and a CA may be deleted at any time. window_start only moves forward.
CREATE TABLE renewal_windows (
    ca_name TEXT NOT NULL PRIMARY KEY,
    window_start REAL NOT NULL,
    started INTEGER NOT NULL
);
