"""The built-in CA's files: created on first start, imported (a real scepserver depot too), checked.

Also the issuer per template and the policy rules, which need no daemon.
"""

import ipaddress
import os
import stat
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.processes import need
from scepproxyd.ca.issuer import CsrError, build_certificate, check_csr
from scepproxyd.ca.material import (
    decrypt_legacy_pem,
    load_ca_material,
    load_private_key,
    prepare_ca_material,
    read_static_challenge,
)
from scepproxyd.ca.policy import DAY, Policy, challenge_hash, in_networks
from scepproxyd.config import parse_settings
from scepproxyd.keys import KeyFileError

NOW = 1_700_000_000.0


def ca_settings(tmp_path, **keys):
    lines = ["[state]", "directory = %s" % (tmp_path / "state",), "[ca]", "key_size = 2048"]
    lines += ["%s = %s" % item for item in keys.items()]
    lines += ["[template.vpn]", "validity = 10d", "key_usage = digital_signature",
              "extended_key_usage = ipsec_ike, server_auth"]
    return parse_settings("\n".join(lines) + "\n", tmp_path / "scepproxyd.ini").ca


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def csr_for(key, cn="device", san=None):
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256())


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- creation and loading ------------------------------------------------------------------


def test_first_start_creates_ca_key_0600_and_challenge(tmp_path):
    settings = ca_settings(tmp_path, subject="CN=Site CA,O=Example", lifetime="30d")
    material = prepare_ca_material(settings)
    assert mode(settings.key_file) == 0o600
    assert mode(settings.challenge_file) == 0o600
    assert mode(settings.key_file.parent) == 0o700
    cert = material.certificate
    assert cert.subject.rfc4514_string() == "CN=Site CA,O=Example"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert 29 * DAY < (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() <= 30 * DAY + 600
    assert material.key.key_size == 2048
    assert material.ra_certificate is None and material.message_certificate == cert
    assert len(read_static_challenge(settings)) >= 32
    # The second start loads what the first made.
    again = prepare_ca_material(settings)
    assert again.certificate == cert
    assert read_static_challenge(settings) == read_static_challenge(settings)


def test_ra_made_once_signed_by_ca(tmp_path):
    settings = ca_settings(tmp_path, ra="yes")
    material = prepare_ca_material(settings)
    ra = material.ra_certificate
    ra.verify_directly_issued_by(material.certificate)
    assert mode(settings.key_file.with_name("ra.key")) == 0o600
    usage = ra.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert material.message_certificate == ra and material.message_key is material.ra_key
    assert prepare_ca_material(settings).ra_certificate == ra


def test_key_readable_by_others_is_refused(tmp_path):
    settings = ca_settings(tmp_path)
    prepare_ca_material(settings)
    os.chmod(settings.key_file, 0o644)
    with pytest.raises(KeyFileError, match="readable by others.*chmod 600"):
        load_ca_material(settings)


def test_lost_key_with_certificate_left_is_refused(tmp_path):
    settings = ca_settings(tmp_path)
    prepare_ca_material(settings)
    settings.key_file.unlink()
    with pytest.raises(KeyFileError, match="ca.key is missing but its partner exists"):
        prepare_ca_material(settings)


def test_mismatched_pair_is_refused(tmp_path):
    settings = ca_settings(tmp_path)
    prepare_ca_material(settings)
    other = ca_settings(tmp_path / "other")
    prepare_ca_material(other)
    settings.certificate_file.write_bytes(other.certificate_file.read_bytes())
    with pytest.raises(KeyFileError, match="does not belong to certificate"):
        load_ca_material(settings)


# -- import ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def depot(tmp_path_factory):
    path = tmp_path_factory.mktemp("scepserver") / "depot"
    subprocess.run([need("scepserver"), "ca", "-init", "-depot", str(path)], check=True, capture_output=True)
    return path


def test_scepserver_depot_key_is_legacy_3des_with_empty_password(depot):
    text = (depot / "ca.key").read_bytes()
    assert b"DEK-Info: DES-EDE3-CBC" in text
    key = decrypt_legacy_pem(text, b"")
    assert isinstance(key, rsa.RSAPrivateKey)


def test_import_scepserver_depot_and_issue_a_chaining_certificate(tmp_path, depot):
    settings = ca_settings(tmp_path, import_key=depot / "ca.key", import_certificate=depot / "ca.pem")
    material = prepare_ca_material(settings)
    assert material.certificate == x509.load_pem_x509_certificate((depot / "ca.pem").read_bytes())
    # Stored as an unencrypted PKCS#8 key with mode 0600: the daemon starts unattended.
    assert mode(settings.key_file) == 0o600
    assert b"BEGIN PRIVATE KEY" in settings.key_file.read_bytes()
    issued = build_certificate(csr_for(rsa_key(), "imported-device"), material.key, material.certificate,
                               settings.templates["default"], "http://x/scep/crl", time.time())
    pem = tmp_path / "issued.pem"
    pem.write_bytes(issued.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run([need("openssl"), "verify", "-CAfile", str(depot / "ca.pem"), str(pem)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


@pytest.mark.parametrize("cipher", ["-des3", "-aes256"])
def test_import_legacy_pem_with_password_file(tmp_path, cipher):
    plain = tmp_path / "plain.key"
    subprocess.run([need("openssl"), "genrsa", "-out", str(plain), "2048"], check=True, capture_output=True)
    encrypted = tmp_path / "enc.key"
    subprocess.run([need("openssl"), "rsa", "-in", str(plain), "-traditional", cipher, "-passout", "pass:s3cret",
                    "-out", str(encrypted)], check=True, capture_output=True)
    assert b"Proc-Type: 4,ENCRYPTED" in encrypted.read_bytes()
    cert = tmp_path / "ca.pem"
    subprocess.run([need("openssl"), "req", "-x509", "-key", str(plain), "-subj", "/CN=Imported CA", "-days", "30",
                    "-out", str(cert)], check=True, capture_output=True)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    settings = ca_settings(tmp_path, import_key=encrypted, import_certificate=cert,
                           import_key_password_file=password)
    assert prepare_ca_material(settings).certificate.subject.rfc4514_string() == "CN=Imported CA"
    with pytest.raises(KeyFileError, match="wrong password"):
        load_private_key(encrypted, b"not-it")


def test_import_refuses_a_key_that_is_not_the_certificates(tmp_path, depot):
    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(rsa_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    settings = ca_settings(tmp_path, import_key=stranger, import_certificate=depot / "ca.pem")
    with pytest.raises(KeyFileError, match="does not belong"):
        prepare_ca_material(settings)
    assert not settings.key_file.exists()


# -- issuer ------------------------------------------------------------------------------------


def test_template_decides_usage_and_validity(tmp_path):
    settings = ca_settings(tmp_path)
    material = prepare_ca_material(settings)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = build_certificate(csr_for(key, "vpn-gw", [x509.DNSName("gw.example"), x509.IPAddress(
        ipaddress.ip_address("10.0.0.1"))]), material.key, material.certificate, settings.templates["vpn"],
        "http://x/scep/crl", NOW)
    assert (issued.not_valid_after_utc - issued.not_valid_before_utc).total_seconds() == 10 * DAY
    usage = issued.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    assert list(issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.IPSEC_IKE, ExtendedKeyUsageOID.SERVER_AUTH]
    san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.example"]


def test_certificate_never_outlives_the_ca(tmp_path):
    settings = ca_settings(tmp_path, lifetime="2d")
    material = prepare_ca_material(settings)
    issued = build_certificate(csr_for(rsa_key()), material.key, material.certificate,
                               settings.templates["default"], "http://x/scep/crl", time.time())
    assert issued.not_valid_after_utc == material.certificate.not_valid_after_utc


def test_csr_checks():
    key = rsa_key()
    check_csr(csr_for(key))
    empty = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    with pytest.raises(CsrError, match="subject is empty"):
        check_csr(empty)


# -- policy -------------------------------------------------------------------------------------


def make_policy(**changes):
    values = dict(static_challenge="secret", static_enabled=True, auto_approve=True, auto_approve_subject=r"CN=.*\.corp",
                  auto_approve_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
                  allow_renew_days=14, default_template="default")
    values.update(changes)
    return Policy(**values)


def test_static_challenge_comparison():
    policy = make_policy()
    assert policy.is_static_challenge("secret")
    assert not policy.is_static_challenge("secret ")
    assert not policy.is_static_challenge(None)
    assert not policy.is_static_challenge("")
    assert "secret" not in repr(policy)
    # Off (the shipped default), the static challenge is just a wrong challenge.
    assert not make_policy(static_enabled=False).is_static_challenge("secret")


def test_auto_approval_rules_for_the_static_challenge():
    policy = make_policy()
    static = dict(grant="static")
    assert policy.auto_approves("CN=a.corp", "10.1.1.1", **static)
    assert policy.auto_approves("CN=a.corp", "::ffff:10.1.1.1", **static)
    assert policy.auto_approves("CN=a.corp", "fd00::5", **static)
    assert not policy.auto_approves("CN=a.corp,O=x", "10.1.1.1", **static)  # full match, not search
    assert not policy.auto_approves("CN=a.corp", "192.168.0.1", **static)
    assert not policy.auto_approves("CN=a.corp", "not-an-address", **static)
    # Through the proxy there is no address: a reusable secret is held for an admin.
    assert not policy.auto_approves("CN=a.corp", None, **static)
    assert not make_policy(auto_approve=False).auto_approves("CN=a.corp", "10.1.1.1", **static)
    assert not make_policy(auto_approve_networks=()).auto_approves("CN=a.corp", "10.1.1.1", **static)
    assert in_networks("127.0.0.1", (ipaddress.ip_network("127.0.0.0/8"),))


def test_auto_approval_rules_for_one_time_challenges():
    policy = make_policy()
    # Bound to a host profile (its CSR already matched the profile): no subject or network rule.
    assert policy.auto_approves("CN=anything", "192.168.0.1", grant="host_profile")
    assert policy.auto_approves("CN=anything", None, grant="host_profile")
    # Minted by an admin and handed out: the subject rule, from any network.
    assert policy.auto_approves("CN=a.corp", "192.168.0.1", grant="minted")
    assert not policy.auto_approves("CN=other", "10.1.1.1", grant="minted")
    off = make_policy(auto_approve=False)
    assert not off.auto_approves("CN=a.corp", "10.1.1.1", grant="host_profile")
    assert not off.auto_approves("CN=a.corp", "10.1.1.1", grant="minted")


class Record:
    def __init__(self, not_before, not_after, status="valid"):
        self.not_before, self.not_after, self.status = not_before, not_after, status


@pytest.mark.parametrize("days, left, refused", [
    (14, 14 * DAY + 1, "renewal is allowed only in the last 14 days"),
    (14, 14 * DAY, None),
    (14, 1, None),
    (0, 300 * DAY, None),
    (1, 0, None),
    (14, -1, "not valid now"),
])
def test_renewal_window_edges(days, left, refused):
    record = Record(NOW - 100 * DAY, NOW + left)
    answer = make_policy(allow_renew_days=days).renewal_refusal(record, NOW)
    assert (answer is None) if refused is None else (refused in answer)


def test_renewal_needs_our_valid_certificate():
    policy = make_policy(allow_renew_days=0)
    assert "this CA issued" in policy.renewal_refusal(None, NOW)
    assert "revoked" in policy.renewal_refusal(Record(NOW - 1, NOW + 1, "revoked"), NOW)
    assert "not valid now" in policy.renewal_refusal(Record(NOW + 10, NOW + 20), NOW)


def test_challenge_hash_is_sha256_hex():
    assert challenge_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_first_start_on_a_full_disk_leaves_no_half_pair(tmp_path, monkeypatch):
    """The certificate's write fails after the key's: neither is left, and the next start makes both."""
    import errno

    from scepproxyd import files

    settings = ca_settings(tmp_path)
    real = files.write_private_file

    def full_for_certificates(path, data, replace=False):
        if path.name.endswith(".pem"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data, replace)

    monkeypatch.setattr("scepproxyd.keys.write_private_file", full_for_certificates)
    with pytest.raises(KeyFileError, match=r"cannot write .*ca.pem: No space left on device; nothing was left"):
        prepare_ca_material(settings)
    assert not settings.key_file.exists() and not settings.certificate_file.exists()
    assert [p.name for p in settings.key_file.parent.iterdir()] == []
    monkeypatch.undo()
    material = prepare_ca_material(settings)
    assert mode(settings.key_file) == 0o600 and mode(settings.certificate_file) == 0o600
    assert material.certificate == load_ca_material(settings).certificate


def test_empty_ca_key_from_an_older_version_is_explained(tmp_path):
    settings = ca_settings(tmp_path)
    prepare_ca_material(settings)
    settings.key_file.write_bytes(b"")
    with pytest.raises(KeyFileError) as caught:
        prepare_ca_material(settings)
    assert str(caught.value).startswith("%s (the CA key) is empty (0 bytes)" % (settings.key_file,))
    assert "delete the key and its certificate and start again" in str(caught.value)
