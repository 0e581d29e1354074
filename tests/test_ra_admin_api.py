"""RA mode through the admin API: ``mode``, ``ra_certificate`` and the ``ra`` object of a CA integration.

Everything goes through the daemon's real admin tree (support.web); the
upstream CA is another scepproxyd's built-in CA behind StubTreq, which
issues the RA certificate of a CA integration named RA_* at once and holds
any other for an admin (support.web.AUTO_APPROVED_SUBJECT).
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor

from scepproxyd.backup import restore_backup
from scepproxyd.keys import ChallengeCipher, load_or_create_key
from support.store import started_store
from support.web import bound_subject, build_web, stop_web

CAS = "/api/v1/cas"
PENDING = ("no RA certificate: the CA answered PENDING to the RA's enrollment; approve it at the CA and save "
           "again, or use ra_certificate self-signed")


def ca_fields(web, name="RA_CA", **more) -> dict:
    return dict({"name": name, "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge}, **more)


async def refused(answer_deferred, status=422) -> dict:
    answer = await answer_deferred
    assert answer.status == status, (answer.status, answer.body)
    return answer.json()


def upstream_ca_certificate(web) -> x509.Certificate:
    return web.upstream_cas.ca.authority.material.certificate


def sha256(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


# -- what the admin may ask for --------------------------------------------------------------


@pytest.mark.parametrize("mode, message", [
    ("registration", "mode must be one of passthrough, ra"),
    ("RA", "mode must be one of passthrough, ra"),
    (7, "mode must be a string"),
])
@pytest_twisted.ensureDeferred
async def test_an_unknown_mode_is_422_with_its_field_on_add_and_on_edit(web, mode, message):
    assert await refused(web.admin("POST", CAS, ca_fields(web, mode=mode))) == {"error": message, "field": "mode"}
    assert (await web.admin("GET", CAS + "/RA_CA")).status == 404
    await web.ok(web.admin("POST", CAS, ca_fields(web)))
    assert await refused(web.admin("PATCH", CAS + "/RA_CA", {"mode": mode})) == {"error": message, "field": "mode"}
    assert (await web.ok(web.admin("GET", CAS + "/RA_CA")))["mode"] == "passthrough"


@pytest_twisted.ensureDeferred
async def test_ra_certificate_is_only_for_a_ca_in_ra_mode(web):
    wrong = {"error": "ra_certificate applies to a CA in mode ra", "field": "ra_certificate"}
    assert await refused(web.admin("POST", CAS, ca_fields(web, ra_certificate="self-signed"))) == wrong
    assert await refused(web.admin("POST", CAS, ca_fields(web, mode="passthrough", ra_certificate="enroll"))) == wrong
    assert (await web.admin("GET", CAS + "/RA_CA")).status == 404
    unknown = {"error": "ra_certificate must be one of enroll, self-signed", "field": "ra_certificate"}
    assert await refused(web.admin("POST", CAS, ca_fields(web, mode="ra", ra_certificate="selfsigned"))) == unknown

    ca = await web.ok(web.admin("POST", CAS, ca_fields(web)))
    assert (ca["mode"], ca["ra"]) == ("passthrough", None)
    assert await refused(web.admin("PATCH", CAS + "/RA_CA", {"ra_certificate": "self-signed"})) == wrong
    # Leaving ra mode and asking for a new RA certificate at once makes no sense either.
    await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"mode": "ra", "ra_certificate": "self-signed"}))
    assert await refused(web.admin("PATCH", CAS + "/RA_CA", {"mode": "passthrough", "ra_certificate": "enroll"})) \
        == wrong


@pytest_twisted.ensureDeferred
async def test_the_builtin_ca_has_no_ra_mode(web):
    name = web.builtin_ca.name
    answer = await refused(web.admin("PATCH", CAS + "/" + name, {"mode": "ra"}), status=409)
    assert answer == {"error": "CA %r is managed by the [ca] section of the configuration" % (name,), "field": "name"}
    assert (await web.ok(web.admin("GET", CAS + "/" + name)))["mode"] == "passthrough"


@pytest_twisted.ensureDeferred
async def test_a_builtin_row_left_by_a_disabled_ca_refuses_ra_mode_too(store, clock, tmp_path):
    """With [ca] enabled = no the built-in row stays in the database (its profiles keep it); it is still no RA."""
    web = await build_web(store, clock, tmp_path, ca={"enabled": "no"})
    try:
        await store.register_managed_ca("builtin", "http://proxy.test:8080/scep")
        answer = await refused(web.admin("PATCH", CAS + "/builtin", {"mode": "ra"}))
        assert answer == {"error": "the built-in CA applies the issuance policy itself; it has no RA mode",
                          "field": "mode"}
        assert (await store.get_ca("builtin")).ra_certificate is None
    finally:
        await stop_web(web)


# -- the RA identity made when a CA is saved in ra mode ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_add_in_ra_mode_self_signed_asks_the_ca_for_nothing_but_its_certificates(web):
    ca = await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra", ra_certificate="self-signed")), 201)
    assert ca["mode"] == "ra"
    ra = ca["ra"]
    assert set(ra) == {"certificate", "subject", "issuer", "serial", "not_after", "sha256"}
    assert ra["certificate"] == "self-signed"
    assert ra["subject"] == ra["issuer"] == "CN=scepproxyd RA for RA_CA,O=scepproxyd"
    stored = await web.store.get_ca("RA_CA")
    certificate = x509.load_der_x509_certificate(stored.ra_certificate)
    assert (ra["sha256"], ra["serial"]) == (sha256(certificate), "%x" % (certificate.serial_number,))
    assert stored.ra_enrolled is False
    assert await web.upstream_cas.store.list_ca_requests() == []
    assert await web.ok(web.admin("GET", CAS + "/RA_CA")) == dict(ca, profiles=[])


@pytest_twisted.ensureDeferred
async def test_add_in_ra_mode_enrolls_the_ra_with_the_upstream_ca(web):
    ca = await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra")), 201)
    ra = ca["ra"]
    assert ra["certificate"] == "enrolled"
    assert ra["subject"] == "CN=scepproxyd RA for RA_CA,O=scepproxyd"
    authority = upstream_ca_certificate(web)
    assert ra["issuer"] == authority.subject.rfc4514_string()
    certificate = x509.load_der_x509_certificate((await web.store.get_ca("RA_CA")).ra_certificate)
    certificate.verify_directly_issued_by(authority)
    assert ra["sha256"] == sha256(certificate)
    (issued,) = await web.upstream_cas.store.list_issued_certificates()
    assert int(issued.serial, 16) == certificate.serial_number


@pytest_twisted.ensureDeferred
async def test_an_ra_enrollment_the_ca_holds_is_422_and_nothing_is_added(web):
    # The upstream CA holds RA subjects of CAs not named RA_* for its admin.
    answer = await refused(web.admin("POST", CAS, ca_fields(web, name="HELD_CA", mode="ra")))
    assert answer == {"error": PENDING, "field": "ra_certificate"}
    assert (await web.admin("GET", CAS + "/HELD_CA")).status == 404
    # Self-signed needs nothing from the CA.
    ca = await web.ok(web.admin("POST", CAS, ca_fields(web, name="HELD_CA", mode="ra", ra_certificate="self-signed")))
    assert ca["ra"]["certificate"] == "self-signed"


@pytest_twisted.ensureDeferred
async def test_an_ra_enrollment_the_ca_refuses_names_the_reason(web):
    answer = await refused(web.admin("POST", CAS, ca_fields(web, mode="ra", challenge="not-the-static-challenge")))
    assert answer == {"error": "no RA certificate: the CA refused the RA's enrollment (failInfo badRequest); check "
                               "the CA's challenge", "field": "ra_certificate"}
    answer = await refused(web.admin("POST", CAS, ca_fields(web, mode="ra", url=web.upstream_cas.url("http_500"))))
    assert answer == {"error": "no RA certificate: the CA answered the RA's enrollment with HTTP 500",
                      "field": "ra_certificate"}
    assert [ca["name"] for ca in (await web.ok(web.admin("GET", CAS)))["cas"]] == [web.builtin_ca.name]


# -- switching modes and moving the CA --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_passthrough_to_ra_makes_an_identity_and_back_keeps_it(web):
    await web.ok(web.admin("POST", CAS, ca_fields(web)))
    ca = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"mode": "ra"}))  # the stored challenge enrolls it
    assert (ca["mode"], ca["ra"]["certificate"]) == ("ra", "enrolled")
    first = ca["ra"]
    back = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"mode": "passthrough"}))
    assert (back["mode"], back["ra"]) == ("passthrough", first)
    again = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"mode": "ra"}))
    assert (again["mode"], again["ra"]) == ("ra", first)  # no new enrollment: the kept identity serves again
    assert len(await web.upstream_cas.store.list_issued_certificates()) == 1
    renewed = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"ra_certificate": "enroll"}))
    assert renewed["ra"]["certificate"] == "enrolled" and renewed["ra"]["sha256"] != first["sha256"]
    replaced = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"ra_certificate": "self-signed"}))
    assert replaced["ra"]["certificate"] == "self-signed"


@pytest_twisted.ensureDeferred
async def test_a_failed_switch_to_ra_changes_nothing(web):
    await web.ok(web.admin("POST", CAS, ca_fields(web, name="HELD_CA")))
    before = await web.ok(web.admin("GET", CAS + "/HELD_CA"))
    assert await refused(web.admin("PATCH", CAS + "/HELD_CA", {"mode": "ra"})) == {
        "error": PENDING, "field": "ra_certificate"}
    assert await web.ok(web.admin("GET", CAS + "/HELD_CA")) == before


@pytest_twisted.ensureDeferred
async def test_a_new_url_in_ra_mode_makes_a_new_identity_the_way_the_last_was_made(web):
    await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra", ra_certificate="self-signed")))
    first = (await web.ok(web.admin("GET", CAS + "/RA_CA")))["ra"]
    moved = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {
        "url": web.upstream_cas.url("garbage"), "challenge": web.upstream_cas.static_challenge}))
    assert moved["url"] == web.upstream_cas.url("garbage")
    assert moved["ra"]["certificate"] == "self-signed" and moved["ra"]["sha256"] != first["sha256"]


@pytest_twisted.ensureDeferred
async def test_a_new_url_reenrolls_an_enrolled_ra_there(web):
    first = (await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra"))))["ra"]
    moved = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {
        "url": web.upstream_cas.url("well"), "challenge": web.upstream_cas.static_challenge}))
    assert moved["ra"]["certificate"] == "enrolled" and moved["ra"]["sha256"] != first["sha256"]
    assert web.upstream_cas.misbehaving["well"].seen.count("PKIOperation") == 1  # enrolled at the new URL
    assert len(await web.upstream_cas.store.list_issued_certificates()) == 2


@pytest_twisted.ensureDeferred
async def test_a_ca_moved_while_in_passthrough_gets_a_new_ra_identity_when_back_in_ra_mode(web):
    first = (await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra"))))["ra"]
    await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"mode": "passthrough"}))
    moved = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {
        "url": web.upstream_cas.url("well"), "challenge": web.upstream_cas.static_challenge}))
    assert (moved["mode"], moved["ra"]) == ("passthrough", None)  # the old CA's RA is no use at the new URL
    back = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"mode": "ra"}))
    assert back["ra"]["certificate"] == "enrolled" and back["ra"]["sha256"] != first["sha256"]
    assert web.upstream_cas.misbehaving["well"].seen.count("PKIOperation") == 1  # enrolled at the new URL


@pytest_twisted.ensureDeferred
async def test_a_new_url_whose_ca_cannot_enroll_the_ra_changes_nothing(web):
    await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra")))
    before = await web.ok(web.admin("GET", CAS + "/RA_CA"))
    answer = await refused(web.admin("PATCH", CAS + "/RA_CA", {
        "url": web.upstream_cas.url("http_500"), "challenge": web.upstream_cas.static_challenge}))
    assert answer == {"error": "no RA certificate: the CA answered the RA's enrollment with HTTP 500",
                      "field": "ra_certificate"}
    assert await web.ok(web.admin("GET", CAS + "/RA_CA")) == before


# -- the RA key is a secret ---------------------------------------------------------------------


def key_forms(web, ciphertext: bytes) -> list[bytes]:
    """Every way the RA key (or its sealed form) could leak: DER, PEM, base64 and hex of each."""
    cipher = ChallengeCipher(load_or_create_key(web.settings.key_file))
    key = serialization.load_der_private_key(cipher.open_ra_key(ciphertext), None)
    none = serialization.NoEncryption()
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, none)
    traditional = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, none)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
    forms = []
    for blob in (pkcs8, traditional, ciphertext):
        forms += [blob, base64.b64encode(blob)[8:72], base64.urlsafe_b64encode(blob)[8:72], blob.hex()[16:144].encode()]
    forms.append(pem.split(b"\n")[2])  # one line of the PEM body
    private = key.private_numbers()
    forms += [str(private.p).encode(), ("%x" % private.d)[:64].encode()]
    return forms


@pytest_twisted.ensureDeferred
async def test_the_ra_key_is_never_in_an_answer_or_a_log_line(web, logs):
    answers = [
        await web.admin("POST", CAS, ca_fields(web, mode="ra")),
        await web.admin("POST", CAS, ca_fields(web, name="RA_SELF", mode="ra", ra_certificate="self-signed")),
        await web.admin("PATCH", CAS + "/RA_CA", {"ra_certificate": "enroll"}),
        await web.admin("PATCH", CAS + "/RA_SELF", {"mode": "passthrough"}),
        await web.admin("GET", CAS),
        await web.admin("GET", CAS + "/RA_CA"),
        await web.admin("GET", CAS + "/RA_SELF"),
    ]
    e = await web.enrollment(ca="RA_CA")
    request = await web.pkcs_req(e, subject=bound_subject(e))
    answers += [
        await web.device("GET", e.path + "?operation=GetCACert"),
        await web.device("GET", e.path + "?operation=GetCACaps"),
        await web.device("POST", e.path + "?operation=PKIOperation", request.message),
    ]
    assert request.read(answers[-1])[0] == "SUCCESS"
    answers.append(await web.admin("GET", "/api/v1/host-profiles"))
    assert all(a.status in (200, 201) for a in answers), [(a.status, a.body) for a in answers]
    seen = b"\n".join(a.body for a in answers) + logs.text().encode("utf-8")
    assert b"RA recorded certificate" in seen and b"new enrolled RA identity" in seen  # the logs were captured
    for name in ("RA_CA", "RA_SELF"):
        ciphertext = (await web.store.get_ca(name)).ra_key_ciphertext
        assert ciphertext is not None
        for form in key_forms(web, ciphertext):
            assert form not in seen, name


# -- a backup holds the RA identity ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_backup_and_restore_keep_the_ra_identity_working(db_path, clock, tmp_path):
    store = await started_store(db_path, reactor, clock)
    web = await build_web(store, clock, tmp_path, database=db_path)
    try:
        ra = (await web.ok(web.admin("POST", CAS, ca_fields(web, mode="ra"))))["ra"]
        e = await web.enrollment(ca="RA_CA")
        await web.ok(web.admin("POST", "/api/v1/backup", {"directory": str(tmp_path / "backup")}))
        # After the backup: a new RA identity, and a new secrets key (the old one lost with its machine).
        changed = await web.ok(web.admin("PATCH", CAS + "/RA_CA", {"ra_certificate": "self-signed"}))
        assert changed["ra"]["sha256"] != ra["sha256"]
    finally:
        await stop_web(web)
        await store.stop()
    web.settings.key_file.unlink()
    load_or_create_key(web.settings.key_file)

    restore_backup(tmp_path / "backup", web.settings)

    store = await started_store(db_path, reactor, clock)
    web = await build_web(store, clock, tmp_path, database=db_path)
    try:
        assert (await web.ok(web.admin("GET", CAS + "/RA_CA")))["ra"] == ra
        request = await web.pkcs_req(e, subject=bound_subject(e))
        assert sha256(request.ca_certificate) == ra["sha256"]
        answer = await web.device("POST", e.path + "?operation=PKIOperation", request.message)
        status, _, (certificate,) = request.read(answer)  # opened with the restored RA key, signed by it
        assert status == "SUCCESS"
        certificate.verify_directly_issued_by(upstream_ca_certificate(web))
        assert (await web.host_profile(e.host, e.profile))["cert_serial"] == "%x" % (certificate.serial_number,)
    finally:
        await stop_web(web)
        await store.stop()
