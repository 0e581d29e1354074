-- scepproxyd schema version 18 on PostgreSQL: Windows hosts and SyncML profiles.
--
-- What 0018_windows_platform.sql does on SQLite by rebuilding the tables:
-- hosts.platform and profiles.platform accept 'windows', profiles.kind
-- accepts 'windows_syncml'. PostgreSQL named the CHECK constraints of
-- schemas 1 and 2 after their table and column, and replaces them in place:
-- rows, indexes and the foreign keys that point at these tables stay as
-- they are.
ALTER TABLE hosts DROP CONSTRAINT hosts_platform_check;
ALTER TABLE hosts ADD CONSTRAINT hosts_platform_check
    CHECK (platform IN ('macos', 'ios', 'ipados', 'android', 'windows'));
ALTER TABLE profiles DROP CONSTRAINT profiles_platform_check;
ALTER TABLE profiles ADD CONSTRAINT profiles_platform_check
    CHECK (platform IN ('macos', 'ios', 'ipados', 'android', 'windows'));
ALTER TABLE profiles DROP CONSTRAINT profiles_kind_check;
ALTER TABLE profiles ADD CONSTRAINT profiles_kind_check
    CHECK (kind IN ('mobileconfig', 'android_template', 'windows_syncml'));
