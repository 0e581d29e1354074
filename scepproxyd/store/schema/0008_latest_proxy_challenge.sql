-- scepproxyd schema version 8: replaying an old proxy URL changes nothing.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 8.

-- The SHA-256 (hex) of the proxy challenge most recently issued to the host
-- profile in its current attempt: set in the same transaction that mints
-- the challenge, cleared when the processing job claims a new attempt. A
-- refused challenge sends the host profile back to NULL only when it is
-- this one and the host profile is still 'pending'; any other (older,
-- unknown, another host profile's) changes nothing, even once the row in
-- `challenges` is long gone. Never shown by any API.
ALTER TABLE host_profiles ADD COLUMN proxy_challenge_hash TEXT;

-- Pending host profiles keep working across the upgrade: the newest live
-- challenge (unused or in flight) is the one most recently issued.
UPDATE host_profiles SET proxy_challenge_hash = (
    SELECT sha256_hex(live.challenge) FROM (
        SELECT challenge, created_at FROM challenges c
            WHERE c.host_uuid = host_profiles.host_uuid AND c.profile_uuid = host_profiles.profile_uuid
        UNION ALL
        SELECT challenge, created_at FROM challenges_in_flight f
            WHERE f.host_uuid = host_profiles.host_uuid AND f.profile_uuid = host_profiles.profile_uuid
    ) AS live ORDER BY live.created_at DESC, live.challenge LIMIT 1
) WHERE status = 'pending';

-- A pending host profile whose challenge was already spent or expired and
-- deleted before the upgrade has no hash to keep. It is marked 'legacy': its
-- next refused challenge counts as before (back to NULL, retries + 1), so it
-- is not stranded in 'pending'; the next claim clears the mark.
UPDATE host_profiles SET proxy_challenge_hash = 'legacy'
    WHERE status = 'pending' AND proxy_challenge_hash IS NULL;
