"""step-ca (smallstep's certificate authority) as a real upstream SCEP CA on free loopback ports.

Debian ships step-ca's Go sources but no command: scripts/build-step-ca
builds tests/peers/step-ca/main.go offline into build/step-ca/step-ca
(scripts/bootstrap --test does it; ``binary()`` does it here when the
binary is missing). ``StepCA`` writes its ca.json by hand: a root and an RSA
intermediate made with cryptography (the intermediate signs and, for SCEP,
decrypts), plain HTTP on ``insecureAddress`` for SCEP, and one SCEP
provisioner with a static challenge.

What step-ca 0.19 does, as tests/interop/test_stepca.py shows: it decrypts
DES, 3DES, AES-128 and AES-256 (CBC) requests signed with SHA-1, -256, -384
or -512 and answers HTTP 500 to AES-192, SHA-224 and RSAES-OAEP; its CertRep
is DES-CBC unless the provisioner says ``encryptionAlgorithmIdentifier: 2``
(AES-256-CBC), whatever the request used; it issues to a PKCSReq signed by a
key other than the CSR's.
"""

import datetime
import json
import re
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from support.clients import load, openssl_verify
from support.processes import REPO, free_port, stop, wait_for_port
from support.upstream import CHALLENGE

BUILD = REPO / "scripts" / "build-step-ca"
# The provisioner's name is the last segment of the SCEP URL.
PROVISIONER = "scep"
# What step-ca answers to GetCACaps when the provisioner lists no capabilities.
DEFAULT_CAPS = ["Renewal", "SHA-1", "SHA-256", "AES", "DES3", "SCEPStandard", "POSTPKIOperation"]
# strongSwan pki 5.9.8 picks AES and SHA-256 only when the caps list DES3 and SHA-384 (docs/codec.md).
STRONGSWAN_CAPS = DEFAULT_CAPS + ["SHA-384"]
# encryptionAlgorithmIdentifier: step-ca's numbers for its CertRep's content encryption.
DES_CBC, AES128_CBC, AES256_CBC = 0, 1, 2

_built: list[str] = []


def binary() -> str:
    """The step-ca binary, built by scripts/build-step-ca the first time a test needs it on this machine."""
    if not _built:
        result = subprocess.run([str(BUILD)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError("scripts/build-step-ca failed:\n" + result.stderr)
        _built.append(result.stdout.strip().splitlines()[-1])
    return _built[0]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(subject: str, issuer: x509.Name, public_key, signer, path_length: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(signer, hashes.SHA256())
    )


def _pem(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


class StepCA:
    """step-ca with its own root, intermediate and ca.json in ``directory``, as a real upstream SCEP CA.

    ``encryption``: the provisioner's ``encryptionAlgorithmIdentifier`` (None leaves it out: DES-CBC);
    ``capabilities``: its GetCACaps list (None: step-ca's defaults, DEFAULT_CAPS).
    """

    def __init__(self, directory: Path, challenge: str = CHALLENGE, encryption: int | None = None,
                 capabilities: list[str] | None = None):
        self.directory = directory
        self.challenge = challenge
        self.port = free_port()  # plain HTTP (insecureAddress): SCEP
        self.tls_port = free_port()  # step-ca's HTTPS address, required by its config
        self.log_path = directory / "step-ca.log"
        self.process = None
        directory.mkdir(parents=True, exist_ok=True)

        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca_certificate("step-ca Test Root", _name("step-ca Test Root"), root_key.public_key(),
                                    root_key, 1)
        # SCEP needs an RSA intermediate: step-ca decrypts requests with the intermediate's key.
        intermediate_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # Tests open what was sent to step-ca with it (what an RA asked for, and how).
        self.intermediate_key = intermediate_key
        self.intermediate = _ca_certificate("step-ca Test Intermediate", self.root.subject,
                                            intermediate_key.public_key(), root_key, 0)
        self.root_pem = directory / "root.pem"
        self.intermediate_pem = directory / "intermediate.pem"
        provisioner = {"type": "SCEP", "name": PROVISIONER, "challenge": challenge}
        if encryption is not None:
            provisioner["encryptionAlgorithmIdentifier"] = encryption
        if capabilities is not None:
            provisioner["capabilities"] = capabilities
        config = {
            "root": _pem(self.root_pem, self.root.public_bytes(serialization.Encoding.PEM)),
            "crt": _pem(self.intermediate_pem, self.intermediate.public_bytes(serialization.Encoding.PEM)),
            "key": _pem(directory / "intermediate.key", intermediate_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            "address": "127.0.0.1:%d" % (self.tls_port,),
            "insecureAddress": "127.0.0.1:%d" % (self.port,),
            "dnsNames": ["localhost", "127.0.0.1"],
            "logger": {"format": "text"},
            "authority": {"provisioners": [provisioner]},
        }
        (directory / "intermediate.key").chmod(0o600)
        self.config_path = directory / "ca.json"
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        """The SCEP URL: the provisioner's path on the plain-HTTP address."""
        return "http://127.0.0.1:%d/scep/%s" % (self.port, PROVISIONER)

    @property
    def ca_pem(self) -> Path:
        """The root, to verify issued certificates with (the intermediate is ``intermediate_pem``)."""
        return self.root_pem

    def start(self) -> "StepCA":
        log = open(self.log_path, "ab")
        # STEPPATH: step-ca's own state (~/.step) stays in the test's directory.
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.directory), "STEPPATH": str(self.directory / "step")}
        self.process = subprocess.Popen([binary(), str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, cwd=str(self.directory))
        log.close()
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def operations(self, name: str) -> int:
        """How many requests of one SCEP operation reached this CA (from its own request log)."""
        return len(re.findall(r'path="/scep/[^"?]*\?(?:[^"]*&)?operation=%s[&"]' % (re.escape(name),), self.log()))

    def issued_serials(self) -> list[int]:
        """The serial numbers of the certificates it issued, in order (from its request log)."""
        return [int(s) for s in re.findall(r" certificate=\S+ .*? serial=(\d+) ", self.log())]


def assert_chains_to_step_ca(ca: StepCA, certificate_path: Path) -> x509.Certificate:
    """The certificate chains through step-ca's intermediate to its root (openssl verify), signed by the
    intermediate; the certificate."""
    openssl_verify(ca.ca_pem, certificate_path, der=certificate_path.suffix == ".der", untrusted=ca.intermediate_pem)
    issued = load(certificate_path)
    assert issued.issuer == ca.intermediate.subject
    issued.verify_directly_issued_by(ca.intermediate)
    return issued
