-- scepproxyd schema version 14: RA mode for upstream CAs.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 14.
--
-- mode: 'passthrough' forwards the device's PKIOperation untouched (the
-- behaviour before this version, and the default); 'ra' makes the proxy a
-- registration authority for this CA (docs/ra-mode.md).
-- ra_key_ciphertext: the RA's private key (PKCS#8 DER), sealed with the
-- daemon's secrets key (AES-256-GCM, its own associated data), so a copy of
-- the database alone reveals nothing and every node sharing the database
-- and the secrets key holds the same RA.
-- ra_certificate: the RA's certificate (DER), public.
-- ra_enrolled: 1 when the upstream CA issued the RA certificate over SCEP,
-- 0 when it is self-signed.
ALTER TABLE cas ADD COLUMN mode TEXT NOT NULL DEFAULT 'passthrough' CHECK (mode IN ('passthrough', 'ra'));
ALTER TABLE cas ADD COLUMN ra_key_ciphertext BLOB;
ALTER TABLE cas ADD COLUMN ra_certificate BLOB;
ALTER TABLE cas ADD COLUMN ra_enrolled INTEGER NOT NULL DEFAULT 0;

-- A RenewalReq in RA mode is forwarded once per recorded certificate: the
-- host profile is claimed (cert_serial it renews, and when) for as long as
-- the upstream call lasts, so two copies of one renewal sent at once reach
-- the upstream CA once. A claim older than the upstream timeouts is stale
-- (the node died mid-call) and may be taken again.
ALTER TABLE host_profiles ADD COLUMN ra_renewing_serial TEXT;
ALTER TABLE host_profiles ADD COLUMN ra_renewing_since REAL;
