-- scepproxyd schema version 4: the built-in SCEP CA.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 4. Times are REAL epoch seconds.

-- Every certificate the built-in CA has issued, kept for GetCert, renewal
-- checks, revocation and the CRL. The serial is lowercase hex, as the rest
-- of scepproxyd shows serials. sender_nonce is that of the request message it
-- answered, so a replayed message is recognised and never issued twice.
CREATE TABLE issued_certificates (
    serial TEXT NOT NULL PRIMARY KEY,
    subject TEXT NOT NULL,
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'revoked')),
    revoked_at REAL,
    revocation_reason TEXT,
    requester TEXT,
    transaction_id TEXT,
    template TEXT NOT NULL,
    renewal_of TEXT,
    der BLOB NOT NULL,
    created_at REAL NOT NULL,
    sender_nonce TEXT
);
-- Listing by status, and the CRL (status = 'revoked').
CREATE INDEX issued_certificates_status ON issued_certificates (status, created_at);
CREATE INDEX issued_certificates_sender_nonce ON issued_certificates (sender_nonce);

-- PKCSReq / RenewalReq transactions the CA accepted: pending ones wait for an
-- admin; approved ones are issued and wait for the device's CertPoll; issued
-- ones have been handed over. The signer certificate is kept so a CertPoll
-- answer can be encrypted to it. A finished transaction (issued, rejected)
-- may be replaced by a new request under the same ID: clients derive the ID
-- from the public key, so a renewal with the same key reuses it.
CREATE TABLE ca_requests (
    transaction_id TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'issued')),
    subject TEXT NOT NULL,
    csr BLOB NOT NULL,
    signer_certificate BLOB,
    requester TEXT,
    template TEXT NOT NULL,
    detail TEXT,
    issued_serial TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sender_nonce TEXT
);
CREATE INDEX ca_requests_status ON ca_requests (status, created_at);

-- One-time challenges minted by an admin for the built-in CA. Only the
-- SHA-256 of each is stored; consumed with one DELETE ... RETURNING.
CREATE TABLE ca_challenges (
    challenge_hash TEXT NOT NULL PRIMARY KEY,
    template TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX ca_challenges_expires_at ON ca_challenges (expires_at);
