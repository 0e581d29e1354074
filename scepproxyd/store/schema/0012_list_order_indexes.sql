-- Schema 12: indexes on the sort keys of the paginated admin lists, so a page
-- deep in a long list is found through the index (keyset pagination), not by
-- sorting the whole table. Hosts, host profiles, CAs and agent credentials
-- are sorted by their primary keys, which are indexed already.

CREATE INDEX profiles_name_uuid ON profiles (name, uuid);
CREATE INDEX ca_requests_created_at ON ca_requests (created_at DESC, transaction_id);
CREATE INDEX issued_certificates_created_at ON issued_certificates (created_at DESC, serial);
