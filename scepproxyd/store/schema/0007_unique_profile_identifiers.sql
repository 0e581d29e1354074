-- scepproxyd schema version 7: one profile per identifier.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 7.

-- A profile's identifier (Apple PayloadIdentifier, Android template name)
-- is how a device's installed-profiles report finds it, and on an Apple
-- device a second profile with the same PayloadIdentifier replaces the
-- first. Two profiles of a kind sharing one would verify each other, so
-- from now on an identifier belongs to one profile of its kind.
--
-- Databases made before this rule may already hold such pairs. The
-- migration must not fail on them and must not rewrite them (the identifier
-- is what their devices report), so they are marked here and left out of
-- the unique index. add_profile() still refuses a new profile that would
-- share an identifier with a marked one (its check runs in the insert's
-- transaction); the daemon names the marked pairs in a warning at every
-- start, so the admin can delete one of each.
ALTER TABLE profiles ADD COLUMN identifier_shared INTEGER NOT NULL DEFAULT 0;
UPDATE profiles SET identifier_shared = 1
    WHERE identifier IS NOT NULL AND EXISTS (
        SELECT 1 FROM profiles other
        WHERE other.kind = profiles.kind AND other.identifier = profiles.identifier
          AND other.uuid <> profiles.uuid
    );
-- Race-safe: of two concurrent inserts, the second fails here whatever the
-- check before it saw. NULL identifiers (rows older than schema 2) never clash.
CREATE UNIQUE INDEX profiles_kind_identifier ON profiles (kind, identifier)
    WHERE identifier_shared = 0;
