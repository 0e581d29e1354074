-- scepproxyd schema version 11: one row the write probe updates.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 11.

-- Every few seconds ([database] write_probe_interval) the daemon updates
-- this row and truncates the WAL, so a disk that has filled up (or turned
-- read-only) shows in /readyz without any traffic, and so does its recovery.
-- Holds nothing but a count and the time of the last successful probe (the
-- count changes every time: SQLite writes nothing for an update that
-- changes no value, and the probe must write).
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probes INTEGER NOT NULL,
    probed_at TEXT NOT NULL
);
INSERT INTO write_probe (id, probes, probed_at) VALUES (1, 0, '');
