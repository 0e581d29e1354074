-- scepproxyd schema version 10: the built-in CA keeps the answer it sent.
--
-- Applied by Store.migrate() inside one transaction, which then sets
-- PRAGMA user_version = 10.

-- The CertRep (DER) that answered the request message whose senderNonce is
-- ca_requests.sender_nonce, when that answer carried a certificate issued at
-- once. It is written in the same transaction that records the certificate,
-- so a crash leaves either nothing issued or an issued certificate whose
-- answer the device's retry of the same message gets back. It holds nothing
-- secret: the certificate inside is encrypted to the requester's signer
-- certificate, and the CA's signature is public. NULL for requests answered
-- PENDING, rejected, or issued before this version (those get a fresh
-- CertRep with the same certificate).
ALTER TABLE ca_requests ADD COLUMN answer BLOB;
