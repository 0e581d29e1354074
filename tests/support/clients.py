"""The real SCEP clients as a device or network equipment runs them: micromdm scepclient and strongSwan ``pki --scep``,
plus ``openssl verify`` and certificate loading for checking what they got."""

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from support.processes import need
from support.site import OU


def scepclient(workdir: Path, url: str, challenge: str | None, cn: str, *extra, timeout: float = 90):
    """micromdm scepclient in ``workdir`` (its key.pem, csr.pem and client.pem live there); the finished run."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [need("scepclient"), "-private-key", str(workdir / "key.pem"), "-server-url", url, "-cn", cn, *extra]
    if challenge is not None:
        args.append("-challenge=" + challenge)
    return subprocess.run(args, cwd=str(workdir), capture_output=True, text=True, timeout=timeout)


def bound_scepclient(workdir: Path, url: str, challenge: str | None, cn: str, *extra):
    """scepclient asking for OU + CN only (no O or C of its own), as the bound Wi-Fi profile
    (site.bound_mobileconfig) renders them, in the order scepclient writes them."""
    return scepclient(workdir, url, challenge, cn, "-organization", "", "-country", "", "-ou", OU, *extra)


def enroll(workdir: Path, url: str, challenge: str, cn: str, ou: str | None = None) -> str:
    """A fresh enrollment with scepclient (its old csr.pem/client.pem removed, key kept), which must succeed;
    the certificate's PEM."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("csr.pem", "client.pem"):
        (workdir / name).unlink(missing_ok=True)
    result = scepclient(workdir, url, challenge, cn, *(["-ou", ou] if ou else []), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return (workdir / "client.pem").read_text()


def pki(*args, timeout=90, cwd=None):
    """strongSwan ``pki`` with ``args`` in ``cwd``; the finished run, output as bytes."""
    return subprocess.run([need("pki"), *args], cwd=None if cwd is None else str(cwd), capture_output=True,
                          timeout=timeout)


def strongswan_key(path: Path) -> Path:
    """A new 2048-bit RSA key from ``pki --gen``, DER, written to ``path``."""
    result = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "der")
    assert result.returncode == 0
    path.write_bytes(result.stdout)
    return path


def openssl_verify(ca_pem: Path, cert: Path, der=False, untrusted: Path | None = None) -> str:
    """``openssl verify -CAfile`` (``-untrusted``: intermediates to chain through) that must succeed; its output."""
    if der:
        pem = cert.with_suffix(".pem")
        pem.write_bytes(x509.load_der_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.PEM))
        cert = pem
    chain = [] if untrusted is None else ["-untrusted", str(untrusted)]
    result = subprocess.run([need("openssl"), "verify", "-CAfile", str(ca_pem), *chain, str(cert)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load(path: Path) -> x509.Certificate:
    """A certificate file, PEM or DER."""
    data = path.read_bytes()
    return x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)


def common_name(certificate: x509.Certificate) -> str:
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def http(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one plain GET, or POST with ``body`` (step-ca answers big bodies chunked)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()
