-- scepproxyd schema version 1.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 1. Times are REAL epoch seconds. The SQL stays
-- portable where it costs nothing (no STRICT, no WITHOUT ROWID), so a
-- PostgreSQL store can later share the same shape.

-- Upstream SCEP CAs. The name is the CA's identity: profiles refer to it in
-- their variables, so ON UPDATE RESTRICT below keeps it from changing under them.
CREATE TABLE cas (
    name TEXT NOT NULL PRIMARY KEY,
    url TEXT NOT NULL,
    challenge_ciphertext BLOB,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE hosts (
    uuid TEXT NOT NULL PRIMARY KEY,
    serial TEXT,
    platform TEXT NOT NULL CHECK (platform IN ('macos', 'ios', 'ipados', 'android')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE profiles (
    uuid TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    platform TEXT NOT NULL CHECK (platform IN ('macos', 'ios', 'ipados', 'android')),
    content BLOB NOT NULL,
    ca_name TEXT REFERENCES cas (name) ON UPDATE RESTRICT ON DELETE RESTRICT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- Lets the RESTRICT check on a CA delete/rename use an index, not a scan.
CREATE INDEX profiles_ca_name ON profiles (ca_name);

-- One row per profile assigned to a host. NULL status means "needs
-- (re)sending"; the processing job picks those up.
CREATE TABLE host_profiles (
    host_uuid TEXT NOT NULL REFERENCES hosts (uuid) ON DELETE CASCADE,
    profile_uuid TEXT NOT NULL REFERENCES profiles (uuid) ON DELETE CASCADE,
    status TEXT CHECK (status IS NULL OR status IN ('pending', 'verifying', 'verified', 'failed')),
    detail TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (host_uuid, profile_uuid)
);
CREATE INDEX host_profiles_status ON host_profiles (status);
-- The primary key covers cascades from hosts; this one covers profiles.
CREATE INDEX host_profiles_profile_uuid ON host_profiles (profile_uuid);

-- One-time challenges, each bound to one host profile. Consumed with a
-- single DELETE ... RETURNING; expired rows removed by the cleanup job.
CREATE TABLE challenges (
    challenge TEXT NOT NULL PRIMARY KEY,
    host_uuid TEXT NOT NULL,
    profile_uuid TEXT NOT NULL,
    created_at REAL NOT NULL,
    FOREIGN KEY (host_uuid, profile_uuid)
        REFERENCES host_profiles (host_uuid, profile_uuid) ON DELETE CASCADE
);
CREATE INDEX challenges_created_at ON challenges (created_at);
-- Lets the cascade from host_profiles find a pair's challenges by index.
CREATE INDEX challenges_host_profile ON challenges (host_uuid, profile_uuid);
