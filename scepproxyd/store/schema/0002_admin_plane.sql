-- scepproxyd schema version 2: what the admin plane needs.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 2.

-- What kind of profile this is, its PayloadIdentifier (Apple) or template
-- name (Android), and the variable names found in it as a JSON list, kept
-- for display. Rows from schema 1 are all mobileconfigs.
ALTER TABLE profiles ADD COLUMN kind TEXT NOT NULL DEFAULT 'mobileconfig'
    CHECK (kind IN ('mobileconfig', 'android_template'));
ALTER TABLE profiles ADD COLUMN identifier TEXT;
ALTER TABLE profiles ADD COLUMN variables TEXT;

-- A token unique to each host profile ("sp-" and 16 hex digits), set when
-- the profile is assigned; found later in the certificate's CN or OU, it
-- ties a certificate back to its host profile for renewal. Existing rows
-- get one here; UNIQUE still allows NULL.
ALTER TABLE host_profiles ADD COLUMN renewal_id TEXT;
UPDATE host_profiles SET renewal_id = 'sp-' || lower(hex(randomblob(8))) WHERE renewal_id IS NULL;
CREATE UNIQUE INDEX host_profiles_renewal_id ON host_profiles (renewal_id);
