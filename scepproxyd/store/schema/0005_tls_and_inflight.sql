-- scepproxyd schema version 5.
--
-- Per-CA upstream TLS: a trust bundle (PEM) to verify the CA's HTTPS
-- certificate with instead of the system store, or verification turned off
-- by an admin (tls_verify = 0, logged as a warning at every start).
ALTER TABLE cas ADD COLUMN tls_trust_bundle TEXT;
ALTER TABLE cas ADD COLUMN tls_verify INTEGER NOT NULL DEFAULT 1;

-- Challenges taken by the proxy whose upstream call has not finished. The
-- consuming DELETE ... RETURNING moves a row here in the same transaction;
-- it leaves when the upstream answers (spent) or never answered (put back).
-- Rows left by a daemon that died mid-call are put back at the next start:
-- to the device that is a call that never got an answer.
CREATE TABLE challenges_in_flight (
    challenge TEXT NOT NULL PRIMARY KEY,
    host_uuid TEXT NOT NULL,
    profile_uuid TEXT NOT NULL,
    created_at REAL NOT NULL,
    claimed_at REAL NOT NULL,
    FOREIGN KEY (host_uuid, profile_uuid)
        REFERENCES host_profiles (host_uuid, profile_uuid) ON DELETE CASCADE
);
CREATE INDEX challenges_in_flight_host_profile ON challenges_in_flight (host_uuid, profile_uuid);
