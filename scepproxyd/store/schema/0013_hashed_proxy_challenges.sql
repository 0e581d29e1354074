-- scepproxyd schema version 13: one-time proxy challenges kept only as hashes.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 13.
--
-- Like the built-in CA's one-time challenges, a proxy challenge is now
-- stored only as its SHA-256 (hex), so a copy of the database (a backup, a
-- stolen disk) enrolls nothing. The device presents the challenge in its
-- proxy URL; the store hashes it and spends the row by that hash. Live
-- challenges are hashed here, so profiles already delivered still enroll.
-- Store.migrate() then rebuilds the file (VACUUM) and empties the WAL, so no
-- plain copy stays in free space (the line below asks for that).
--
-- scepproxyd: vacuum after this migration
ALTER TABLE challenges RENAME COLUMN challenge TO challenge_hash;
UPDATE challenges SET challenge_hash = sha256_hex(challenge_hash);
ALTER TABLE challenges_in_flight RENAME COLUMN challenge TO challenge_hash;
UPDATE challenges_in_flight SET challenge_hash = sha256_hex(challenge_hash);
