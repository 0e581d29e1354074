-- scepproxyd schema version 3: the profile engine.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 3.

-- One row per attempt to get a host profile onto its device. The processing
-- job claims a NULL host profile and inserts a 'queued' command for it in the
-- same transaction; a delivery backend moves it on. Only the host profile's
-- current command (host_profiles.command_uuid) is ever delivered: older ones
-- still outstanding are marked 'superseded'. Finished rows (acknowledged,
-- error, superseded) are removed by the cleanup job after a while.
CREATE TABLE commands (
    command_uuid TEXT NOT NULL PRIMARY KEY,
    host_uuid TEXT NOT NULL,
    profile_uuid TEXT NOT NULL,
    backend TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'delivered', 'acknowledged', 'error', 'superseded')),
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    FOREIGN KEY (host_uuid, profile_uuid)
        REFERENCES host_profiles (host_uuid, profile_uuid) ON DELETE CASCADE
);
-- A host's outstanding commands; its host_uuid prefix also serves the cascade.
CREATE INDEX commands_host_status ON commands (host_uuid, status);
-- What a push backend has due.
CREATE INDEX commands_backend_due ON commands (backend, status, next_attempt_at);
-- Cleanup of finished commands.
CREATE INDEX commands_status_updated_at ON commands (status, updated_at);

-- The host profile's current command, and what its device reported about
-- the certificate it got (for renewal). Times are REAL epoch seconds.
ALTER TABLE host_profiles ADD COLUMN command_uuid TEXT;
ALTER TABLE host_profiles ADD COLUMN cert_serial TEXT;
ALTER TABLE host_profiles ADD COLUMN cert_not_before REAL;
ALTER TABLE host_profiles ADD COLUMN cert_not_after REAL;
-- Renewal looks for verified host profiles by certificate expiry.
CREATE INDEX host_profiles_status_cert_not_after ON host_profiles (status, cert_not_after);
-- Claiming takes NULL host profiles oldest first: (status, updated_at) lets
-- that be an index range instead of a sort, and covers what (status) did.
DROP INDEX host_profiles_status;
CREATE INDEX host_profiles_status_updated_at ON host_profiles (status, updated_at);
