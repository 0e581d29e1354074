-- scepproxyd schema version 18: Windows hosts and SyncML profiles.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 18. PostgreSQL runs 0018_windows_platform.postgresql.sql
-- instead (it can drop a CHECK constraint; SQLite cannot).
--
-- hosts.platform and profiles.platform accept 'windows', and profiles.kind
-- accepts 'windows_syncml' (a SyncML ClientCertificateInstall profile).
-- SQLite keeps CHECK constraints in the table's definition, so both tables
-- are rebuilt by its documented procedure: make the new table, copy every
-- row, drop the old one, rename the new one into place, make the indexes
-- again. Store.migrate runs this with foreign keys off and the modern
-- ALTER TABLE, so the tables that reference hosts or profiles by name
-- (host_profiles, agent_credentials, and any added later) keep referencing
-- the rebuilt tables without being touched here; PRAGMA foreign_key_check
-- then proves every row still has its parent. Columns keep their order, so
-- the tables read exactly as before.
CREATE TABLE hosts_rebuilt (
    uuid TEXT NOT NULL PRIMARY KEY,
    serial TEXT,
    platform TEXT NOT NULL CHECK (platform IN ('macos', 'ios', 'ipados', 'android', 'windows')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO hosts_rebuilt (uuid, serial, platform, created_at, updated_at)
    SELECT uuid, serial, platform, created_at, updated_at FROM hosts;
DROP TABLE hosts;
ALTER TABLE hosts_rebuilt RENAME TO hosts;

CREATE TABLE profiles_rebuilt (
    uuid TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    platform TEXT NOT NULL CHECK (platform IN ('macos', 'ios', 'ipados', 'android', 'windows')),
    content BLOB NOT NULL,
    ca_name TEXT REFERENCES cas (name) ON UPDATE RESTRICT ON DELETE RESTRICT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'mobileconfig'
        CHECK (kind IN ('mobileconfig', 'android_template', 'windows_syncml')),
    identifier TEXT,
    variables TEXT,
    identifier_shared INTEGER NOT NULL DEFAULT 0
);
INSERT INTO profiles_rebuilt (uuid, name, platform, content, ca_name, created_at, updated_at,
                              kind, identifier, variables, identifier_shared)
    SELECT uuid, name, platform, content, ca_name, created_at, updated_at,
           kind, identifier, variables, identifier_shared FROM profiles;
DROP TABLE profiles;
ALTER TABLE profiles_rebuilt RENAME TO profiles;
CREATE INDEX profiles_ca_name ON profiles (ca_name);
CREATE UNIQUE INDEX profiles_kind_identifier ON profiles (kind, identifier)
    WHERE identifier_shared = 0;
CREATE INDEX profiles_name_uuid ON profiles (name, uuid);
