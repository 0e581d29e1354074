-- scepproxyd schema version 17: host end users and custom secrets.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 17.
--
-- The end user a host is assigned to, as the IdP knows them: what the
-- $FLEET_VAR_HOST_END_USER_... variables render. A table of its own (the
-- hosts table is left as it is), one row per host that has any of them;
-- deleting the host deletes it. idp_groups is a JSON list of strings.
CREATE TABLE host_end_users (
    host_uuid TEXT NOT NULL PRIMARY KEY REFERENCES hosts (uuid) ON DELETE CASCADE,
    idp_username TEXT,
    idp_full_name TEXT,
    idp_groups TEXT NOT NULL DEFAULT '[]',
    idp_department TEXT,
    idp_email TEXT,
    updated_at REAL NOT NULL
);

-- Custom secrets ($FLEET_SECRET_<NAME>): the value sealed with the same key
-- and cipher as a CA's static challenge, never kept or shown in clear.
CREATE TABLE custom_secrets (
    name TEXT NOT NULL PRIMARY KEY,
    value_ciphertext BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
