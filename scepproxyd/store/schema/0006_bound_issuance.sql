-- scepproxyd schema version 6: every certificate bound to the host profile that earned it.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 6.

-- The built-in CA is marked as such, so rendering gives its profiles a
-- one-time CA challenge instead of a reusable static one. The start-up
-- registration sets the flag and clears the sealed static challenge.
ALTER TABLE cas ADD COLUMN builtin INTEGER NOT NULL DEFAULT 0;

-- One-time CA challenges are now either minted by an admin (no host
-- profile) or minted at render for one host profile, whose certificate
-- request they authorise. Rebuilt to carry the cascade from host_profiles;
-- the rows are short-lived, admin-minted ones are kept.
CREATE TABLE ca_challenges_v6 (
    challenge_hash TEXT NOT NULL PRIMARY KEY,
    template TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    host_uuid TEXT,
    profile_uuid TEXT,
    FOREIGN KEY (host_uuid, profile_uuid)
        REFERENCES host_profiles (host_uuid, profile_uuid) ON DELETE CASCADE
);
INSERT INTO ca_challenges_v6 (challenge_hash, template, created_at, expires_at)
    SELECT challenge_hash, template, created_at, expires_at FROM ca_challenges;
DROP TABLE ca_challenges;
ALTER TABLE ca_challenges_v6 RENAME TO ca_challenges;
CREATE INDEX ca_challenges_expires_at ON ca_challenges (expires_at);
CREATE INDEX ca_challenges_host_profile ON ca_challenges (host_uuid, profile_uuid);

-- The host profile whose one-time challenge authorised a request, kept with
-- the request (for a PENDING one that an admin approves later) and with the
-- certificate, which is recorded on that host profile and no other.
ALTER TABLE ca_requests ADD COLUMN host_uuid TEXT;
ALTER TABLE ca_requests ADD COLUMN profile_uuid TEXT;
ALTER TABLE issued_certificates ADD COLUMN host_uuid TEXT;
ALTER TABLE issued_certificates ADD COLUMN profile_uuid TEXT;
